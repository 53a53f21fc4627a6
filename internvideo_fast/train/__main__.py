"""`ivf-train --config configs/X.yaml [key.sub=value ...]` (also `python -m internvideo_fast.train`);
under `torchrun --nproc_per_node N` it trains with DDP."""

from __future__ import annotations

import argparse
import sys

from internvideo_fast.train.config import load_config
from internvideo_fast.train.loop import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ivf-train", description="Train a model (recipes mae_pretrain, finetune).")
    parser.add_argument("--config", help="YAML config (configs/*.yaml)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--resume", help="auto, or a checkpoint path (same as train.resume=...)")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                        help="capture the whole training step as one CUDA graph (same as train.cuda_graph=...; "
                             "default auto: on for CUDA)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.base_lr=1e-3")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume else [])
    if args.cuda_graph is not None:
        overrides.append(f"train.cuda_graph={str(args.cuda_graph).lower()}")
    train(load_config(args.config, overrides), device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
