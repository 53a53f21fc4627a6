"""Video question answering on generated clips: ``ivf demo --task vqa``.

Each clip shows a coloured square moving in one of four directions over noise. Questions come from
templates, written as MSRVTT-QA-style JSON and read back with :func:`~internvideo_fast.data.annotations.read_qa`:

- open-ended: "what colour is the square?" / "which way does the square move?", answered from one
  vocabulary of the 4 colours and 4 directions (chance: 1/4, a random answer of the asked kind);
- multiple choice: "the square is <colour> and moves <direction>", four candidates of which one is right
  (chance 1/4).

A tiny InternVideo-MM with :class:`~internvideo_fast.models.video_qa.VideoQA` trains both heads together
(cross-entropy over the vocabulary plus cross-entropy over the choices) and reports the VQA accuracy of each.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from internvideo_fast.data.annotations import read_qa
from internvideo_fast.eval.recognition_metrics import vqa_accuracy
from internvideo_fast.train.tasks.common import Optimizer, pick_device, seed_everything

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230), "yellow": (230, 220, 40)}
DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
ANSWERS = list(COLOURS) + list(DIRECTIONS)
CONTEXT = 16  # tokens: the templates are short


def make_clips(count: int, frames: int = 8, size: int = 32, seed: int = 0):
    """``(clips float [N, 3, T, S, S] CLIP-normalized, colour names, direction names)``."""
    from internvideo_fast.data.transforms import CLIP_MEAN, CLIP_STD

    rng = np.random.default_rng(seed)
    clips = rng.normal(128, 25, size=(count, frames, size, size, 3)).astype(np.float32)
    colours, directions = [], []
    for n in range(count):
        colour = list(COLOURS)[rng.integers(4)]
        direction = list(DIRECTIONS)[rng.integers(4)]
        side = 8
        dy, dx = DIRECTIONS[direction]
        y0, x0 = rng.integers(side, size - 2 * side, size=2)
        for t in range(frames):
            y = int(np.clip(y0 + 2 * dy * (t - frames // 2), 0, size - side))
            x = int(np.clip(x0 + 2 * dx * (t - frames // 2), 0, size - side))
            clips[n, t, y:y + side, x:x + side] = np.array(COLOURS[colour]) + rng.normal(0, 10, 3)
        colours.append(colour)
        directions.append(direction)
    video = torch.from_numpy(clips).permute(0, 4, 1, 2, 3) / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1, 1)
    return ((video - mean) / std).contiguous(), colours, directions


def write_questions(path: Path, colours: list[str], directions: list[str], seed: int = 0) -> None:
    """One open-ended and one multiple-choice question per clip, as MSRVTT-QA-style JSON."""
    rng = np.random.default_rng(seed)
    items = []
    for n, (colour, direction) in enumerate(zip(colours, directions)):
        if rng.random() < 0.5:
            items.append({"video_id": n, "question": "what colour is the square?", "answer": colour})
        else:
            items.append({"video_id": n, "question": "which way does the square move?", "answer": direction})
        right = f"the square is {colour} and moves {direction}"
        wrong = set()
        while len(wrong) < 3:
            candidate = f"the square is {list(COLOURS)[rng.integers(4)]} and moves {list(DIRECTIONS)[rng.integers(4)]}"
            if candidate != right:
                wrong.add(candidate)
        choices = sorted(wrong) + [right]
        order = rng.permutation(4)
        items.append({"video_id": n, "question": "", "choices": [choices[i] for i in order],
                      "answer": int(np.nonzero(order == 3)[0][0])})
    path.write_text(json.dumps(items, indent=1))


def _split(records):
    open_ended = [r for r in records if not r.choices]
    multiple_choice = [r for r in records if r.choices]
    return open_ended, multiple_choice


def _video_index(record) -> int:
    return int(record.video.removeprefix("clip"))


def demo(out_dir: str, device: str | None = None, steps: int = 200, batch: int = 16) -> dict:
    from internvideo_fast.models import create_model
    from internvideo_fast.models.tokenizer import tokenize
    from internvideo_fast.models.video_qa import VideoQA

    start = time.perf_counter()
    device = pick_device(device)
    seed_everything(0)
    out = Path(out_dir) / "vqa"
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, count, seed in (("train", 256, 1), ("val", 64, 2)):
        video, colours, directions = make_clips(count, seed=seed)
        write_questions(out / f"{name}_qa.json", colours, directions, seed=seed)
        splits[name] = (video, *_split(read_qa(out / f"{name}_qa.json", video_name="clip{}")))
    mm = create_model("internvideo_mm_tiny", with_caption=False)
    model = VideoQA(mm, num_answers=len(ANSWERS), dim=64, depth=1, num_heads=2).to(device)
    optimizer = Optimizer(model, steps, 1e-3, 0.05, warmup_steps=10)
    answer_id = {answer: index for index, answer in enumerate(ANSWERS)}
    video, open_ended, multiple_choice = splits["train"]
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        oe = [open_ended[i] for i in torch.randint(len(open_ended), (batch,), generator=generator).tolist()]
        mc = [multiple_choice[i] for i in torch.randint(len(multiple_choice), (batch,), generator=generator).tolist()]
        logits = model.answer_logits(video[[_video_index(r) for r in oe]].to(device),
                                     tokenize([r.question for r in oe], CONTEXT).to(device))
        loss_oe = F.cross_entropy(logits, torch.tensor([answer_id[r.answer] for r in oe], device=device))
        choice_tokens = tokenize([c for r in mc for c in r.choices], CONTEXT).view(batch, 4, CONTEXT)
        scores = model.choice_logits(video[[_video_index(r) for r in mc]].to(device), choice_tokens.to(device))
        loss_mc = F.cross_entropy(scores, torch.tensor([r.answer for r in mc], device=device))
        optimizer.step(loss_oe + loss_mc)
        if (step + 1) % 50 == 0:
            print(f"vqa step {step + 1}/{steps} open-ended loss {loss_oe.item():.3f} "
                  f"multiple-choice loss {loss_mc.item():.3f}", flush=True)
    model.eval()
    video, open_ended, multiple_choice = splits["val"]
    with torch.no_grad():
        logits = model.answer_logits(video[[_video_index(r) for r in open_ended]].to(device),
                                     tokenize([r.question for r in open_ended], CONTEXT).to(device))
        predicted = [ANSWERS[i] for i in logits.argmax(1).tolist()]
        choice_tokens = tokenize([c for r in multiple_choice for c in r.choices], CONTEXT)
        scores = model.choice_logits(video[[_video_index(r) for r in multiple_choice]].to(device),
                                     choice_tokens.view(len(multiple_choice), 4, CONTEXT).to(device))
    open_accuracy = vqa_accuracy(predicted, [r.answer for r in open_ended])
    choice_accuracy = vqa_accuracy(scores.argmax(1).tolist(), [r.answer for r in multiple_choice])
    summary = {"task": "vqa", "metric": "accuracy", "value": open_accuracy, "chance": 0.25,
               "multiple_choice_accuracy": choice_accuracy, "multiple_choice_chance": 0.25,
               "seconds": time.perf_counter() - start}
    print(f"VQA demo: open-ended accuracy {open_accuracy:.3f} (chance 0.25), multiple-choice accuracy "
          f"{choice_accuracy:.3f} (chance 0.25), {summary['seconds']:.0f} s", flush=True)
    return summary
