"""`make demo` / `ivf demo`: the main job end to end on built-in sample data.

1. generate the sample dataset (synthetic clips whose class is the direction an outlined square moves over
   a smooth background, with distractors: smooth enough for masked reconstruction to learn);
2. MAE-pretrain a micro VideoMAE on it (configs/demo_pretrain.yaml);
3. fine-tune it to classify the clips (configs/demo_finetune.yaml) and evaluate on the held-out clips;
4. write the MAE reconstruction PNG;
5. video-text pretrain a tiny InternVideo-MM on the clips' captions (configs/demo_vl_pretrain.yaml) and
   evaluate it zero-shot (class-name prompts) and on video<->text retrieval;
6. train cross-model attention over the two frozen backbones (configs/demo_cma.yaml).

It prints the pretraining loss falling and the validation accuracy against chance. Everything lands in
`--out` (default demo_out/); runs resume where they stopped if interrupted."""

from __future__ import annotations

import time
from pathlib import Path


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def run_demo(out: str | Path = "demo_out", pretrain_steps: int | None = None, finetune_steps: int | None = None,
             clips_per_class: int = 64, device: str | None = None, multimodal_steps: int | None = None) -> dict:
    from internvideo_fast.builtin_configs import shipped_configs
    from internvideo_fast.data import make_sample_dataset
    from internvideo_fast.train.config import load_config
    from internvideo_fast.train.loop import train
    from internvideo_fast.train.visualize import visualize_checkpoint

    out = Path(out)
    start = time.perf_counter()
    data = out / "data"
    # A large, fast square over 16 frames: a direction a micro ViT learns in minutes on 2 CPU cores.
    sample = make_sample_dataset(data, num_classes=4, clips_per_class=clips_per_class, val_per_class=max(2, clips_per_class // 4),
                        num_frames=16, speed=(2.5, 3.5), target_side=(24, 32))
    print(f"[demo] sample dataset in {data} ({time.perf_counter() - start:.0f} s)")

    def config(name: str, stage: str, steps: int | None, train_list: str = "train.txt") -> dict:
        overrides = [
            f"data.train_list={data / train_list}", f"data.val_list={data / 'val.txt'}", f"data.root={data}",
            f"train.output_dir={out / stage}",
        ]
        if steps is not None:
            overrides.append(f"train.max_steps={steps}")
        if stage == "finetune":
            overrides.append(f"pretrained={out / 'pretrain' / 'checkpoint.pth'}")
        if stage == "cma":
            overrides.append(f"pretrained_parts={{masked_encoder: {out / 'finetune' / 'checkpoint.pth'}, "
                             f"multimodal_encoder.model: {out / 'vl_pretrain' / 'checkpoint.pth'}}}")
        return load_config(shipped_configs()[name], overrides)

    pretrain = train(config("demo_pretrain", "pretrain", pretrain_steps), device=device)
    losses = pretrain["losses"]
    window = max(1, len(losses) // 10)
    first, last = _mean(losses[:window]), _mean(losses[-window:])
    change = f" ({last / first - 1:+.0%})" if first else ""  # no losses: a finished run resumed
    print(f"[demo] MAE pretraining: loss {first:.4f} -> {last:.4f}{change} over {len(losses)} steps "
          f"({time.perf_counter() - start:.0f} s so far)")

    finetune = train(config("demo_finetune", "finetune", finetune_steps), device=device)
    accuracy = finetune["eval"]["top1"]
    ft_losses = finetune["losses"]
    window = max(1, len(ft_losses) // 10)
    print(f"[demo] fine-tuning: loss {_mean(ft_losses[:window]):.4f} -> {_mean(ft_losses[-window:]):.4f}; "
          f"validation top-1 {accuracy:.1%} on {finetune['eval']['videos']} clips (chance 25.0%)")

    png = out / "mae_reconstruction.png"
    visualize_checkpoint(out / "pretrain" / "checkpoint.pth", png)
    vl = train(config("demo_vl_pretrain", "vl_pretrain", multimodal_steps, "train_captions.txt"), device=device)
    window = max(1, len(vl["losses"]) // 10)
    zero_shot, retrieval = _evaluate_video_text(out / "vl_pretrain" / "checkpoint.pth", sample, device)
    print(f"[demo] video-text pretraining: loss {_mean(vl['losses'][:window]):.3f} -> {_mean(vl['losses'][-window:]):.3f}; "
          f"zero-shot top-1 {zero_shot['top1']:.1%} (chance 25.0%); text->video R@1 {retrieval['t2v_R@1']:.1%} "
          f"over {retrieval['pairs']} clips")

    cma = train(config("demo_cma", "cma", multimodal_steps), device=device)
    print(f"[demo] cross-model attention over the frozen backbones: validation top-1 {cma['eval']['top1']:.1%} "
          f"(the fine-tuned VideoMAE alone: {accuracy:.1%})")
    print(f"[demo] checkpoints under {out}/{{pretrain,finetune,vl_pretrain,cma}}/; reconstruction: {png}; "
          f"total {time.perf_counter() - start:.0f} s")
    return {"pretrain_loss": (first, last), "top1": accuracy, "png": png, "zero_shot": zero_shot["top1"],
            "cma_top1": cma["eval"]["top1"]}


def _evaluate_video_text(checkpoint: Path, sample, device: str | None) -> tuple[dict, dict]:
    import torch

    from internvideo_fast.eval.videotext import evaluate_retrieval, evaluate_zero_shot
    from internvideo_fast.train.distributed import DistContext
    from internvideo_fast.train.loop import _loader, load_trained_model

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, config = load_trained_model(checkpoint, target)
    context = DistContext(0, 1, 0, target)
    names = sample.classes_file.read_text().split("\n")[:-1]
    labelled = dict(config, data=dict(config["data"], text=False, val_list=str(sample.val_list)))
    zero_shot = evaluate_zero_shot(model, _loader(labelled, "val", context, 0), [f"moving {n}" for n in names], target)
    captioned = dict(config, data=dict(config["data"], text=True, val_list=str(sample.caption_list("val"))))
    retrieval = evaluate_retrieval(model, _loader(captioned, "val", context, 0), target)
    return zero_shot, retrieval
