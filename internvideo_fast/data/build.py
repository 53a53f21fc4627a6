"""``build_loader``: the one entry point of the training and evaluation loops; picks the loader.

``build_loader(cfg, split, rank, world_size, seed, start_step)`` returns a
:class:`~internvideo_fast.data.loader.VideoLoader` (the batch contract is in :mod:`.loader`):

- ``loader: torch``: the torch loader (CPU decoding in ``num_workers`` processes);
- ``loader: dali``: the DALI loader (:mod:`.dali`; NVDEC on a GPU); a :class:`ConfigError` naming
  ``data.loader`` when DALI does not import;
- ``loader: auto``: DALI's GPU pipeline when a CUDA device is present and DALI imports (labelled and
  video-text lists alike); otherwise the torch loader. Decoding on the GPU
  takes the work off the host's cores, which feed the GPU at a fraction of the training step's rate
  (``bench/loader.py``, ``bench/loader_train.py``). The choice and its reason are logged once per process
  as one line (``loader auto: torch (NVIDIA DALI is not installed ...)``).

Once chosen, the DALI loader itself falls back per batch: a file that passed the probe but fails to
decode on the GPU is logged once by name and that batch is decoded by the torch dataset (:mod:`.dali`).
"""

from __future__ import annotations

import logging

import torch

from internvideo_fast.data.dali import build_dali_loader, dali_import_error
from internvideo_fast.data.loader import DataConfig, VideoLoader, build_torch_loader
from internvideo_fast.errors import ConfigError

__all__ = ["build_loader", "choose_loader"]

logger = logging.getLogger(__name__)
_LOGGED: set[str] = set()


def choose_loader(cfg: DataConfig) -> tuple[str, str]:
    """``(loader, reason)``: ``"torch"`` or ``"dali"`` for ``cfg`` here (see the module docstring)."""
    if cfg.loader == "torch":
        return "torch", "data.loader is torch"
    if cfg.loader == "dali":
        error = dali_import_error()
        if error is not None:
            raise ConfigError(f"data.loader: 'dali' needs NVIDIA DALI, which does not import here ({error})",
                              hint="pip install nvidia-dali-cuda130, or data.loader: torch")
        return "dali", "data.loader is dali"
    if not torch.cuda.is_available():
        return "torch", "no CUDA device"
    error = dali_import_error()
    if error is not None:
        return "torch", f"NVIDIA DALI is not installed ({error}); pip install nvidia-dali-cuda130 decodes on the GPU"
    return "dali", "a CUDA device and NVIDIA DALI are present: NVDEC decoding"


def build_loader(cfg: DataConfig, split: str = "train", rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_step: int = 0) -> VideoLoader:
    """The loader for ``cfg`` (see the module docstring). ``split`` only names the loader in summaries;
    ``cfg.train`` selects training or testing behaviour."""
    choice, reason = choose_loader(cfg)
    if cfg.loader == "auto":
        line = f"loader auto: {choice} ({reason})"
        if line not in _LOGGED:
            _LOGGED.add(line)
            logger.info(line)
    build = build_dali_loader if choice == "dali" else build_torch_loader
    return build(cfg, split, rank, world_size, seed, start_step)
