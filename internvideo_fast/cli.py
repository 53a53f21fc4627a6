"""`ivf`: the command line of internvideo-fast.

    ivf info         what this install holds: versions, the compiled extension, the backends of each op
    ivf configs      the shipped training configs (`ivf-train --config NAME` takes their names)
    ivf demo         the main job on built-in data: sample clips, MAE pretraining, fine-tuning, evaluation
    ivf masks        tube masks drawn by every backend, cross-checked and drawn as text
    ivf aot-check    compile every Triton kernel for the H100 ahead of time (no GPU needed)

Training and evaluation have their own commands: ivf-train, ivf-eval, ivf-visualize-mae, ivf-prepare.
A mistake in the arguments is one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time

from internvideo_fast.errors import UserError, run_cli


def _info(_: argparse.Namespace) -> int:
    import torch
    import triton

    import internvideo_fast
    from internvideo_fast import _extension
    from internvideo_fast.ops.framework.backend import available_backends, get_backend

    print(f"internvideo_fast {internvideo_fast.__version__}, torch {torch.__version__}, triton {triton.__version__}")
    if _extension.HAS_C:
        print(f"_C: loaded; CUDA kernels for: {_extension.CUDA_ARCHS or 'none (CPU-only build)'}")
        if _extension.BUILD_INFO:
            built = _extension.BUILD_INFO
            print(f"_C: built against torch {built['torch']} for Python {built['python']}")
    else:
        print(f"_C: NOT loaded ({_extension.LOAD_ERROR}); ops run their PyTorch references")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    # (backend choice key, as in IVF_BACKEND_<KEY>; the op _C may hold kernels for; has a Triton kernel)
    ops = [("tube_mask", "tube_mask", True), ("token_gather", "gather_tokens", False),
           ("masked_patch_embed", "masked_tubelet_patches", False), ("mae_targets", "mae_targets", False),
           ("dropout_add_layer_norm", "dropout_add_layer_norm", True), ("linear_act", "linear_act", True),
           ("cross_attention", "cross_attention", True)]
    for key, compiled, has_triton in ops:
        for device in devices:
            available = sorted(available_backends(compiled, device, has_triton))
            print(f"{key:<24} {device.type:<5} configured {get_backend(key)!r:<12} available {available}")
    return 0


def _configs(_: argparse.Namespace) -> int:
    from internvideo_fast.builtin_configs import shipped_configs

    for name, path in shipped_configs().items():
        print(f"{name:<40} {path}")
    return 0


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _demo(args: argparse.Namespace) -> int:
    if args.task:  # the downstream tasks' demos: train/tasks/<task>.py
        from internvideo_fast.train.tasks import demo_task

        demo_task(args.task, args.out, args.device)
        return 0
    from internvideo_fast.demo import run_demo

    _positive(args, "pretrain_steps", "finetune_steps", "multimodal_steps", "clips_per_class")

    run_demo(args.out, args.pretrain_steps, args.finetune_steps, args.clips_per_class, args.device,
             args.multimodal_steps)
    return 0


def _masks(args: argparse.Namespace) -> int:
    import torch

    from internvideo_fast.ops import tube_mask, use_backend
    from internvideo_fast.ops.framework.backend import available_backends

    _positive(args, "batch")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, frames, height, width, ratio = args.batch, 8, 14, 14, 0.9
    print(f"tube masks for {batch} clips of 16x224x224 (tokens {frames}x{height}x{width}), mask ratio {ratio}, on {device}")
    results = {}
    for backend in sorted(available_backends("tube_mask", device)):
        with use_backend(backend, "tube_mask"):
            start = time.perf_counter()
            results[backend] = tube_mask(batch, frames, height, width, ratio, seed=args.seed, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            print(f"  {backend:<10} {1e3 * (time.perf_counter() - start):8.2f} ms  visible tokens per clip: "
                  f"{results[backend].ids_keep.shape[1]} of {frames * height * width}")
    first = next(iter(results.values()))
    agree = all(torch.equal(first.mask, r.mask) and torch.equal(first.ids_keep, r.ids_keep) for r in results.values())
    print(f"  every backend draws the same mask for seed {args.seed}: {agree}")
    grid = first.mask[0, : height * width].view(height, width).cpu()
    print("  clip 0's spatial mask (# masked, . visible), repeated over all token frames:")
    for row in grid:
        print("    " + "".join("#" if masked else "." for masked in row.tolist()))
    return 0 if agree else 1


def _aot_check(args: argparse.Namespace) -> int:
    from internvideo_fast.ops.framework import aot

    return aot.main(args.rest)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ivf", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, extension and backends").set_defaults(run=_info)
    commands.add_parser("configs", help="the shipped training configs").set_defaults(run=_configs)
    demo = commands.add_parser("demo", help="the main job on built-in data")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--pretrain-steps", type=int, help="override the configs' step counts (quick runs)")
    demo.add_argument("--finetune-steps", type=int)
    demo.add_argument("--multimodal-steps", type=int, help="steps of the video-text and CMA stages")
    demo.add_argument("--clips-per-class", type=int, default=64)
    demo.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    demo.add_argument("--task", choices=("tal", "open_set", "stal", "vqa"), help="a downstream task's demo instead")
    demo.set_defaults(run=_demo)
    masks = commands.add_parser("masks", help="tube masks on every backend, cross-checked")
    masks.add_argument("--batch", type=int, default=4)
    masks.add_argument("--seed", type=int, default=0)
    masks.set_defaults(run=_masks)
    aot = commands.add_parser("aot-check", help="compile every Triton kernel for sm_90a")
    aot.add_argument("rest", nargs=argparse.REMAINDER)
    aot.set_defaults(run=_aot_check)
    args = parser.parse_args(argv)
    return args.run(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli("ivf", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
