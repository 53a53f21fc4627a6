"""The CLIP byte-level BPE tokenizer (OpenAI CLIP's ``simple_tokenizer``, reimplemented).

Text -> token ids, exactly as CLIP (and InternVideo-MM, which uses CLIP's tokenizer):

1. clean: ``ftfy.fix_text`` (only when ftfy is installed; it matters only for mojibake), HTML-unescape twice,
   strip, collapse every whitespace run to one space, lowercase;
2. split with CLIP's pattern (the ``regex`` package, for ``\\p{L}`` / ``\\p{N}``): the special tokens, the
   contractions ``'s 't 're 've 'm 'll 'd``, letter runs, single digits, runs of other non-space characters;
3. map each piece's UTF-8 bytes to printable unicode characters (:func:`bytes_to_unicode`), mark the last
   character with ``</w>``, and merge adjacent symbol pairs by merge rank until no ranked pair is left;
4. look the symbols up in the vocabulary.

Vocabulary (49408 ids): the 256 byte characters, the same with ``</w>``, the first 48894 merges of
``bpe_simple_vocab_16e6.txt.gz`` (joined), then ``<start_of_text>`` = 49406 and ``<end_of_text>`` = 49407.
:func:`tokenize` wraps each text as ``[49406, ids..., 49407]`` and zero-pads to the context length (77).

The merges file is OpenAI's (MIT licence, Copyright (c) 2021 OpenAI), vendored from the open-clip-torch 3.3.0
wheel under ``internvideo_fast/models/assets/`` with its licence (installing open-clip-torch would pull in
timm, torchvision and huggingface_hub); pass ``bpe_path`` to use another copy.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
from collections.abc import Sequence

import regex
import torch

try:  # optional, as in CLIP: fixes mojibake only
    import ftfy
except ImportError:  # pragma: no cover - depends on the environment
    ftfy = None

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
# Merges used by CLIP: lines 1 .. 48894 of the file (line 0 is a version header).
NUM_MERGES = VOCAB_SIZE - 256 - 256 - 2

_PATTERN = regex.compile(
    r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def default_bpe_path() -> str:
    """The vendored ``bpe_simple_vocab_16e6.txt.gz`` (see the module docstring)."""
    return os.path.join(os.path.dirname(__file__), "assets", BPE_FILENAME)


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable unicode characters (GPT-2 / CLIP): the 188
    printable Latin-1 bytes map to themselves, the other 68 to ``chr(256 + n)`` in byte order. The dict's
    order (the printable bytes first) is the order of the first 256 vocabulary entries."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (printable bytes first, then the rest) is the vocabulary's order


def clean_text(text: str) -> str:
    """CLIP's normalisation: ftfy (if installed), HTML-unescape twice, whitespace collapsed, lowercase."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """CLIP's BPE tokenizer. ``encode(text) -> list[int]`` (no special tokens), ``decode(ids) -> str``,
    and ``__call__(texts, context_length=77, truncate=True) -> LongTensor [N, context_length]``."""

    def __init__(self, bpe_path: str | None = None) -> None:
        path = bpe_path or default_bpe_path()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path} is not CLIP's merges file (want {NUM_MERGES} pairs after the header)")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        assert (self.sot_id, self.eot_id, len(vocab)) == (SOT_ID, EOT_ID, VOCAB_SIZE)
        self._cache: dict[str, tuple[str, ...]] = {SOT_TOKEN: (SOT_TOKEN,), EOT_TOKEN: (EOT_TOKEN,)}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, piece: str) -> tuple[str, ...]:
        """The BPE symbols of one pre-tokenized piece (already byte-mapped); the last one ends in ``</w>``."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            # The lowest-ranked adjacent pair is merged everywhere it occurs, left to right.
            ranked = [(self.bpe_ranks.get(pair, NUM_MERGES), pair) for pair in zip(word, word[1:])]
            rank, (first, second) = min(ranked)
            if rank == NUM_MERGES:
                break
            merged = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = tuple(word)
        self._cache[piece] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without the start / end tokens."""
        ids = []
        for piece in _PATTERN.findall(clean_text(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text from ids, as CLIP: special tokens and id 0 (``!``) kept as they are, ``</w>`` -> a space."""
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(
        self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = True
    ) -> torch.Tensor:
        """``[N, context_length]`` int64: ``[SOT, ids..., EOT, 0, ...]`` per text. A text longer than the
        context is cut to ``context_length`` tokens whose last is EOT (`truncate`, as CLIP's
        ``truncate=True``), or raises ``ValueError``."""
        if isinstance(texts, str):
            texts = [texts]
        result, cut_rows = self.tokens_and_cuts(texts, context_length)
        if cut_rows and not truncate:
            row = cut_rows[0]
            raise ValueError(
                f"text {row} is longer than context_length {context_length} tokens: {texts[row][:60]!r}..."
            )
        return result

    def tokens_and_cuts(self, texts: Sequence[str], context_length: int = CONTEXT_LENGTH
                        ) -> tuple[torch.Tensor, list[int]]:
        """``(ids [N, context_length] int64, rows cut)``: each text as :meth:`ids` gives it, zero padded."""
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2, got {context_length!r}")
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        cut_rows = []
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts must be strings, got {type(text).__name__} at index {row}")
            ids, cut = self.ids(text, context_length)
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if cut:
                cut_rows.append(row)
        return result, cut_rows

    def ids(self, text: str, context_length: int = CONTEXT_LENGTH) -> tuple[list[int], bool]:
        """``([SOT, ids..., EOT], cut)``: at most `context_length` ids; a longer text is cut so that the last
        kept id is EOT (``cut`` True)."""
        ids = [self.sot_id] + self.encode(text) + [self.eot_id]
        if len(ids) <= context_length:
            return ids, False
        return ids[: context_length - 1] + [self.eot_id], True


def tokenize_captions(captions: Sequence[str], context_length: int = CONTEXT_LENGTH) -> tuple[torch.Tensor, list[int]]:
    """Training captions: ``(ids [N, context_length] int64, rows cut)``, a caption longer than the context cut
    as :func:`tokenize` does (its last kept id EOT) and its row listed, so the caller can report it."""
    return get_tokenizer().tokens_and_cuts(captions, context_length)


@functools.lru_cache(maxsize=4)
def get_tokenizer(bpe_path: str | None = None) -> CLIPTokenizer:
    """A shared :class:`CLIPTokenizer` (building one reads the 1.3 MB merges file, ~0.2 s)."""
    return CLIPTokenizer(bpe_path)


def tokenize(
    texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = True
) -> torch.Tensor:
    """CLIP's ``tokenize``: ``[N, context_length]`` int64 ids (SOT 49406, EOT 49407, zero padding)."""
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)
