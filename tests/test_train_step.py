"""The graph-ready training step (internvideo_fast/train/step.py): equal to the plain eager step for every
recipe, free of host reads, compiled, resumed exactly; on a GPU, its CUDA-graph replay equals the eager step
and allocates nothing."""

import contextlib
import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.overrides import TorchFunctionMode

from internvideo_fast.errors import ConfigError
from internvideo_fast.models import create_model
from internvideo_fast.models.tokenizer import tokenize
from internvideo_fast.train.mixup import VideoMixup, soft_cross_entropy
from internvideo_fast.train.optim import build_optimizer, learning_rate, param_groups, set_learning_rate
from internvideo_fast.train.step import (
    GraphedTrainStep, TrainStep, capture_blocker, resolve_cuda_graph, step_inputs,
)

OPTIM = {"lr": 0.02, "min_lr": 1e-4, "weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_steps": 1}
SCHEDULE = (3, OPTIM["lr"], OPTIM["min_lr"], OPTIM["warmup_steps"])  # 3 steps: warmup, then cosine

# recipe: (model, constructor arguments, clip size (frames, side), batch)
RECIPES = {
    "mae_pretrain": ("videomae_pretrain_vit_micro_patch16", {"img_size": 32, "num_frames": 4}, (4, 32), 2),
    "finetune": ("videomae_vit_micro_patch16", {"img_size": 32, "num_frames": 4, "num_classes": 3}, (4, 32), 2),
    "supervised_postpretrain": ("uniformerv2_tiny", {"num_classes": 3}, (4, 32), 2),
    "cma": ("internvideo_cma_tiny", {"num_classes": 3}, (4, 32), 2),
    "vl_pretrain": ("internvideo_mm_tiny", {}, (4, 32), 2),
}


def _batches(recipe: str, steps: int = 3) -> list[dict]:
    _, _, (frames, side), batch = RECIPES[recipe]
    generator = torch.Generator().manual_seed(7)
    out = []
    for i in range(steps):
        captions = [f"a square moving {i} {j}" for j in range(batch)]
        out.append({"video": torch.randn(batch, 3, frames, side, side, generator=generator),
                    "label": torch.randint(0, 3, (batch,), generator=generator),
                    "caption": captions, "tokens": tokenize(captions)})  # as the loaders give them
    return out


def _model(recipe: str) -> torch.nn.Module:
    name, kwargs, _, _ = RECIPES[recipe]
    torch.manual_seed(0)
    return create_model(name, **kwargs)


def _mixup(recipe):
    return VideoMixup(3, mixup=0.8, cutmix=1.0, label_smoothing=0.1) if recipe in ("finetune", "cma") else VideoMixup(3)


def _eager_reference_losses(model, recipe, batches, clip_grad=1.0):
    """The plain eager step: the loss computed inline, zero_grad / backward / clip / step, a Python-number lr
    written into a fused AdamW (the loop's optimizer on CUDA; the same arithmetic as the graph-ready one, so
    near-zero gradients, which Adam normalizes to full-size updates, agree too)."""
    groups = param_groups(model, OPTIM["weight_decay"])
    for group in groups:
        group.pop("names")
    optimizer = torch.optim.AdamW(groups, lr=OPTIM["lr"], betas=tuple(OPTIM["betas"]), fused=True)
    mixup, losses = _mixup(recipe), []
    for step, batch in enumerate(batches):
        set_learning_rate(optimizer, learning_rate(step, *SCHEDULE))
        draw = 1000 + step
        torch.manual_seed(draw)
        video = batch["video"]
        if recipe in ("finetune", "supervised_postpretrain", "cma"):
            video, targets = mixup(video, batch["label"], torch.Generator().manual_seed(draw))
            loss = soft_cross_entropy(model(video), targets)
        elif recipe == "vl_pretrain":
            loss = model(video, tokenize(batch["caption"]))["loss"]
        else:
            loss = model(video, mask_ratio=0.75, seed=torch.full((), draw, dtype=torch.int64))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        losses.append(loss.detach().float())
    return torch.stack(losses)


def _graph_ready_losses(model, recipe, batches, wrap=lambda step: step, compiled=None, guard=contextlib.nullcontext):
    optimizer = build_optimizer(model, OPTIM, torch.device("cpu"), graph_ready=True)
    runner = compiled(model) if compiled else model
    train_step = wrap(TrainStep(runner, optimizer, recipe, parameters=model.parameters(), mask_ratio=0.75,
                                clip_grad=1.0, compiled=compiled is not None))
    mixup, losses = _mixup(recipe), []
    for step, batch in enumerate(batches):
        set_learning_rate(optimizer, learning_rate(step, *SCHEDULE))
        draw = 1000 + step
        torch.manual_seed(draw)
        inputs = step_inputs(batch, recipe, torch.device("cpu"), draw, mixup)
        with guard():
            losses.append(train_step(inputs))
    return torch.stack(losses), optimizer


def _assert_same_training(reference_model, model, reference_losses, losses, rtol=1e-4, atol=1e-5):
    """Within rounding: fused and single-tensor AdamW differ in the last bits, which Adam's normalized update
    lifts to about 1e-6 of a weight at lr 0.02 (a wrong lr or a repeated mask differs by 1e-3)."""
    torch.testing.assert_close(losses, reference_losses, rtol=rtol, atol=atol)
    for (name, expected), actual in zip(reference_model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_graph_ready_step_equals_the_eager_step(recipe):
    """Tensor learning rates on a fused AdamW, inputs prepared outside the step: the same losses and the same
    parameters after 3 steps (warmup, then the cosine) as the inline eager step, within rounding."""
    batches = _batches(recipe)
    reference_model = _model(recipe)
    model = copy.deepcopy(reference_model)
    reference_losses = _eager_reference_losses(reference_model, recipe, batches)
    losses, _ = _graph_ready_losses(model, recipe, batches)
    initial = _model(recipe).state_dict()
    assert any(not torch.equal(value, initial[name]) for name, value in model.state_dict().items())
    _assert_same_training(reference_model, model, reference_losses, losses)


class HostReadError(AssertionError):
    pass


class NoHostReads(TorchFunctionMode):
    """Fails on every read of a tensor's value into Python (each one a device synchronization on a GPU, and
    a value frozen into a CUDA graph): ``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()``, ``.to("cpu")`` of
    a tensor elsewhere, ``bool / float / int / index`` of a tensor. `CPU_ONLY` names the checks that run on
    CPU tensors alone (they guard the C++ CPU kernels), so a GPU step never reaches them."""

    READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__complex__",
             "__array__"}
    CPU_ONLY = {("masked_patch_embed/interface.py", "_check_video")}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        read = name in self.READS or (
            name == "to" and args and args[0].device.type != "cpu"
            and any(_is_cpu(a) for a in list(args[1:]) + [kwargs.get("device")]))
        if read and not self._cpu_only_check(args):
            raise HostReadError(f"host read inside the step: Tensor.{name}")
        return func(*args, **kwargs)

    def _cpu_only_check(self, args) -> bool:
        caller = sys._getframe(2)
        return (all(a.device.type == "cpu" for a in args if isinstance(a, torch.Tensor))
                and ("/".join(Path(caller.f_code.co_filename).parts[-2:]), caller.f_code.co_name) in self.CPU_ONLY)


def _is_cpu(value) -> bool:
    return (isinstance(value, str) and value.startswith("cpu")) or (
        isinstance(value, torch.device) and value.type == "cpu")


@pytest.mark.parametrize("read", [
    lambda t: t.item(), lambda t: t.tolist(), lambda t: bool(t), lambda t: float(t), lambda t: int(t),
    lambda t: t.cpu(), lambda t: t.numpy(), lambda t: range(t), lambda t: t.to("meta").to("cpu"),
])
def test_the_host_read_guard_catches_every_kind_of_read(read):
    tensor = torch.tensor(3)
    with pytest.raises(HostReadError), NoHostReads():
        read(tensor)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_the_step_reads_nothing_back_to_the_host(recipe):
    """Forward, backward, clipping and the optimizer step of every recipe run under the guard."""
    losses, _ = _graph_ready_losses(_model(recipe), recipe, _batches(recipe, steps=2), guard=NoHostReads)
    assert torch.isfinite(losses).all()


def test_compiled_step_equals_eager_and_keeps_its_losses():
    """train.compile: the model under torch.compile (aot_eager here: inductor's C++ compile takes minutes
    on 2 cores; inductor and reduce-overhead run in the GPU check); the kept losses are copies, not graph
    outputs."""
    recipe = "finetune"
    batches = _batches(recipe)
    reference_model = _model(recipe)
    model = copy.deepcopy(reference_model)
    reference_losses = _eager_reference_losses(reference_model, recipe, batches)
    torch._dynamo.reset()
    losses, _ = _graph_ready_losses(model, recipe, batches,
                                    compiled=lambda m: torch.compile(m, backend="aot_eager", fullgraph=True))
    _assert_same_training(reference_model, model, reference_losses, losses, rtol=1e-4, atol=1e-5)


def test_the_graphed_step_without_cuda_says_why_and_trains_eagerly():
    recipe = "mae_pretrain"
    batches = _batches(recipe, steps=5)
    reference_model = _model(recipe)
    model = copy.deepcopy(reference_model)
    reference, _ = _graph_ready_losses(reference_model, recipe, batches)
    lines = []
    losses, _ = _graph_ready_losses(model, recipe, batches, wrap=lambda step: GraphedTrainStep(step, log=lines.append))
    assert lines == ["cuda_graph: no CUDA device; the step runs eagerly"]
    _assert_same_training(reference_model, model, reference, losses, rtol=0, atol=0)


def test_capture_refuses_an_optimizer_that_would_train_wrong():
    model = _model("finetune")
    assert capture_blocker(build_optimizer(model, OPTIM, torch.device("cpu"))) == (
        "param group 0 has a Python-number lr (it would stay frozen in the graph)")
    graph_ready = build_optimizer(model, OPTIM, torch.device("cpu"), graph_ready=True)
    assert capture_blocker(graph_ready) == "param group 0 is not capturable"  # capturable only on CUDA


def test_tensor_learning_rates_are_filled_in_place():
    model = _model("finetune")
    optimizer = build_optimizer(model, OPTIM | {"layer_decay": 0.5}, torch.device("cpu"), graph_ready=True)
    tensors = [group["lr"] for group in optimizer.param_groups]
    set_learning_rate(optimizer, 0.1)
    assert [group["lr"] for group in optimizer.param_groups] == tensors  # the same objects: a graph reads them
    for group in optimizer.param_groups:
        assert group["lr"].item() == pytest.approx(0.1 * group["lr_scale"])
    assert len({group["lr_scale"] for group in optimizer.param_groups}) > 1


@pytest.mark.parametrize("written_graph_ready, resumed_graph_ready", [(False, True), (True, False)])
def test_a_checkpoint_resumes_in_the_other_mode(written_graph_ready, resumed_graph_ready):
    """A checkpoint keeps the writing run's lr type and flags; restore_mode gives the resuming run its own,
    and its next step is the step the writing optimizer would have taken."""
    from internvideo_fast.train.optim import restore_mode

    model = _model("finetune")
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    writer = build_optimizer(model, OPTIM, torch.device("cpu"), graph_ready=written_graph_ready)
    writer.step()
    state = copy.deepcopy(writer.state_dict())
    resumed_model = copy.deepcopy(model)
    for parameter, original in zip(resumed_model.parameters(), model.parameters()):
        parameter.grad = original.grad.clone()
    resumed = build_optimizer(resumed_model, OPTIM, torch.device("cpu"), graph_ready=resumed_graph_ready)
    resumed.load_state_dict(state)
    restore_mode(resumed, torch.device("cpu"), graph_ready=resumed_graph_ready)
    for group in resumed.param_groups:
        assert isinstance(group["lr"], torch.Tensor) == resumed_graph_ready and group["fused"] == resumed_graph_ready
    set_learning_rate(writer, 0.01)
    set_learning_rate(resumed, 0.01)
    writer.step()
    resumed.step()
    for (name, expected), actual in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_cuda_graph_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_cuda_graph("auto", "mae_pretrain", cuda) is True
    assert resolve_cuda_graph("auto", "finetune", cpu) is False
    assert resolve_cuda_graph("auto", "cma", cuda, compile_setting="reduce-overhead") is False
    assert resolve_cuda_graph(True, "vl_pretrain", cpu) is True
    assert resolve_cuda_graph(False, "mae_pretrain", cuda) is False
    with pytest.raises(ConfigError, match="train.cuda_graph"):
        resolve_cuda_graph("yes", "mae_pretrain", cuda)
    with pytest.raises(ConfigError, match="train.compile"):
        resolve_cuda_graph(True, "mae_pretrain", cuda, compile_setting=True)
    # fp16's GradScaler decides on the host whether a step runs: never captured
    assert resolve_cuda_graph("auto", "mae_pretrain", cuda, loss_scaling=True) is False
    with pytest.raises(ConfigError, match="train.precision=fp16"):
        resolve_cuda_graph(True, "mae_pretrain", cuda, loss_scaling=True)


def test_the_cli_flag_sets_the_config_key(capsys):
    import yaml

    from internvideo_fast.train import __main__ as cli

    seen = []
    for flags in (["--no-cuda-graph"], ["--cuda-graph"], []):
        assert cli.main([*flags, "--print-config"]) == 0
        seen.append(yaml.safe_load(capsys.readouterr().out)["train"]["cuda_graph"])
    assert seen == [False, True, "auto"]


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    from internvideo_fast.data import make_sample_dataset

    root = tmp_path_factory.mktemp("clips")
    make_sample_dataset(root, num_classes=2, clips_per_class=4, val_per_class=2, num_frames=12, size=(32, 32))
    return root


def _run_config(sample_data, output_dir, **train):
    config = {
        "recipe": "mae_pretrain", "model": "videomae_pretrain_vit_micro_patch16",
        "model_args": {"img_size": 32, "num_frames": 4},
        "data": {"train_list": str(sample_data / "train.txt"), "root": str(sample_data), "num_frames": 4,
                 "stride": 2, "img_size": 32, "batch_size": 2, "num_workers": 0},
        "optim": {"base_lr": 0.05, "warmup_steps": 2, "clip_grad": 1.0},
        "train": {"epochs": 2, "log_every": 1, "output_dir": str(output_dir), "resume": "auto",
                  "tensorboard": False, "cuda_graph": True} | train,
    }
    path = output_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_resumed_run_of_the_graph_mode_step_continues_exactly(sample_data, tmp_path, capsys):
    """train.cuda_graph: true (on CPU: the graph-ready step, eagerly) killed after step 3 and resumed gives
    the uninterrupted run's losses bit for bit: the tensor learning rates come back from the checkpoint."""
    from internvideo_fast.train.config import load_config
    from internvideo_fast.train.loop import train

    whole = train(load_config(_run_config(sample_data, tmp_path / "whole")), device="cpu")["losses"]
    assert "cuda_graph: no CUDA device; the step runs eagerly" in capsys.readouterr().out
    first = train(load_config(_run_config(sample_data, tmp_path / "split", max_steps=3)), device="cpu")["losses"]
    rest = train(load_config(_run_config(sample_data, tmp_path / "split")), device="cpu")["losses"]
    assert len(whole) == 8 and all(math.isfinite(loss) for loss in whole)
    assert first == whole[:3] and rest == whole[3:]
    checkpoint = torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=True)
    assert all(isinstance(group["lr"], torch.Tensor) for group in checkpoint["optimizer"]["param_groups"])


# GPU: the captured step itself.


def _cuda_steps(recipe, steps, graphed, distributed=False):
    device = torch.device("cuda", torch.cuda.current_device())
    model = _model(recipe).to(device)
    optimizer = build_optimizer(model, OPTIM, device, graph_ready=True)
    runner = model
    if distributed:  # built on a side stream, as ivf-train builds it for a captured step
        from internvideo_fast.train.distributed import DistContext
        from internvideo_fast.train.loop import _wrap_ddp

        runner = _wrap_ddp(model, DistContext(0, 1, 0, device), graphed=True)
    train_step = TrainStep(runner, optimizer, recipe, parameters=model.parameters(), mask_ratio=0.75, clip_grad=1.0)
    if graphed:
        train_step = GraphedTrainStep(train_step, warmup=2, distributed=distributed, log=pytest.fail)
    mixup, losses, masks = _mixup(recipe), [], []
    schedule = (steps, OPTIM["lr"], OPTIM["min_lr"], 2)
    for step, batch in enumerate(_batches(recipe, steps)):
        set_learning_rate(optimizer, learning_rate(step, *schedule))
        torch.manual_seed(1000 + step)
        losses.append(train_step(step_inputs(batch, recipe, device, 1000 + step, mixup)))
    return torch.stack(losses).cpu(), model, train_step


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["mae_pretrain", "finetune", "vl_pretrain"])
def test_graph_replay_equals_the_eager_step(recipe):
    """2 eager warm-up steps, capture, 4 replays: masks (seeds) and the LR change every step."""
    eager_losses, eager_model, _ = _cuda_steps(recipe, 7, graphed=False)
    losses, model, graphed = _cuda_steps(recipe, 7, graphed=True)
    assert graphed.replaying
    assert len(set(losses.tolist())) == len(losses)  # every step saw its own batch and mask
    _assert_same_training(eager_model, model, eager_losses, losses, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_graph_replay_under_ddp_with_one_process(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        eager_losses, eager_model, _ = _cuda_steps("mae_pretrain", 14, graphed=False)
        losses, model, graphed = _cuda_steps("mae_pretrain", 14, graphed=True, distributed=True)
        assert graphed.replaying and graphed.warmup == 11
        _assert_same_training(eager_model, model, eager_losses, losses, rtol=1e-4, atol=1e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
def test_a_replayed_step_allocates_nothing():
    _, _, graphed = _cuda_steps("mae_pretrain", 4, graphed=True)
    assert graphed.replaying
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    graphed.graph.replay()
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
