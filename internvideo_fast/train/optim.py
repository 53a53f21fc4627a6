"""Optimizer parameter groups (no weight decay on biases, norms and position tables; layer-wise lr decay
for fine-tuning, as BEiT/VideoMAE) and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token", "temporal_cls_token", "balance", "logit_scale")


def layer_id(name: str, depth: int) -> int:
    """VideoMAE's layer ids: the embedding is 0, block i is i + 1, everything after the blocks depth + 1."""
    name = name.removeprefix("module.").removeprefix("encoder.")
    if name.startswith(("patch_embed", "pos_embed", "cls_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Groups with ``lr_scale`` (layer decay) and weight decay only on matrices; frozen parameters are left
    out, so the optimizer keeps no state for them."""
    depth = len(getattr(getattr(model, "module", model), "blocks", []))
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decay = parameter.ndim > 1 and not any(key in name for key in NO_DECAY_NAMES)
        layer = layer_id(name, depth) if layer_decay is not None else 0
        scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale, "names": [],
        })
        group["params"].append(parameter)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, optim: dict, device: torch.device, graph_ready: bool = False) -> torch.optim.AdamW:
    """AdamW, fused on CUDA. `graph_ready`: fused on every device, a device-tensor lr per group and (on CUDA)
    ``capturable``, so a captured step follows the schedule written into those tensors."""
    groups = param_groups(model, optim["weight_decay"], optim.get("layer_decay"))
    for group in groups:
        group.pop("names")
    if not graph_ready:
        return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), fused=device.type == "cuda")
    for group in groups:
        group["lr"] = torch.tensor(optim["lr"] * group["lr_scale"], dtype=torch.float32, device=device)
    return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), fused=True,
                             capturable=device.type == "cuda")


def restore_mode(optimizer: torch.optim.Optimizer, device: torch.device, graph_ready: bool) -> None:
    """After ``load_state_dict``: the groups carry the lr type and the fused / capturable flags of the run
    that wrote the checkpoint (a Python number or a CPU tensor lr); set them to what `build_optimizer` gives
    this run, and each parameter's step counter to the device those flags need. Before any capture."""
    fused = graph_ready or device.type == "cuda"
    capturable = graph_ready and device.type == "cuda"
    for group in optimizer.param_groups:
        value = float(group["lr"])
        group["lr"] = torch.tensor(value, dtype=torch.float32, device=device) if graph_ready else value
        group["fused"], group["capturable"] = fused, capturable
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if "step" in state:
                where = parameter.device if fused or capturable else torch.device("cpu")
                state["step"] = state["step"].to(where, torch.float32)


def learning_rate(step: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """Linear warmup from 0, then half-cosine from `lr` to `min_lr` at `total_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """``lr * lr_scale`` into every group; a tensor lr (graph-ready optimizers) is filled in place, so a
    captured optimizer step reads this step's value."""
    for group in optimizer.param_groups:
        value = lr * group.get("lr_scale", 1.0)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
