"""One training step as a function of device tensors alone, and its whole-step CUDA graph.

`TrainStep` runs forward + backward + gradient clipping + optimizer step for one recipe. Everything that
changes from step to step reaches it as a device tensor: the batch (``video``, and ``targets`` or ``tokens``),
the tube-mask seed (``seed``, int64), the learning rate (tensor ``lr`` in every parameter group, written by
`optim.set_learning_rate`); dropout and drop path draw from the global generator, seeded before the step.
It reads nothing back to the host, so the same Python runs eagerly, under ``torch.compile`` and inside a
CUDA graph.

`GraphedTrainStep` runs the first steps eagerly (the fused ops' run-time tuners settle; DDP needs at least
11 iterations before capture), then captures one step on a side stream and, from then on, copies each batch
into the captured input buffers and replays. The loss it returns is a copy, so a kept loss never aliases the
graph's output. If capture fails, it prints why in one line and continues eagerly.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import torch

from internvideo_fast.errors import ConfigError
from internvideo_fast.train.mixup import soft_cross_entropy

CLASSIFICATION_RECIPES = ("finetune", "supervised_postpretrain", "cma")
# Recipes whose step sees the same shapes every step (fixed clip size, fixed mask count, fixed caption
# length): the whole step can be captured once and replayed.
STATIC_SHAPE_RECIPES = ("mae_pretrain", "cma", "vl_pretrain", "supervised_postpretrain", "finetune")
DDP_WARMUP_STEPS = 11  # PyTorch's CUDA-graph notes: DDP needs this many eager iterations before capture
WARMUP_STEPS = 3  # the run-time tuners time their candidates on the first calls of each shape


def resolve_cuda_graph(setting, recipe: str, device: torch.device, compile_setting=False,
                       loss_scaling: bool = False) -> bool:
    """``train.cuda_graph``: ``auto`` is on for CUDA devices with a static-shape recipe, no
    ``train.compile`` and no fp16 loss scaling (its GradScaler reads the host every step); ``true`` asks
    for it (on CPU the graph-ready step then runs eagerly); ``false`` keeps the eager step."""
    if setting not in (True, False, "auto"):
        raise ConfigError(f"train.cuda_graph must be true, false or auto, got {setting!r}")
    if setting == "auto":
        return (device.type == "cuda" and recipe in STATIC_SHAPE_RECIPES and not compile_setting
                and not loss_scaling)
    if setting and loss_scaling:
        raise ConfigError("train.cuda_graph: true cannot replay train.precision=fp16 (its loss scaler skips "
                          "steps on the host)", hint="use train.precision=bf16, or train.cuda_graph=false")
    if setting and compile_setting:
        raise ConfigError("train.cuda_graph: true and train.compile cannot be combined",
                          hint="compile with mode reduce-overhead graphs the compiled model; set one of the two")
    if setting and recipe not in STATIC_SHAPE_RECIPES:
        raise ConfigError(f"train.cuda_graph: recipe {recipe!r} has no static shapes to capture")
    return bool(setting)


def step_inputs(batch: Mapping, recipe: str, device: torch.device, draw: int, mixup=None) -> dict:
    """The step's device tensors for one loader batch: ``video``; ``targets`` (soft, after Mixup / CutMix
    on the device, from a host generator seeded with `draw`) for classification; ``tokens`` for
    video-text; ``seed`` (the tube-mask seed) for MAE pretraining."""
    video = batch["video"].to(device, non_blocking=True)
    if recipe in CLASSIFICATION_RECIPES:
        labels = batch["label"].to(device, non_blocking=True)
        video, targets = mixup(video, labels, torch.Generator().manual_seed(draw))
        return {"video": video, "targets": targets}
    if recipe == "vl_pretrain":  # the loaders tokenize the captions (data.max_text_len)
        return {"video": video, "tokens": batch["tokens"].to(device, non_blocking=True)}
    return {"video": video, "seed": torch.full((), draw, dtype=torch.int64, device=device)}


class TrainStep:
    """``loss = step(inputs)``: zero_grad, forward under `autocast`, backward, clip to `clip_grad` (if set),
    ``optimizer.step()``; returns the loss as a detached fp32 copy. `model` is what runs the forward (the
    DDP or compiled wrapper); `parameters` are the ones clipped."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, recipe: str, *,
                 parameters, mask_ratio: float = 0.9, clip_grad: float | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None, compiled: bool = False):
        if recipe not in STATIC_SHAPE_RECIPES:
            raise ConfigError(f"recipe must be one of {STATIC_SHAPE_RECIPES}, got {recipe!r}")
        self.model, self.optimizer, self.recipe = model, optimizer, recipe
        self.parameters = [p for p in parameters if p.requires_grad]
        self.mask_ratio, self.clip_grad, self.autocast, self.compiled = mask_ratio, clip_grad, autocast, compiled
        # fp16's loss scaling (an enabled GradScaler); it reads the host, so such a step is never captured
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None

    def loss(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.recipe in CLASSIFICATION_RECIPES:
            return soft_cross_entropy(self.model(inputs["video"]), inputs["targets"])
        if self.recipe == "vl_pretrain":
            return self.model(inputs["video"], inputs["tokens"])["loss"]
        return self.model(inputs["video"], mask_ratio=self.mask_ratio, seed=inputs["seed"])["loss"]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.compiled:
            # reduce-overhead's CUDA graph trees: this call starts a new step, so the previous step's graph
            # outputs may be overwritten (nothing of them is kept: the loss below is a copy).
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss(inputs)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients
                torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad)
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
            return loss.detach().float().clone()
        loss.backward()
        if self.clip_grad:
            # error_if_nonfinite stays False: checking it would read the norm back to the host.
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad)
        self.optimizer.step()
        return loss.detach().float().clone()


def capture_blocker(optimizer: torch.optim.Optimizer) -> str | None:
    """Why `optimizer` cannot be replayed from a graph without training wrong, or None: a Python-number
    learning rate would stay frozen at its captured value, and ``capturable`` must be set."""
    for index, group in enumerate(optimizer.param_groups):
        if not isinstance(group["lr"], torch.Tensor):
            return f"param group {index} has a Python-number lr (it would stay frozen in the graph)"
        if not group.get("capturable", False):
            return f"param group {index} is not capturable"
    return None


class GraphedTrainStep:
    """`step` eagerly for `warmup` calls (at least 11 under DDP), then one CUDA graph of it, replayed with
    each call's inputs copied into its static buffers. Same inputs and return value as `TrainStep`."""

    def __init__(self, step: TrainStep, warmup: int = WARMUP_STEPS, distributed: bool = False,
                 log: Callable[[str], None] = print):
        self.step = step
        self.warmup = max(warmup, DDP_WARMUP_STEPS if distributed else 0)
        self.log = log
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: dict[str, torch.Tensor] = {}
        self.static_loss: torch.Tensor | None = None
        self.eager_reason: str | None = None
        self.side_stream = torch.cuda.Stream() if torch.cuda.is_available() else None

    @property
    def replaying(self) -> bool:
        return self.graph is not None

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        if self.graph is None and self.eager_reason is None and self.calls > self.warmup:
            self._try_capture(inputs)
        if self.graph is None:
            return self._eager(inputs)
        for name, tensor in inputs.items():
            self.static_inputs[name].copy_(tensor, non_blocking=True)
        self.graph.replay()
        return self.static_loss.clone()

    def _eager(self, inputs) -> torch.Tensor:
        if self.side_stream is None or self.eager_reason is not None:
            return self.step(inputs)
        # Warm-up on a side stream, as the capture will run (DDP's and autograd's stream bookkeeping).
        current = torch.cuda.current_stream()
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            loss = self.step(inputs)
        current.wait_stream(self.side_stream)
        return loss

    def _try_capture(self, inputs) -> None:
        reason = self._why_not(inputs)
        if reason is None:
            try:
                self._capture(inputs)
            except Exception as error:  # any capture failure: train on, eagerly, and say why
                self.graph = None
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                reason = f"capture failed: {type(error).__name__}: {first_line}"
        if reason is not None:
            self.eager_reason = reason
            self.log(f"cuda_graph: {reason}; the step runs eagerly")

    def _why_not(self, inputs) -> str | None:
        if not torch.cuda.is_available() or any(t.device.type != "cuda" for t in inputs.values()):
            return "no CUDA device"
        return capture_blocker(self.step.optimizer)

    def _capture(self, inputs) -> None:
        self.static_inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        # Gradients are allocated inside the graph (from its memory pool) and overwritten by every replay.
        self.step.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the data loader's pinning thread may call CUDA while this thread captures.
        with torch.cuda.graph(graph, stream=self.side_stream, capture_error_mode="thread_local"):
            self.static_loss = self.step(self.static_inputs)
        self.graph = graph
