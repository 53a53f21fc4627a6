"""`ivf-eval --checkpoint runs/x/checkpoint.pth [--task ...] [key.sub=value ...]` on the run's validation list
(multi-view: data.test_clips x data.test_crops):

- `classify` (default): top-1/top-5 of a fine-tuned model, with a confusion summary;
- `zero_shot --classes names.txt`: zero-shot action recognition of a video-text model (one class name per
  line, in label order);
- `retrieval`: video<->text R@1/5/10 and median rank (the list must be a video-text list: data.text=true);
- `multiple_choice --questions q.jsonl`: one `{"choices": [...], "answer": k}` line per video of the list;
- `tal`, `stal`, `open_set`, `vqa`: a downstream task's run (internvideo_fast/train/tasks/) on its own
  validation data: mAP at tIoU thresholds, frame-mAP@0.5, open-set AUROC and closed-set accuracy, accuracy.

A checkpoint not written by ivf-train (an official `{"model": ...}` file) needs `--model NAME` and the keys
its config lacks, e.g. `model_args.num_classes=400 data.val_list=val.txt data.num_frames=16`.

The result names every listed video that could not be scored (skipped as bad) and counts them; the command
fails (exit 2, one line) when none could be scored or when more than `eval.max_bad_fraction` (default 0) of
the listed videos were dropped. `--debug` shows tracebacks."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from internvideo_fast.errors import UserError, run_cli
from internvideo_fast.progress import Progress
from internvideo_fast.train.config import TASK_RECIPES


def _read_lines(path: str, what: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist") from None


def _main(argv: list[str]) -> int:
    from internvideo_fast.eval.accounting import check_dropped
    from internvideo_fast.eval.evaluate import evaluate
    from internvideo_fast.train.distributed import DistContext
    from internvideo_fast.train.loop import _loader, load_trained_model

    tasks = __doc__[__doc__.index("- `classify`"):]
    parser = argparse.ArgumentParser(
        prog="ivf-eval", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=tasks,
        description="Evaluate a checkpoint on its run's validation list (multi-view: data.test_clips x "
                    "data.test_crops).")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model", help="registered model name, for checkpoints not written by ivf-train")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--task", default="classify",
                        choices=("classify", "zero_shot", "retrieval", "multiple_choice", *TASK_RECIPES))
    parser.add_argument("--classes", help="zero_shot: a file of class names, one per line")
    parser.add_argument("--questions", help="multiple_choice: a JSON-lines file, one question per video")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the run's config")
    args = parser.parse_args(argv)
    if args.task in TASK_RECIPES:  # the downstream tasks: internvideo_fast/train/tasks/<task>.py
        from internvideo_fast.train.tasks import evaluate_task

        print(json.dumps(evaluate_task(args.task, args.checkpoint, args.overrides, args.device)))
        return 0
    if args.task == "zero_shot" and not args.classes:
        parser.error("--task zero_shot needs --classes")
    if args.task == "multiple_choice" and not args.questions:
        parser.error("--task multiple_choice needs --questions")
    model, config = load_trained_model(args.checkpoint, args.device, model=args.model,
                                       overrides=args.overrides)
    if not config["data"].get("val_list"):
        raise UserError("no evaluation list: the config has no data.val_list",
                        hint="pass data.val_list=val.txt")
    device = torch.device(args.device)
    loader = _loader(config, "val", DistContext(0, 1, 0, device), 0)
    # a bar on a terminal, a line every 30 s otherwise (on stderr: stdout keeps the results)
    progress = Progress(total=len(loader), desc="ivf-eval", unit="batches")
    if args.task == "zero_shot":
        from internvideo_fast.eval import videotext

        names = _read_lines(args.classes, "--classes")
        result = videotext.evaluate_zero_shot(model, loader, names, device, progress=progress)
    elif args.task == "retrieval":
        from internvideo_fast.eval import videotext

        result = videotext.evaluate_retrieval(model, loader, device, progress=progress)
    elif args.task == "multiple_choice":
        from internvideo_fast.eval import videotext

        questions = [json.loads(line) for line in _read_lines(args.questions, "--questions")]
        result = videotext.evaluate_multiple_choice(model, loader, questions, device, progress=progress)
    else:
        result = evaluate(model, loader, device, progress=progress)
    progress.close()
    if args.task == "classify":
        if result["videos"]:
            print(f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  videos {result['videos']} scored, "
                  f"{result['dropped']} dropped of {result['listed']}")
            for truth, predicted, count in result["confusion"]:
                print(f"  class {truth} predicted as {predicted}: {count}")
        result = {k: v for k, v in result.items() if k != "matrix"}
    for path, reason in result["dropped_videos"].items():
        print(f"  dropped {path}: {reason}")
    print(json.dumps(result))
    max_bad = (config.get("eval") or {}).get("max_bad_fraction", 0.0)
    check_dropped(result, float(max_bad or 0.0), what=config["data"]["val_list"])
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("ivf-eval", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
