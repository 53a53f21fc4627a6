"""The CLIP BPE tokenizer gives CLIP's ids.

The expected ids were produced once, while writing this test, by open-clip-torch 3.3.0's
``open_clip.tokenizer.SimpleTokenizer`` (a copy of OpenAI CLIP's ``simple_tokenizer``, ``clean="lower"``,
with ftfy 6.3.1 installed); the test only reads the merges file from the installed package."""

import gzip

import pytest
import torch

from internvideo_fast.models import tokenizer as tok
from internvideo_fast.models.tokenizer import CLIPTokenizer, tokenize

# text -> ids from SimpleTokenizer.encode (no start / end tokens).
EXPECTED = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "Hello, world!": [3306, 267, 1002, 256],
    "playing guitar": [1629, 5084],
    "": [],
    "  Multiple   SPACES\n\tand tabs  ": [6470, 9006, 537, 29163],
    "it's 2024 and we're 100% ready": [585, 568, 273, 271, 273, 275, 537, 649, 982, 272, 271, 271, 260, 1112],
    "café naïve 日本語 emoji 🙂": [15304, 1097, 35689, 563, 39121, 44353, 34002, 508, 16327, 14860],
    "rock &amp; roll &amp;amp; blues": [2172, 261, 3341, 261, 5159],
    "a person is skateboarding down the street": [320, 2533, 533, 31352, 1136, 518, 2012],
}

LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
_FOX = [518, 3712, 2866, 3240, 18911, 962, 518, 10753, 1929]
# SimpleTokenizer()([LONG_TEXT])[0]: 76 ids of the text, with the last replaced by end-of-text.
LONG_EXPECTED = [49406] + (_FOX * 9)[:75] + [49407]


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer()


def test_vocabulary(tokenizer):
    assert tokenizer.vocab_size == tok.VOCAB_SIZE == 49408
    assert tokenizer.sot_id == tok.SOT_ID == 49406
    assert tokenizer.eot_id == tok.EOT_ID == 49407
    assert tokenizer.encoder["a</w>"] == 320
    assert len(tok.bytes_to_unicode()) == 256 and len(set(tok.bytes_to_unicode().values())) == 256


@pytest.mark.parametrize("text", list(EXPECTED))
def test_encode_matches_clip(tokenizer, text):
    assert tokenizer.encode(text) == EXPECTED[text]


def test_tokenize_layout(tokenizer):
    texts = list(EXPECTED)
    out = tokenize(texts)
    assert out.dtype == torch.long and out.shape == (len(texts), 77)
    for row, text in zip(out.tolist(), texts):
        ids = [49406] + EXPECTED[text] + [49407]
        assert row == ids + [0] * (77 - len(ids))
    # argmax of the ids is the end-of-text position (CLIP's pooling rule)
    assert out.argmax(-1).tolist() == [len(EXPECTED[t]) + 1 for t in texts]
    # a single string, a custom context length
    assert tokenize("playing guitar", context_length=10).tolist() == [[49406, 1629, 5084, 49407] + [0] * 6]


def test_truncation(tokenizer):
    out = tokenize([LONG_TEXT, "a photo of a cat"])
    assert out[0].tolist() == LONG_EXPECTED
    assert out[1, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    with pytest.raises(ValueError, match="longer than context_length"):
        tokenize(LONG_TEXT, truncate=False)
    assert tokenize([LONG_TEXT], context_length=5)[0].tolist() == LONG_EXPECTED[:4] + [49407]
    from internvideo_fast.models.tokenizer import get_tokenizer

    assert get_tokenizer().ids(LONG_TEXT, 5) == (LONG_EXPECTED[:4] + [49407], True)
    assert get_tokenizer().ids("a photo of a cat", 7) == ([49406, 320, 1125, 539, 320, 2368, 49407], False)
    # exactly at the limit: no truncation needed
    assert tokenize("a photo of a cat", context_length=7, truncate=False)[0, -1].item() == 49407


def test_decode_roundtrip(tokenizer):
    assert tokenizer.decode(tokenizer.encode("a photo of a cat")).strip() == "a photo of a cat"
    assert tokenizer.decode(tokenizer.encode("Café naïve 🙂")).strip() == "café naïve 🙂"


def test_ftfy_fixes_mojibake(tokenizer):
    pytest.importorskip("ftfy")
    assert tokenizer.encode("cafÃ©") == tokenizer.encode("café")


def test_bad_arguments(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="context_length"):
        tokenizer(["a"], context_length=1)
    with pytest.raises(ValueError, match="strings"):
        tokenizer(["a", 3])
    bad = tmp_path / "short.txt.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.write("header\na b")
    with pytest.raises(ValueError, match="merges"):
        CLIPTokenizer(bpe_path=str(bad))
