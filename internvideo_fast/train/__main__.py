"""`ivf-train --config configs/X.yaml [key.sub=value ...]` (also `python -m internvideo_fast.train`);
under `torchrun --nproc_per_node N` it trains with DDP."""

from __future__ import annotations

import argparse
import sys
import textwrap

from internvideo_fast.errors import ConfigError, run_cli
from internvideo_fast.train.config import RECIPES, load_config, to_yaml


def _parser() -> argparse.ArgumentParser:
    recipes = "\n".join(f"  {name:<24} {what}" for name, what in RECIPES.items())
    return argparse.ArgumentParser(
        prog="ivf-train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Train a model. Recipes (the config's `recipe` key):\n{recipes}",
        epilog=textwrap.fill("Every key of the config is checked (an unknown key, a wrong type or an impossible value "
               "is an error naming it); --print-config shows them all with their values. --debug shows "
               "the traceback of an error.", 100),
    )


def _main(argv: list[str]) -> int:
    parser = _parser()
    parser.add_argument("--config", help="YAML config (configs/*.yaml)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--resume", help="auto (continue the run in train.output_dir, if any), or a "
                                         "checkpoint path (same as train.resume=...)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an output_dir that holds a run, deleting its checkpoints and "
                             "metrics (same as train.overwrite=true)")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                        help="capture the whole training step as one CUDA graph (same as train.cuda_graph=...; "
                             "default auto: on for CUDA)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (YAML) and exit")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.base_lr=1e-3")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    overrides += [f"train.resume={args.resume}"] if args.resume else []
    overrides += ["train.overwrite=true"] if args.overwrite else []
    overrides += [f"train.cuda_graph={str(args.cuda_graph).lower()}"] if args.cuda_graph is not None else []
    config = load_config(args.config, overrides)
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    if args.device is not None and args.device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {args.device!r}")
    from internvideo_fast.train.loop import train

    train(config, device=args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("ivf-train", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
