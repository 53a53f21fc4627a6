"""`ivf-eval --checkpoint runs/x/checkpoint.pth [key.sub=value ...]`: top-1/top-5 of a fine-tuned model on
its config's validation list (multi-view: data.test_clips x data.test_crops), with a confusion summary."""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    from internvideo_fast.eval.evaluate import evaluate
    from internvideo_fast.train.config import apply_override
    from internvideo_fast.train.distributed import DistContext
    from internvideo_fast.train.loop import _loader, load_trained_model

    parser = argparse.ArgumentParser(prog="ivf-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the run's config")
    args = parser.parse_args(argv)
    model, config = load_trained_model(args.checkpoint, args.device)
    for override in args.overrides:
        apply_override(config, override)
    loader = _loader(config, "val", DistContext(0, 1, 0, torch.device(args.device)), 0)
    result = evaluate(model, loader, torch.device(args.device))
    print(f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  videos {result['videos']}")
    for truth, predicted, count in result["confusion"]:
        print(f"  class {truth} predicted as {predicted}: {count}")
    print(json.dumps({k: v for k, v in result.items() if k != "matrix"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
