"""Video question answering on generated clips: ``ivf demo --task vqa``.

Each clip shows a coloured square moving in one of four directions over noise. Questions come from
templates, written as MSRVTT-QA-style JSON and read back with :func:`~internvideo_fast.data.annotations.read_qa`:

- open-ended: "what colour is the square?" / "which way does the square move?", answered from one
  vocabulary of the 4 colours and 4 directions (chance: 1/4, a random answer of the asked kind);
- multiple choice: "the square is <colour> and moves <direction>", four candidates of which one is right
  (chance 1/4).

A tiny InternVideo-MM with :class:`~internvideo_fast.models.video_qa.VideoQA` trains both heads together
(cross-entropy over the vocabulary plus cross-entropy over the choices) and reports the VQA accuracy of each.

``recipe: vqa`` trains the same heads on real videos (``train`` / ``evaluate`` below)::

    recipe: vqa
    model: internvideo_mm_b16          # a registered video-text model; pretrained: its weights
    model_args: {dim: 512, depth: 2, num_heads: 8, dropout: 0.1, freeze_encoders: false}
    data:
      root: videos/                    # <video><extension> per question's video
      extension: .mp4
      video_name: "video{}"            # MSRVTT-QA's numeric video_id -> file name
      train_qa: train_qa.json          # read_qa files: open-ended and/or multiple-choice questions
      val_qa: val_qa.json
      num_answers: 1000                # answer vocabulary: the most frequent training answers
      num_frames: 8
      img_size: 224
      short_side: null                 # default: img_size
      context_length: 32
      batch_size: 8
      num_workers: 4
    optim: {base_lr: 1e-4, weight_decay: 0.05, warmup_steps: 0}
    train: {epochs: 5, max_steps: null, seed: 0, log_every: 10, output_dir: runs/vqa}

An open-ended answer outside the vocabulary is left out of training and counts as wrong in evaluation; all
multiple-choice questions of a file must have the same number of choices.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from internvideo_fast.data.annotations import read_qa
from internvideo_fast.errors import ConfigError
from internvideo_fast.eval.recognition_metrics import normalize_answer, vqa_accuracy
from internvideo_fast.train.tasks.common import (
    Optimizer, checkpoint_config, finish, pick_device, require, seed_everything, task_optimizer,
    task_sections,
)
from internvideo_fast.train.tasks.vqa_data import answer_vocabulary

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


# ------------------------------------------------------------------------------------------------------
# recipe: vqa
# ------------------------------------------------------------------------------------------------------
DATA_DEFAULTS = {"root": None, "extension": ".mp4", "video_name": "{}", "train_qa": None, "val_qa": None,
                 "num_answers": 1000, "num_frames": 8, "img_size": 224, "short_side": None, "context_length": 32,
                 "batch_size": 8, "num_workers": 4, "backend": "auto", "answers": None}
TRAIN_DEFAULTS = {"epochs": 5, "max_steps": None, "seed": 0, "log_every": 10, "output_dir": "runs/vqa"}
OPTIM_DEFAULTS = {"base_lr": 1e-4, "min_lr": 0.0, "weight_decay": 0.05, "warmup_steps": 0, "clip_grad": 1.0}
MODEL_DEFAULTS = {"dim": 512, "depth": 2, "num_heads": 8, "dropout": 0.1, "freeze_encoders": False,
                  "encoder_args": {}}




def _records(data: dict, key: str):
    records = read_qa(data[key], video_name=data["video_name"])
    counts = {len(r.choices) for r in records if r.choices}
    if len(counts) > 1:
        raise ConfigError(f"data.{key}: multiple-choice questions of {data[key]} have {sorted(counts)} choices; "
                          "one count per file")
    return records


def _loader(records, data: dict, shuffle: bool, seed: int):
    from internvideo_fast.train.tasks.vqa_data import QADataset, collate_questions

    dataset = QADataset(records, data["root"], data["extension"], data["num_frames"], data["img_size"],
                        data["short_side"], data["backend"])
    return torch.utils.data.DataLoader(dataset, batch_size=data["batch_size"], shuffle=shuffle,
                                       num_workers=data["num_workers"], collate_fn=collate_questions,
                                       generator=torch.Generator().manual_seed(seed))


def _build(config: dict, model_args: dict, num_answers: int, load_pretrained: bool = True):
    from internvideo_fast.models import create_model
    from internvideo_fast.models.video_qa import VideoQA

    encoder_args = {"with_caption": False, **(model_args["encoder_args"] or {})}
    pretrained = config.get("pretrained") if load_pretrained else None
    encoder = create_model(config.get("model") or "internvideo_mm_b16", pretrained=pretrained, **encoder_args)
    return VideoQA(encoder, num_answers, model_args["dim"], model_args["depth"], model_args["num_heads"],
                   model_args["dropout"], model_args["freeze_encoders"])


def _losses(model, video, records, answer_id: dict, context: int, device):
    """Cross-entropy of the open-ended questions with an in-vocabulary answer plus that of the
    multiple-choice ones; ``None`` when the batch has neither."""
    from internvideo_fast.models.tokenizer import tokenize

    total = None
    open_ended = [i for i, r in enumerate(records) if not r.choices and normalize_answer(r.answer) in answer_id]
    if open_ended:
        logits = model.answer_logits(video[open_ended].to(device),
                                     tokenize([records[i].question for i in open_ended], context).to(device))
        targets = torch.tensor([answer_id[normalize_answer(records[i].answer)] for i in open_ended], device=device)
        total = F.cross_entropy(logits, targets)
    chosen = [i for i, r in enumerate(records) if r.choices]
    if chosen:
        count = len(records[chosen[0]].choices)
        texts = [f"{records[i].question} {c}".strip() for i in chosen for c in records[i].choices]
        scores = model.choice_logits(video[chosen].to(device), tokenize(texts, context).view(len(chosen), count, -1).to(device))
        loss = F.cross_entropy(scores, torch.tensor([records[i].answer for i in chosen], device=device))
        total = loss if total is None else total + loss
    return total


def train(config: dict, device: str | None = None) -> dict:
    data, train_cfg, optim, model_args = task_sections(config, DATA_DEFAULTS, TRAIN_DEFAULTS, OPTIM_DEFAULTS,
                                                       MODEL_DEFAULTS)
    require(data, "data", "root", "train_qa")
    device = pick_device(device)
    seed_everything(train_cfg["seed"])
    records = _records(data, "train_qa")
    answers = answer_vocabulary(records, data["num_answers"])
    config = json.loads(json.dumps(config))
    config["data"] = {**data, "answers": answers}
    config["model_args"] = model_args
    model = _build(config, model_args, len(answers)).to(device)
    loader = _loader(records, data, True, train_cfg["seed"])
    optimizer = task_optimizer(model, len(loader), train_cfg, optim)
    answer_id = {answer: index for index, answer in enumerate(answers)}
    model.train()
    while not optimizer.done:
        for batch in loader:
            if batch is None:
                continue
            loss = _losses(model, *batch, answer_id, data["context_length"], device)
            if loss is None:
                continue
            lr = optimizer.step(loss)
            if optimizer.log_due(train_cfg["log_every"]):
                print(f"vqa step {optimizer.steps}/{optimizer.total_steps} loss {loss:.4f} lr {lr:.2e}", flush=True)
            if optimizer.done:
                break
    result = finish(model, config, optimizer, train_cfg["output_dir"])
    if data["val_qa"]:
        result["eval"] = evaluate_model(model, config, device)
        print(f"vqa validation: {json.dumps(result['eval'])}", flush=True)
    return result


@torch.no_grad()
def evaluate_model(model, config: dict, device) -> dict:
    """Accuracy of the open-ended questions (over the vocabulary) and of the multiple-choice ones."""
    from internvideo_fast.models.tokenizer import tokenize

    data = config["data"]
    records = _records(data, "val_qa")
    answers = data["answers"]
    model.eval()
    predicted, truth, picks, right = [], [], [], []
    for batch in _loader(records, data, False, 0):
        if batch is None:
            continue
        video, items = batch
        open_ended = [i for i, r in enumerate(items) if not r.choices]
        if open_ended and answers:
            logits = model.answer_logits(video[open_ended].to(device),
                                         tokenize([items[i].question for i in open_ended], data["context_length"]).to(device))
            predicted += [answers[k] for k in logits.argmax(1).tolist()]
            truth += [items[i].answer for i in open_ended]
        chosen = [i for i, r in enumerate(items) if r.choices]
        if chosen:
            count = len(items[chosen[0]].choices)
            texts = [f"{items[i].question} {c}".strip() for i in chosen for c in items[i].choices]
            tokens = tokenize(texts, data["context_length"]).view(len(chosen), count, -1)
            picks += model.choice_logits(video[chosen].to(device), tokens.to(device)).argmax(1).tolist()
            right += [items[i].answer for i in chosen]
    result = {"questions": len(records), "answered": len(predicted) + len(picks)}
    if predicted:
        result["open_ended_accuracy"] = vqa_accuracy(predicted, truth)
    if picks:
        result["multiple_choice_accuracy"] = vqa_accuracy(picks, right)
    return result


def evaluate(checkpoint_path: str, overrides: list[str], device: str | None = None) -> dict:
    """``ivf-eval --task vqa --checkpoint runs/vqa/checkpoint.pth [data.val_qa=test_qa.json ...]``."""
    checkpoint, config = checkpoint_config(checkpoint_path, "vqa", overrides)
    require(config["data"], "data", "val_qa")
    device = pick_device(device)
    model = _build(config, config["model_args"], len(config["data"]["answers"]), load_pretrained=False)
    model.load_state_dict(checkpoint["model"])
    return evaluate_model(model.to(device), config, device)
