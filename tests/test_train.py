"""The training loop: exact resume, DDP equivalence, configs, optimizer groups, schedule and mixup."""

import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from internvideo_fast.data import make_sample_dataset
from internvideo_fast.errors import ConfigError
from internvideo_fast.models import create_model
from internvideo_fast.train.config import load_config
from internvideo_fast.train.loop import train
from internvideo_fast.train.mixup import VideoMixup, soft_cross_entropy
from internvideo_fast.train.optim import learning_rate, param_groups

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    make_sample_dataset(root, num_classes=2, clips_per_class=4, val_per_class=2, num_frames=12, size=(32, 32))
    return root


def _config(sample_data, output_dir, recipe="mae_pretrain", **train_overrides):
    model = "videomae_pretrain_vit_micro_patch16" if recipe == "mae_pretrain" else "videomae_vit_micro_patch16"
    model_args = {"img_size": 32, "num_frames": 4}
    if recipe == "finetune":
        model_args |= {"num_classes": 2}
    config = {
        "recipe": recipe, "model": model, "model_args": model_args,
        "data": {"train_list": str(sample_data / "train.txt"), "val_list": str(sample_data / "val.txt"),
                 "root": str(sample_data), "num_frames": 4, "stride": 2, "img_size": 32, "batch_size": 2,
                 "num_workers": 0},
        "optim": {"base_lr": 0.05, "warmup_steps": 2},
        "train": {"epochs": 2, "log_every": 1, "output_dir": str(output_dir), "resume": "auto",
                  "tensorboard": False} | train_overrides,
    }
    path = Path(output_dir).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("recipe, extra", [
    ("mae_pretrain", {}),
    ("finetune", {"mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1}),
])
def test_a_resumed_run_continues_exactly(sample_data, tmp_path, recipe, extra):
    """Killed after step 3 and resumed, a run gives the loss sequence of an uninterrupted one (8 steps:
    2 epochs of 4 batches, so the resume lands mid-epoch)."""
    whole = train(load_config(_config(sample_data, tmp_path / "whole", recipe, **extra)), device="cpu")["losses"]
    assert len(whole) == 8
    first = train(load_config(_config(sample_data, tmp_path / "split", recipe, max_steps=3, **extra)), device="cpu")
    rest = train(load_config(_config(sample_data, tmp_path / "split", recipe, **extra)), device="cpu")
    assert first["losses"] == whole[:3]
    assert rest["losses"] == whole[3:]
    assert (tmp_path / "split" / "metrics.csv").read_text().count("\n") == 1 + 8
    checkpoint = torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=True)
    assert checkpoint["step"] == 8


def test_compiled_training_matches_eager_and_losses_survive_sparse_logging(sample_data, tmp_path):
    """train.compile wraps the model in torch.compile (the fused ops are custom ops, so it captures); the
    losses, read back only at log lines, are all there."""
    eager = train(load_config(_config(sample_data, tmp_path / "eager", "finetune", max_steps=3, log_every=2)),
                  device="cpu")
    compiled = train(load_config(_config(sample_data, tmp_path / "compiled", "finetune", max_steps=3,
                                         log_every=2, compile=True)), device="cpu")
    assert len(eager["losses"]) == len(compiled["losses"]) == 3
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-4, abs=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ddp_processes_equal_one_with_the_same_global_batch(sample_data, tmp_path):
    single = _config(sample_data, tmp_path / "single", "finetune", max_steps=3)
    cfg = yaml.safe_load(single.read_text())
    cfg["data"]["batch_size"] = 4
    single.write_text(yaml.safe_dump(cfg))
    train(load_config(single), device="cpu")

    double = _config(sample_data, tmp_path / "double", "finetune", max_steps=3)  # 2 per rank x 2 ranks
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "internvideo_fast.train", "--config", str(double), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    one = torch.load(tmp_path / "single" / "checkpoint.pth", weights_only=True)["model"]
    two = torch.load(tmp_path / "double" / "checkpoint.pth", weights_only=True)["model"]
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)


def test_config_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: finetune\noptim: {base_lr: 0.1}\n")
    config = load_config(path, ["optim.base_lr=2e-3", "train.mixup=0.8", "data.batch_size=4", "model_args.num_classes=7"])
    assert config["optim"]["base_lr"] == 2e-3 and config["optim"]["weight_decay"] == 0.05
    assert config["train"]["mixup"] == 0.8 and config["data"]["batch_size"] == 4 and config["model_args"]["num_classes"] == 7
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(path, ["optim.base_lr"])
    with pytest.raises(ValueError, match="recipe"):
        load_config(path, ["recipe=pretrain"])


def test_param_groups_decay_and_layer_scales():
    model = create_model("videomae_vit_micro_patch16", num_classes=3, img_size=32, num_frames=4)
    groups = param_groups(model, 0.05, layer_decay=0.5)
    by_name = {name: group for group in groups for name in group["names"]}
    assert by_name["blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert by_name["blocks.0.attn.q_bias"]["weight_decay"] == 0.0 and by_name["fc_norm.weight"]["weight_decay"] == 0.0
    assert by_name["head.weight"]["lr_scale"] == 1.0  # depth 4: head is layer 5
    assert by_name["blocks.3.mlp.fc1.weight"]["lr_scale"] == 0.5
    assert by_name["patch_embed.proj.weight"]["lr_scale"] == 0.5**5
    model.blocks[0].requires_grad_(False)
    assert not any(name.startswith("blocks.0.") for group in param_groups(model, 0.05) for name in group["names"])


def test_learning_rate_schedule():
    assert learning_rate(0, 100, 1.0, 0.0, 10) == pytest.approx(0.1)
    assert learning_rate(9, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert learning_rate(55, 100, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert learning_rate(100, 100, 1.0, 0.01, 10) == pytest.approx(0.01)
    assert all(learning_rate(s, 100, 1.0, 0.0, 10) >= learning_rate(s + 1, 100, 1.0, 0.0, 10) for s in range(10, 99))


def test_mixup_targets_are_soft_and_sum_to_one():
    video, labels = torch.randn(4, 3, 2, 8, 8), torch.tensor([0, 1, 2, 1])
    for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0), (0.8, 1.0), (0.0, 0.0)):
        mixed, targets = VideoMixup(3, mixup, cutmix, 0.1)(video, labels, torch.Generator().manual_seed(1))
        assert mixed.shape == video.shape and targets.shape == (4, 3)
        torch.testing.assert_close(targets.sum(1), torch.ones(4))
    logits = torch.randn(4, 3)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert math.isclose(soft_cross_entropy(logits, torch.eye(3)[labels]).item(), plain.item(), rel_tol=1e-6)


def test_bad_videos_do_not_stop_training_and_are_summarized(sample_data, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "junk.mp4").write_bytes(random.Random(4096).randbytes(4096))  # the same garbage every run
    lines = (sample_data / "train.txt").read_text().splitlines()
    rooted = [f"{sample_data / line.split()[0]} {line.split()[1]}" for line in lines]
    (tmp_path / "list.txt").write_text("\n".join(rooted + [f"{broken / 'junk.mp4'} 0", f"{broken / 'missing.mp4'} 1"]) + "\n")
    path = _config(sample_data, tmp_path / "run", "finetune", max_steps=5)
    config = load_config(path, [f"data.train_list={tmp_path / 'list.txt'}", "data.root=null"])
    result = train(config, device="cpu")
    assert len(result["losses"]) == 5
    out = capsys.readouterr().out
    assert "bad video(s) replaced or skipped" in out and "junk.mp4" in out and "missing.mp4" in out


def test_cma_recipe_trains_only_the_fusion_and_head(sample_data, tmp_path):
    """Backbones loaded from their own checkpoints stay exactly as loaded; CMA and head move."""
    from internvideo_fast.models.checkpoint import save_official

    mae = create_model("videomae_vit_micro_patch16", num_classes=0, img_size=32, num_frames=4)
    save_official(mae, tmp_path / "mae.pth")
    path = _config(sample_data, tmp_path / "cma", "finetune", max_steps=3)
    config = load_config(path, ["recipe=cma", "model=internvideo_cma_tiny", "model_args={num_classes: 2}",
                                f"pretrained_parts={{masked_encoder: {tmp_path / 'mae.pth'}}}"])
    train(config, device="cpu")
    trained = torch.load(tmp_path / "cma" / "checkpoint.pth", weights_only=True)
    initial = create_model("internvideo_cma_tiny", num_classes=2).state_dict()
    for name, value in mae.state_dict().items():
        assert torch.equal(trained["model"][f"masked_encoder.{name}"], value), name
    assert not torch.equal(trained["model"]["head.weight"], initial["head.weight"])
    assert set(trained["optimizer"]["state"]) and len(trained["optimizer"]["param_groups"][0]["params"]) < 60


def test_supervised_postpretraining_of_the_multimodal_encoder(sample_data, tmp_path):
    path = _config(sample_data, tmp_path / "post", "finetune", max_steps=2)
    config = load_config(path, ["recipe=supervised_postpretrain", "model=uniformerv2_tiny",
                                "model_args={num_classes: 2}"])
    result = train(config, device="cpu")
    assert len(result["losses"]) == 2 and "eval" in result


def test_vl_pretraining_on_a_video_text_list(sample_data, tmp_path, capsys):
    """Captions are tokenized to data.max_text_len in the loader; a longer one is cut, named once and counted."""
    directions = ["right", "down", "left", "up"]
    lines = (sample_data / "train.txt").read_text().splitlines()
    text_list = tmp_path / "captions.txt"
    captions = [f"a square moving {directions[int(line.split()[1])]}" for line in lines]
    captions[0] = "a square moving " + " and then ".join(directions)  # 15 tokens with SOT and EOT
    text_list.write_text("".join(f"{line.split()[0]}\t{caption}\n" for line, caption in zip(lines, captions)))
    path = _config(sample_data, tmp_path / "vl", "mae_pretrain", max_steps=3)
    config = load_config(path, ["recipe=vl_pretrain", "model=internvideo_mm_tiny", "model_args={}",
                                f"data.train_list={text_list}", "data.text=true", "data.max_text_len=8",
                                "data.batch_size=4", "data.shuffle=false"])
    result = train(config, device="cpu")
    assert len(result["losses"]) == 3 and all(math.isfinite(loss) for loss in result["losses"])
    out = capsys.readouterr().out
    assert f"the caption of {lines[0].split()[0]} in {text_list} is longer than data.max_text_len = 8" in out
    assert result["captions_cut"] == 1 and "1 captions were longer than data.max_text_len = 8" in out
    with pytest.raises(ConfigError, match=r"data.max_text_len = 78 is longer than the model's text takes \(77"):
        train(load_config(path, ["recipe=vl_pretrain", "model=internvideo_mm_tiny", "model_args={}",
                                 f"data.train_list={text_list}", "data.text=true", "data.max_text_len=78",
                                 "train.overwrite=true"]), device="cpu")


def test_the_tuning_cache_lives_in_the_output_dir_for_the_run(tmp_path, monkeypatch):
    """train.tuning_cache: auto points the fused ops' tuners at output_dir/tuning-choices.json while the run
    lasts (a resumed run then reuses the plans its first run chose); a variable set by the user wins."""
    from internvideo_fast.train.loop import tuning_cache

    monkeypatch.delenv("IVF_AUTOTUNE_CACHE", raising=False)
    config = {"train": {"output_dir": str(tmp_path / "run"), "tuning_cache": "auto"}}
    with tuning_cache(config):
        assert os.environ["IVF_AUTOTUNE_CACHE"] == str(tmp_path / "run" / "tuning-choices.json")
    assert "IVF_AUTOTUNE_CACHE" not in os.environ
    monkeypatch.setenv("IVF_AUTOTUNE_CACHE", str(tmp_path / "mine.json"))
    with tuning_cache(config):
        assert os.environ["IVF_AUTOTUNE_CACHE"] == str(tmp_path / "mine.json")
    monkeypatch.delenv("IVF_AUTOTUNE_CACHE")
    with tuning_cache({"train": {"output_dir": str(tmp_path), "tuning_cache": None}}):
        assert "IVF_AUTOTUNE_CACHE" not in os.environ
    with pytest.raises(ValueError, match="train.tuning_cache"), tuning_cache(
            {"train": {"output_dir": str(tmp_path), "tuning_cache": "yes"}}):
        pass


def _steps(csv_path: Path) -> list[int]:
    lines = csv_path.read_text().splitlines()
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_run_folders_are_safe_and_keep_the_last_checkpoints(sample_data, tmp_path, capsys):
    """A run keeps its last K step checkpoints (checkpoint.pth the latest) and config.yaml; a new run into the
    folder refuses; a resumed run drops the metrics rows past its step; --overwrite starts afresh; a resume
    path that does not exist is an error. Log lines give the elapsed time and the ETA."""
    from internvideo_fast.errors import ConfigError, UserError

    run = tmp_path / "run"
    path = _config(sample_data, run, max_steps=5, save_every=1, keep_checkpoints=2)
    train(load_config(path), device="cpu")
    assert sorted(p.name for p in run.glob("checkpoint*.pth")) == ["checkpoint-4.pth", "checkpoint-5.pth",
                                                                   "checkpoint.pth"]
    latest = torch.load(run / "checkpoint.pth", weights_only=True)
    assert latest["step"] == 5 and (run / "checkpoint.pth").samefile(run / "checkpoint-5.pth")
    assert load_config(run / "config.yaml") == latest["config"] == load_config(path)
    assert _steps(run / "metrics.csv") == [1, 2, 3, 4, 5]
    step_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(step_lines) == 5 and all(" elapsed " in line and " eta " in line for line in step_lines)
    assert step_lines[-1].endswith("eta 0s")

    with pytest.raises(UserError, match=r"already holds a run .*--resume auto continues it, --overwrite"):
        train(load_config(path, ["train.resume=null"]), device="cpu")
    assert _steps(run / "metrics.csv") == [1, 2, 3, 4, 5]

    # Resumed from step 4 (as if step 5 had never happened): one row per step, step 5's row is the new one.
    train(load_config(path, [f"train.resume={run / 'checkpoint-4.pth'}", "train.max_steps=6"]), device="cpu")
    assert _steps(run / "metrics.csv") == [1, 2, 3, 4, 5, 6]
    assert torch.load(run / "checkpoint.pth", weights_only=True)["step"] == 6

    train(load_config(path, ["train.max_steps=2"]), device="cpu")  # resume: auto, already past step 2
    train(load_config(path, ["train.overwrite=true", "train.max_steps=2"]), device="cpu")
    assert "overwriting" in capsys.readouterr().out
    assert _steps(run / "metrics.csv") == [1, 2]
    assert sorted(p.name for p in run.glob("checkpoint*.pth")) == ["checkpoint-1.pth", "checkpoint-2.pth",
                                                                   "checkpoint.pth"]

    with pytest.raises(ConfigError, match=r"train\.resume: .*nowhere\.pth does not exist"):
        train(load_config(path, [f"train.resume={tmp_path / 'nowhere.pth'}",
                                 f"train.output_dir={tmp_path / 'fresh'}"]), device="cpu")
    assert not (tmp_path / "fresh").exists()


def test_validation_during_training_keeps_the_best_checkpoint(sample_data, tmp_path):
    run = tmp_path / "best"
    path = _config(sample_data, run, "finetune", eval_every_epochs=1, keep_checkpoints=1)
    result = train(load_config(path), device="cpu")
    rows = [line.split(",") for line in (run / "eval.csv").read_text().splitlines()[1:]]
    assert [int(row[0]) for row in rows] == [4, 8]  # after epoch 1, and the final validation
    assert float(rows[-1][1]) == result["eval"]["top1"]
    best_step = int(max(rows, key=lambda row: float(row[1]))[0])  # the first of equal top-1s
    assert torch.load(run / "checkpoint-best.pth", weights_only=True)["step"] == best_step
    assert sorted(p.name for p in run.glob("checkpoint*.pth")) == ["checkpoint-8.pth", "checkpoint-best.pth",
                                                                   "checkpoint.pth"]
    with pytest.raises(ValueError, match="train.eval_every_epochs needs a classification recipe"):
        train(load_config(_config(sample_data, tmp_path / "mae", eval_every_epochs=1)), device="cpu")


def test_fp16_is_refused_on_cpu_and_scales_the_loss_where_it_runs(sample_data, tmp_path):
    from internvideo_fast.errors import ConfigError
    from internvideo_fast.train.loop import MixedPrecision
    from internvideo_fast.train.step import TrainStep

    with pytest.raises(ConfigError, match="train.precision=fp16 is supported on CUDA only"):
        train(load_config(_config(sample_data, tmp_path / "fp16", precision="fp16")), device="cpu")
    assert not (tmp_path / "fp16").exists()

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = MixedPrecision("fp16", torch.device("cpu"), allow_cpu_fp16=True)
    step = TrainStep(model, optimizer, "finetune", parameters=model.parameters(), clip_grad=1e6,
                     autocast=amp.autocast, scaler=amp.scaler)
    x, targets = torch.randn(5, 8), torch.softmax(torch.randn(5, 3), dim=-1)
    reference = torch.nn.Linear(8, 3)
    reference.load_state_dict(model.state_dict())
    soft_cross_entropy(reference(x), targets).backward()
    before = model.weight.detach().clone()
    with amp.autocast():
        assert model(x).dtype == torch.float16
    step({"video": x, "targets": targets})
    # The gradients the optimizer used are the unscaled ones (the loss was scaled by 2^16 for backward).
    torch.testing.assert_close((before - model.weight.detach()) / 0.1, reference.weight.grad, rtol=2e-2, atol=2e-3)
    scale, before = amp.scaler.get_scale(), model.weight.detach().clone()
    step({"video": x * float("inf"), "targets": targets})
    assert torch.equal(model.weight, before) and amp.scaler.get_scale() < scale  # skipped, scale lowered
    assert amp.state_dict()["scale"] == amp.scaler.get_scale()
    assert MixedPrecision("auto", torch.device("cpu")).state_dict() is None


def test_visualize_mae_uses_the_runs_mask_ratio_and_normalization(sample_data, tmp_path, monkeypatch):
    from internvideo_fast.data import CLIP_MEAN, CLIP_STD
    from internvideo_fast.train import visualize

    path = _config(sample_data, tmp_path / "pre", max_steps=1, mask_ratio=0.5)
    train(load_config(path, ["data.normalization=clip"]), device="cpu")
    seen = {}
    real = visualize.reconstruct

    def spy(model, video, mean, std, seed=0, mask_ratio=None):
        views = real(model, video, mean, std, seed, mask_ratio)
        seen.update(mean=mean, std=std, mask_ratio=mask_ratio,
                    hidden=float((views["masked"] == 0.5).all(0).float().mean()))
        return views

    monkeypatch.setattr(visualize, "reconstruct", spy)
    assert visualize.main(["--checkpoint", str(tmp_path / "pre" / "checkpoint.pth"),
                           "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").is_file()
    assert seen["mask_ratio"] == 0.5 and seen["mean"] == tuple(CLIP_MEAN) and seen["std"] == tuple(CLIP_STD)
    assert seen["hidden"] == pytest.approx(0.5, abs=0.05)
    assert visualize.main(["--checkpoint", str(tmp_path / "pre" / "checkpoint.pth"), "--index", "99"]) == 2


def test_run_folder_rules(tmp_path):
    """resume: auto falls back to the newest step checkpoint; retention drops an abandoned branch's later
    checkpoints and all but the newest K; metrics rows past a step go; overwrite and a resume path clash."""
    from internvideo_fast.errors import ConfigError, UserError
    from internvideo_fast.train import run_folder

    train_cfg = {"output_dir": str(tmp_path), "resume": "auto", "overwrite": False}
    assert run_folder.resolve_resume(train_cfg) is None
    for step in (2, 4, 6, 10):
        run_folder.step_checkpoint(tmp_path, step).write_bytes(b"x")
    assert run_folder.resolve_resume(train_cfg) == tmp_path / "checkpoint-10.pth"
    with pytest.raises(UserError, match="already holds a run"):
        run_folder.check_output_dir(train_cfg | {"resume": None}, None)
    run_folder.retain_checkpoints(tmp_path, 6, keep=2)  # resumed from 4, saved 6: 10 is another branch's
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pth")) == ["checkpoint-4.pth", "checkpoint-6.pth"]
    run_folder.keep_as_best(tmp_path, 4)
    run_folder.retain_checkpoints(tmp_path, 8, keep=1)
    assert (tmp_path / "checkpoint-best.pth").read_bytes() == b"x" and not (tmp_path / "checkpoint-4.pth").exists()

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n")
    run_folder.truncate_rows(metrics, 2)
    assert metrics.read_text() == "step,loss\n1,0.5\n2,0.4\n"
    run_folder.truncate_rows(metrics, 0)
    assert not metrics.exists()
    with pytest.raises(ConfigError, match="train.overwrite starts a new run"):
        run_folder.resolve_resume(train_cfg | {"overwrite": True, "resume": str(tmp_path / "checkpoint-6.pth")})
    assert run_folder.resolve_resume(train_cfg | {"overwrite": True}) is None
    (tmp_path / "checkpoint.pth").write_bytes(b"y")  # a run folder as the resume path: its checkpoint.pth
    assert run_folder.resolve_resume(train_cfg | {"resume": str(tmp_path)}) == tmp_path / "checkpoint.pth"


def test_a_gpu_run_feeds_uint8_batches_through_the_prefetcher(sample_data, tmp_path):
    """On a GPU, ivf-train's loader leaves the video unnormalized (uint8) and pinned, and DevicePrefetcher
    copies and normalizes it on a side stream: the same videos as the CPU feed, to the bit."""
    from internvideo_fast.data import DevicePrefetcher
    from internvideo_fast.train.distributed import DistContext
    from internvideo_fast.train.loop import _device_feed, _loader

    config = load_config(_config(sample_data, tmp_path / "feed", "finetune"), ["data.repeated_aug=2"])
    gpu = DistContext(0, 1, 0, torch.device("cuda"))
    loader = _loader(config, "train", gpu, 0, device_feed=True)
    assert loader.cfg.normalize_on_device and loader.cfg.pin_memory
    feed = _device_feed(loader, gpu)  # built, not iterated: no GPU needed
    assert isinstance(feed, DevicePrefetcher) and feed.device.type == "cuda" and feed.depth == 2
    assert feed.normalize == loader.cfg.normalization_constants()

    cpu = DistContext(0, 1, 0, torch.device("cpu"))
    plain_loader = _loader(config, "train", cpu, 0)
    assert _device_feed(plain_loader, cpu) is plain_loader  # the CPU feed: the loader as it is
    config["data"]["pin_memory"] = False  # an explicit choice is kept (and there is no GPU to pin for)
    raw = _loader(config, "train", cpu, 0, device_feed=True)
    assert raw.cfg.pin_memory is False and next(iter(raw))["video"].dtype == torch.uint8
    plain = list(plain_loader)
    fed = list(_device_feed(raw, cpu))  # uint8 batches are normalized wherever they go
    assert len(plain) == len(fed) > 0
    for a, b in zip(plain, fed):
        assert a["video"].dtype == b["video"].dtype == torch.float32 and torch.equal(a["video"], b["video"])
        assert torch.equal(a["label"], b["label"])
