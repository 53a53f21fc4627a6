"""The released InternVideo-MM checkpoints (``InternVideo-MM-B-16.ckpt``, ``InternVideo-MM-L-14.ckpt``) in our
:class:`~internvideo_fast.models.videotext.VideoTextModel`.

    model, report = build_internvideo_mm("InternVideo-MM-L-14.ckpt")      # sized from the file, strict
    model = create_model("internvideo_mm_b16_release", checkpoint="InternVideo-MM-B-16.ckpt")
    report = load_internvideo_mm(model, "InternVideo-MM-B-16.ckpt")        # into a model you built

The official model (IV ``Pretrain/Multi-Modalities-Pretraining/InternVideo/``: ``internvideo.py::load_model``,
``clip_utils/model.py::{VideoIntern, build_model}``, ``clip_utils/utils/clip_vit_only_global.py``):

- File: a PyTorch Lightning checkpoint; ``load_model`` keeps ``ckpt['state_dict']`` entries starting with
  ``clip.`` and strips that prefix (everything else in the file is not part of the released model).
- Video tower ``visual.*`` = ``vit_only_global_b16`` / ``_l14``: the CLIP image ViT (``conv1`` 5-D
  ``[C, 3, 1, p, p]`` without bias, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
  ``transformer.resblocks.i`` with ``attn.{in_proj_weight, in_proj_bias, out_proj}``, ``ln_1``, ``mlp.c_fc``,
  ``mlp.c_proj``, ``ln_2``) with **no local MHRA**, plus the global UniBlock branch after the last 4 layers
  (``return_list`` 8..11 for B/16, 20..23 for L/14): ``transformer.temporal_cls_token [1, 1, C]``,
  ``transformer.dpe.j`` (depthwise Conv3d 3x3x3 with bias), ``transformer.dec.j`` (``attn``, ``ln_1``,
  ``ln_2``, ``ln_3``, ``mlp.c_fc``, ``mlp.c_proj``; heads 12 / 16), ``transformer.balance``; the output is
  ``(1 - sigmoid(balance)) * query + sigmoid(balance) * mean_t(frame CLS)``. The classifier head
  ``transformer.proj`` is commented out, and there is no ``ln_post`` / ``proj`` inside ``visual``.
- ``encode_video = visual_ln_post(feature) @ visual_proj`` (``visual_ln_post`` a plain LayerNorm,
  ``visual_proj [C, embed_dim]``).
- Text tower at the top level, OpenAI CLIP's: ``token_embedding``, ``positional_embedding [77, W]``,
  ``transformer.resblocks.i`` (causal), ``ln_final``, ``text_projection [W, embed_dim]``, ``logit_scale``;
  heads ``W // 64``. ``text_mask_embedding [1, 1, W]`` (a training-time masked-token embedding) is in the
  state dict but ``encode_text`` reads it only with ``masked_indices``, never at inference.
- Sizes: B/16 visual 768 / 12 layers / patch 16, text 512 / 12 layers, embed 512; L/14 visual 1024 / 24 /
  patch 14, text 768 / 12, embed 768. ``build_model`` infers them from the state dict, the UniBlock layers and
  heads from the visual width.

Our names: ``visual.*`` and ``visual_ln_post.*`` / ``visual_proj`` are the same; the text keys get ``text.``
(our :class:`CLIPTextEncoder` holds ``logit_scale``). Our video tower is :class:`UniFormerV2` with
``lmhra=False`` (the default) and ``num_classes=0`` (no head); no caption decoder (the release has none).
The official vision transformer fixes ``T = t_size = 8``; ours reads T from the input (same math at 8 frames).
Files load with ``torch.load(weights_only=True)`` only, and strictly (anything missing, unexpected or of
another shape is a CheckpointError; ``strict=False`` loads what fits and reports the rest).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from internvideo_fast.models.checkpoint import (
    LoadReport, load_videomae_checkpoint, read_checkpoint, register_checkpoint_loader, source_name,
    unwrap_state_dict,
)
from internvideo_fast.errors import CheckpointError
from internvideo_fast.models.clip_text import CLIPTextEncoder
from internvideo_fast.models.registry import register_model
from internvideo_fast.models.uniformerv2 import UniFormerV2, UniFormerV2Config
from internvideo_fast.models.videotext import VideoTextModel

OFFICIAL_PREFIX = "clip."
# Top-level official names of the text tower (our `text.` submodule).
_TEXT_ROOTS = frozenset({"token_embedding", "positional_embedding", "transformer", "ln_final",
                         "text_projection", "logit_scale"})
_VISUAL_ROOTS = frozenset({"visual", "visual_ln_post", "visual_proj"})
# Official keys with no counterpart in the inference model, and why.
IGNORED_KEYS = {
    "text_mask_embedding": "training-only masked-token embedding (encode_text reads it only with "
                           "masked_indices)",
}

# The released sizes (official build_model: heads = width // 64, UniBlocks after the last 4 layers).
RELEASE_SIZES = {
    "b16": dict(visual=dict(img_size=224, patch_size=16, width=768, layers=12, heads=12,
                            dec_layers=(8, 9, 10, 11)),
                text=dict(width=512, layers=12, heads=8, embed_dim=512)),
    "l14": dict(visual=dict(img_size=224, patch_size=14, width=1024, layers=24, heads=16,
                            dec_layers=(20, 21, 22, 23)),
                text=dict(width=768, layers=12, heads=12, embed_dim=768)),
}


# ----------------------------------------------------------------------------------------------------
# Reading and renaming
# ----------------------------------------------------------------------------------------------------
def read_official_checkpoint(source: str | os.PathLike | Mapping) -> dict:
    """The raw state dict of an InternVideo-MM file (or mapping): ``torch.load(weights_only=True)``
    (:func:`~internvideo_fast.models.checkpoint.read_checkpoint`: an unreadable file, or one with pickled
    Python objects such as Lightning's hyper_parameters, is a CheckpointError naming it), then unwrapped from
    ``state_dict`` (Lightning) / ``model`` / ``module``."""
    state = source if isinstance(source, Mapping) else read_checkpoint(source)
    return unwrap_state_dict(state, source_name(source))


def official_to_ours(key: str) -> str | None:
    """Our name of an official (``clip.``-stripped) InternVideo-MM key, or None if it has none."""
    root = key.split(".", 1)[0]
    if root in _VISUAL_ROOTS:
        return key
    if root in _TEXT_ROOTS:
        return "text." + key
    return None


def _strip_prefixes(state: Mapping, report: LoadReport) -> dict[str, object]:
    """Keep the ``clip.`` entries without the prefix (``module.`` dropped first); entries outside ``clip.`` go
    to ``report.dropped``. A state dict with no ``clip.`` key at all is taken as already stripped."""
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    if not any(k.startswith(OFFICIAL_PREFIX) for k in state):
        return state
    out = {}
    for key, value in state.items():
        if key.startswith(OFFICIAL_PREFIX):
            out[key[len(OFFICIAL_PREFIX):]] = value
        else:
            report.dropped[key] = "outside `clip.` (the official load_model discards it)"
    return out


def convert_official_state_dict(
    source: str | os.PathLike | Mapping,
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Official InternVideo-MM state dict -> ``(our names -> tensors, report)``. Keys without a counterpart
    are in ``report.unexpected`` (official names, unknown) or ``report.dropped`` (known and unused, with
    why)."""
    report = LoadReport(source=source_name(source))
    state = _strip_prefixes(read_official_checkpoint(source), report)
    converted = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            report.dropped[key] = f"not a tensor ({type(value).__name__})"
        elif key in IGNORED_KEYS:
            report.dropped[key] = IGNORED_KEYS[key]
        elif (ours := official_to_ours(key)) is None:
            report.unexpected.append(key)
        else:
            converted[ours] = value
    return converted, report


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------
def load_internvideo_mm(model: VideoTextModel, source: str | os.PathLike | Mapping,
                        strict: bool = True, name: str | None = None) -> LoadReport:
    """Load an official InternVideo-MM checkpoint (path or state dict) into `model`.

    Returns a :class:`LoadReport`: ``missing`` = our parameters / buffers the checkpoint did not set,
    ``unexpected`` = official keys with no place in `model` (official names), ``mismatched`` = keys of
    another shape, ``dropped`` = keys left out on purpose, with the reason, ``initialized`` = the parts the
    release does not have and that keep their initialisation (a caption decoder, a classifier head
    ``visual.transformer.proj``). Strict by default: anything missing, unexpected or mismatched is a
    :class:`~internvideo_fast.errors.CheckpointError` naming the file (`name`, when `source` is a mapping read
    from it) and the keys."""
    converted, report = convert_official_state_dict(source)
    report.source = name or report.source
    own = model.state_dict()
    for key in own:
        if key.startswith("caption_decoder."):
            report.initialized[key] = "the release has no caption decoder"
        elif key.startswith("visual.transformer.proj.") and key not in converted:
            report.initialized[key] = "the release has no classifier head"
    official = {(k[len("text."):] if k.startswith("text.") else k): k for k in converted}
    load = {}
    for name, key in official.items():
        if key not in own:
            report.unexpected.append(name)
        elif tuple(converted[key].shape) != tuple(own[key].shape):
            report.mismatched[name] = (f"checkpoint {tuple(converted[key].shape)} vs model "
                                       f"{tuple(own[key].shape)}")
        else:
            load[key] = converted[key]
    report.unexpected = sorted(set(report.unexpected))
    report.missing = sorted(k for k in own if k not in load and k not in report.initialized)
    report.model = type(model).__name__
    report.check(strict)
    model.load_state_dict(load, strict=False)
    report.loaded = len(load)
    return report


def is_official_layout(state: Mapping) -> bool:
    """Whether a state dict is in the released InternVideo-MM layout (``clip.`` prefix, or the text tower's
    keys at the top level) rather than ours (``text.*``)."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state]
    return any(k.startswith(OFFICIAL_PREFIX) for k in keys) or "token_embedding.weight" in keys


def _load_video_text(model: VideoTextModel, checkpoint, source: str, strict: bool) -> LoadReport:
    """``create_model(<video-text model>, pretrained=path)``: the released layout through
    :func:`load_internvideo_mm`, our own checkpoints key for key."""
    state = unwrap_state_dict(checkpoint, source)
    if is_official_layout(state):
        return load_internvideo_mm(model, state, strict=strict, name=source)
    return load_videomae_checkpoint(model, checkpoint, source, strict)


register_checkpoint_loader(VideoTextModel, _load_video_text)


# ----------------------------------------------------------------------------------------------------
# Building the released architecture
# ----------------------------------------------------------------------------------------------------
def _indices(state: Mapping, pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(m.group(1)) for k in state if (m := regex.match(k))}


def release_config(source: str | os.PathLike | Mapping) -> dict:
    """``{'visual': UniFormerV2 args, 'text': CLIPTextEncoder args}`` of the model a checkpoint holds,
    inferred as the official ``build_model`` does (heads = width // 64; UniBlocks after the last layers, one
    per ``dec.j``)."""
    converted, _ = convert_official_state_dict(source)
    try:
        conv1 = converted["visual.conv1.weight"]
        pos = converted["visual.positional_embedding"]
        width = converted["visual_proj"].shape[0]
        text_width = converted["text.ln_final.weight"].shape[0]
    except KeyError as error:
        raise CheckpointError(f"{source_name(source)} is not an InternVideo-MM checkpoint: {error.args[0]} is "
                              "missing") from error
    layers = len(_indices(converted, r"visual\.transformer\.resblocks\.(\d+)\."))
    n_dec = len(_indices(converted, r"visual\.transformer\.dec\.(\d+)\."))
    patch = conv1.shape[-1]
    visual = dict(img_size=patch * round((pos.shape[0] - 1) ** 0.5), patch_size=patch, width=width,
                  layers=layers, heads=max(1, width // 64), dec_layers=tuple(range(layers - n_dec, layers)))
    text = dict(vocab_size=converted["text.token_embedding.weight"].shape[0],
                context_length=converted["text.positional_embedding"].shape[0], width=text_width,
                layers=len(_indices(converted, r"text\.transformer\.resblocks\.(\d+)\.")),
                heads=max(1, text_width // 64), embed_dim=converted["text.text_projection"].shape[1])
    return {"visual": visual, "text": text}


def release_model(visual: dict, text: dict) -> VideoTextModel:
    """The released inference architecture: global-only UniFormerV2 (no local MHRA, no head), CLIP text tower,
    no caption decoder."""
    video = UniFormerV2(UniFormerV2Config(**{**visual, "lmhra": False, "num_classes": 0}))
    return VideoTextModel(video, CLIPTextEncoder(**text), caption_decoder=None)


def build_internvideo_mm(source: str | os.PathLike | Mapping, strict: bool = True,
                         visual_args: dict | None = None,
                         text_args: dict | None = None) -> tuple[VideoTextModel, LoadReport]:
    """The model of an official InternVideo-MM checkpoint, sized from it (``release_config``; `visual_args` /
    `text_args` override), with the weights loaded (strict by default), in eval mode."""
    state = read_official_checkpoint(source)  # read the file once
    config = release_config(state)
    model = release_model(config["visual"] | (visual_args or {}), config["text"] | (text_args or {}))
    report = load_internvideo_mm(model, state, strict=strict, name=source_name(source))
    return model.eval(), report


def _release_factory(size: str):
    sizes = RELEASE_SIZES[size]

    def factory(checkpoint: str | os.PathLike | None = None, strict: bool = True,
                visual_args: dict | None = None, text_args: dict | None = None) -> nn.Module:
        model = release_model(sizes["visual"] | (visual_args or {}), sizes["text"] | (text_args or {}))
        if checkpoint is not None:
            print(load_internvideo_mm(model, checkpoint, strict=strict))
            model.eval()
        return model

    factory.__name__ = f"internvideo_mm_{size}_release"
    factory.__doc__ = (f"The released InternVideo-MM-{size.upper()} inference model (global-only UniFormerV2 "
                       "+ CLIP text, no caption decoder); `checkpoint=` loads the official file.")
    return factory


register_model("internvideo_mm_b16_release", _release_factory("b16"))
register_model("internvideo_mm_l14_release", _release_factory("l14"))

__all__ = [
    "IGNORED_KEYS", "RELEASE_SIZES", "build_internvideo_mm", "convert_official_state_dict", "is_official_layout",
    "load_internvideo_mm", "official_to_ours", "read_official_checkpoint", "release_config", "release_model",
]
