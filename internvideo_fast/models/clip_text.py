"""The CLIP text encoder (OpenAI CLIP's text tower; InternVideo-MM's text side).

For token ids ``t [N, L]`` (``L <= context_length``, from :func:`internvideo_fast.models.tokenizer.tokenize`):

    x = token_embedding(t) + positional_embedding[:L]                                  [N, L, width]
    x = x + attn(ln_1(x)),   x = x + mlp(ln_2(x))        per block; attention causal (position i sees <= i)
    h = ln_final(x)                                                         forward_tokens -> [N, L, width]
    feature = h[n, argmax_l t[n, l]] @ text_projection                             forward -> [N, embed_dim]

The end-of-text id (49407) is the largest id, so ``argmax`` finds it (padding 0 never wins). The MLP is
``c_fc -> QuickGELU -> c_proj`` (``x * sigmoid(1.702 x)``, OpenAI's weights) on :class:`FusedMLP`; the
attention is one ``in_proj`` (q, k, v rows) and ``out_proj``, as ``nn.MultiheadAttention``, run through
``F.scaled_dot_product_attention(is_causal=True)`` (flash / memory-efficient kernels on a GPU). LayerNorms
compute in fp32 (as OpenAI's ``LayerNorm`` subclass) and return the input's dtype.

``logit_scale`` (init ``ln(1 / 0.07)``) is the CLIP temperature, used through :meth:`CLIPTextEncoder.
logit_scale_exp` or :func:`internvideo_fast.models.objectives.contrastive_loss`, both of which clamp it to
``[0, ln 100]``.

State-dict names are OpenAI CLIP's text side: ``token_embedding.weight``, ``positional_embedding``,
``transformer.resblocks.{i}.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.{weight,bias},
ln_1.*, mlp.c_fc.*, mlp.c_proj.*, ln_2.*}``, ``ln_final.*``, ``text_projection [width, embed_dim]``,
``logit_scale``. :func:`load_clip_text_state_dict` takes a whole CLIP / InternVideo-MM checkpoint (``clip.``
or ``module.`` prefix, ``state_dict`` / ``model`` wrapper), strictly by default.

Sizes (OpenAI): ViT-B/16 text width 512, 8 heads, embed 512; ViT-L/14 width 768, 12 heads, embed 768;
both 12 layers, context 77, vocabulary 49408 (:func:`clip_text_b16`, :func:`clip_text_l14`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from internvideo_fast.errors import CheckpointError
from internvideo_fast.layers.mlp import FusedMLP
from internvideo_fast.layers.norm import LayerNorm
from internvideo_fast.models.checkpoint import listed_keys

# The temperature's upper bound: logit_scale.exp() <= 100.
LOGIT_SCALE_MAX = math.log(100.0)
LOGIT_SCALE_INIT = math.log(1.0 / 0.07)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names (``in_proj_weight
    [3 * width, width]`` with q, k, v rows in that order, ``in_proj_bias``, ``out_proj``), batch-first
    ``[B, L, width]``, causal by default, through ``F.scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int, causal: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if heads < 1 or width % heads != 0:
            raise ValueError(f"heads must divide width {width}, got {heads}")
        self.width = width
        self.heads = heads
        self.causal = causal
        self.attn_drop = attn_drop
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def extra_repr(self) -> str:
        return f"width={self.width}, heads={self.heads}, causal={self.causal}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, L, width]`` -> ``[B, L, width]``."""
        B, L, _ = x.shape
        qkv = F.linear(x, self.in_proj_weight.to(x.dtype), self.in_proj_bias.to(x.dtype))
        q, k, v = qkv.view(B, L, 3, self.heads, self.width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, is_causal=self.causal
        )
        return self.out_proj(out.transpose(1, 2).reshape(B, L, self.width))


class CLIPMLP(FusedMLP):
    """:class:`FusedMLP` whose two linears have OpenAI CLIP's names: ``c_fc`` (fc1) and ``c_proj`` (fc2)."""

    def __init__(self, width: int, hidden: int, activation: str = "quick_gelu", drop: float = 0.0) -> None:
        super().__init__(width, hidden, activation=activation, drop=drop)
        # Rename the children; FusedMLP.forward reaches them through the fc1 / fc2 properties below.
        self.c_fc = self._modules.pop("fc1")
        self.c_proj = self._modules.pop("fc2")

    @property
    def fc1(self) -> nn.Linear:
        return self.c_fc

    @property
    def fc2(self) -> nn.Linear:
        return self.c_proj


class ResidualAttentionBlock(nn.Module):
    """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))`` (OpenAI CLIP's block, batch-first)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "quick_gelu",
                 causal: bool = True) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(width, heads, causal=causal)
        self.ln_1 = LayerNorm(width)
        self.mlp = CLIPMLP(width, int(width * mlp_ratio), activation=activation)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` under ``resblocks`` (CLIP's key names)."""

    def __init__(self, width: int, layers: int, heads: int, activation: str = "quick_gelu",
                 causal: bool = True) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, activation=activation, causal=causal) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class CLIPTextEncoder(nn.Module):
    """CLIP's text transformer (module docstring).

    Args:
        vocab_size: token vocabulary (49408 for CLIP's BPE).
        context_length: positions (77); inputs may be shorter.
        width: transformer width (512 for ViT-B, 768 for ViT-L).
        layers: transformer blocks (12).
        heads: attention heads (width / 64 in OpenAI's models).
        embed_dim: output width of ``text_projection`` (the joint embedding space).
        activation: the MLP activation, ``"quick_gelu"`` for OpenAI weights, ``"gelu"`` for OpenCLIP ones.
    """

    def __init__(
        self,
        vocab_size: int = 49408,
        context_length: int = 77,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        embed_dim: int = 512,
        activation: str = "quick_gelu",
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.width = width
        self.embed_dim = embed_dim
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, activation=activation)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OpenAI CLIP's ``initialize_parameters`` for the text side."""
        width, layers = self.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        attn_std = width ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)
        nn.init.normal_(self.text_projection, std=width ** -0.5)
        with torch.no_grad():
            self.logit_scale.fill_(LOGIT_SCALE_INIT)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if (
            not isinstance(tokens, torch.Tensor) or tokens.dim() != 2
            or tokens.dtype not in (torch.long, torch.int)
        ):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an int64 / int32 [N, L] tensor, got {shape}")
        if not 1 <= tokens.shape[1] <= self.context_length:
            raise ValueError(f"tokens must have 1..{self.context_length} positions, got {tokens.shape[1]}")

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [N, L]`` -> per-token features ``[N, L, width]`` after ``ln_final`` (causal: position i
        depends only on tokens 0..i)."""
        self._check_tokens(tokens)
        L = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:L].to(self.token_embedding.weight.dtype)
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        return self.ln_final(self.transformer(x))

    def pool(self, token_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The end-of-text (``argmax`` id) position's features, projected:
        ``[N, L, width]`` -> ``[N, embed_dim]``."""
        eot = tokens.argmax(dim=-1)
        pooled = token_features[torch.arange(tokens.shape[0], device=tokens.device), eot]
        return pooled @ self.text_projection.to(pooled.dtype)

    def forward(self, tokens: torch.Tensor, return_tokens: bool = False):
        """``tokens [N, L]`` -> text features ``[N, embed_dim]`` (not normalized); with `return_tokens`, also
        the per-token features ``[N, L, width]`` (for the caption decoder), from the same pass."""
        token_features = self.forward_tokens(tokens)
        features = self.pool(token_features, tokens)
        return (features, token_features) if return_tokens else features

    def logit_scale_exp(self) -> torch.Tensor:
        """``exp(clamp(logit_scale, 0, ln 100))``: the contrastive temperature's inverse, at most 100."""
        return self.logit_scale.clamp(0.0, LOGIT_SCALE_MAX).exp()

    def load_openai_state_dict(self, state_dict: Mapping[str, torch.Tensor],
                               strict: bool = True) -> LoadReport:
        """See :func:`load_clip_text_state_dict`."""
        return load_clip_text_state_dict(self, state_dict, strict=strict)

    @classmethod
    def from_openai_state_dict(cls, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                               **overrides) -> CLIPTextEncoder:
        """A text encoder sized from a CLIP / InternVideo-MM state dict (heads = width / 64, as OpenAI's
        ``build_model``), with the weights loaded; `overrides` replace inferred constructor arguments."""
        text = _text_state(state_dict)[0]
        layers = {int(m.group(1)) for k in text if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
        width = text["ln_final.weight"].shape[0]
        config = dict(
            vocab_size=text["token_embedding.weight"].shape[0],
            context_length=text["positional_embedding"].shape[0],
            width=width,
            layers=len(layers),
            heads=width // 64,
            embed_dim=text["text_projection"].shape[1],
        )
        config.update(overrides)
        model = cls(**config)
        model.load_openai_state_dict(state_dict, strict=strict)
        return model


@dataclass
class LoadReport:
    """What :func:`load_clip_text_state_dict` did: the model's keys it found no tensor for (``missing``,
    left at their initial values), the checkpoint's text-side keys it could not place (``unexpected``), and
    the keys it skipped on purpose (``ignored``: the visual tower and OpenAI's metadata entries)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected


# Keys of a full CLIP / InternVideo-MM checkpoint that belong elsewhere: the visual tower
# (`visual.*`, InternVideo-MM's `visual_ln_post.*` / `visual_proj`) and OpenAI's scalar metadata.
_IGNORED = re.compile(r"^(visual[._]|input_resolution$|context_length$|vocab_size$)")
_WRAPPERS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "clip.")


def _text_state(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Unwrap (``{'state_dict': ...}`` etc.) and strip ``module.`` / ``clip.`` prefixes; split off the ignored
    keys. Returns ``(text-side candidates, ignored keys)``."""
    for wrapper in _WRAPPERS:
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
            break
    text, ignored = {}, []
    for key, value in state_dict.items():
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        if _IGNORED.match(name):
            ignored.append(key)
        else:
            text[name] = value
    return text, ignored


def load_clip_text_state_dict(model: CLIPTextEncoder, state_dict: Mapping[str, torch.Tensor],
                              strict: bool = True, source: str = "<state dict>") -> LoadReport:
    """Load the text side of an OpenAI CLIP or InternVideo-MM state dict into `model`.

    Accepts the bare state dict or one wrapped as ``{'state_dict': sd}`` / ``{'model': sd}``, with keys
    optionally prefixed ``clip.`` (InternVideo-MM) or ``module.``. The visual tower's keys are ignored. A
    shape mismatch is always a :class:`~internvideo_fast.errors.CheckpointError` naming the keys; so is a
    missing or unexpected key under `strict` (the default). Otherwise loads what matches and returns a
    :class:`LoadReport`.
    """
    text, ignored = _text_state(state_dict)
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in text.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise CheckpointError(f"{source} does not fit the CLIP text encoder: {len(mismatched)} shape "
                              f"mismatch(es): {listed_keys(mismatched)}")
    usable = {k: v for k, v in text.items() if k in own}
    report = LoadReport(
        missing=sorted(k for k in own if k not in usable),
        unexpected=sorted(k for k in text if k not in own),
        ignored=sorted(ignored),
    )
    if strict and not report.ok:
        problems = [f"{len(keys)} {what} key(s): {listed_keys(keys)}"
                    for what, keys in (("missing", report.missing), ("unexpected", report.unexpected)) if keys]
        raise CheckpointError(f"{source} does not fit the CLIP text encoder: {'; '.join(problems)}",
                              hint="strict=False loads what fits and reports the rest")
    model.load_state_dict(usable, strict=False)
    return report


def clip_text_b16(**overrides) -> CLIPTextEncoder:
    """The text tower of OpenAI CLIP ViT-B/16 (and InternVideo-MM-B/16): width 512, 8 heads, embed 512."""
    return CLIPTextEncoder(**{**dict(width=512, layers=12, heads=8, embed_dim=512), **overrides})


def clip_text_l14(**overrides) -> CLIPTextEncoder:
    """The text tower of OpenAI CLIP ViT-L/14 (and InternVideo-MM-L/14): width 768, 12 heads, embed 768."""
    return CLIPTextEncoder(**{**dict(width=768, layers=12, heads=12, embed_dim=768), **overrides})
