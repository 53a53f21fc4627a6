"""`ivf-eval --checkpoint runs/x/checkpoint.pth [--task ...] [key.sub=value ...]` on the run's validation list
(multi-view: data.test_clips x data.test_crops):

- `classify` (default): top-1/top-5 of a fine-tuned model, with a confusion summary;
- `zero_shot --classes names.txt`: zero-shot action recognition of a video-text model (one class name per
  line, in label order);
- `retrieval`: video<->text R@1/5/10 and median rank (the list must be a video-text list: data.text=true);
- `multiple_choice --questions q.jsonl`: one `{"choices": [...], "answer": k}` line per video of the list."""

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
    parser.add_argument("--task", default="classify",
                        choices=("classify", "zero_shot", "retrieval", "multiple_choice", "tal", "open_set", "stal", "vqa"))
    parser.add_argument("--classes", help="zero_shot: a file of class names, one per line")
    parser.add_argument("--questions", help="multiple_choice: a JSON-lines file, one question per video")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the run's config")
    args = parser.parse_args(argv)
    if args.task in ("tal", "open_set", "stal", "vqa"):  # downstream tasks: train/tasks/<task>.py
        from internvideo_fast.train.tasks import evaluate_task

        print(json.dumps(evaluate_task(args.task, args.checkpoint, args.overrides, args.device)))
        return 0
    model, config = load_trained_model(args.checkpoint, args.device)
    for override in args.overrides:
        apply_override(config, override)
    loader = _loader(config, "val", DistContext(0, 1, 0, torch.device(args.device)), 0)
    device = torch.device(args.device)
    if args.task != "classify":
        from internvideo_fast.eval import videotext

        if args.task == "zero_shot":
            if not args.classes:
                parser.error("--task zero_shot needs --classes")
            names = [line.strip() for line in open(args.classes) if line.strip()]
            result = videotext.evaluate_zero_shot(model, loader, names, device)
        elif args.task == "retrieval":
            result = videotext.evaluate_retrieval(model, loader, device)
        else:
            if not args.questions:
                parser.error("--task multiple_choice needs --questions")
            questions = [json.loads(line) for line in open(args.questions) if line.strip()]
            result = videotext.evaluate_multiple_choice(model, loader, questions, device)
        print(json.dumps(result))
        return 0
    result = evaluate(model, loader, device)
    print(f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  videos {result['videos']}")
    for truth, predicted, count in result["confusion"]:
        print(f"  class {truth} predicted as {predicted}: {count}")
    print(json.dumps({k: v for k, v in result.items() if k != "matrix"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
