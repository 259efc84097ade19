"""Optimizer and LR-scheduler surgery for stage changes: add param groups, set a stage's peak lr, restore groups."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.optim import Optimizer


def schedulers_of(trainer: Trainer, optimizer: Optimizer) -> Iterator[Any]:
    """The LR schedulers driving `optimizer`, nested ones (SequentialLR, ChainedScheduler) included."""
    todo = [cfg.scheduler for cfg in trainer.lr_scheduler_configs]
    while todo:
        sched = todo.pop()
        todo.extend(getattr(sched, "_schedulers", []))
        if getattr(sched, "optimizer", None) is optimizer:
            yield sched


def base_lr(group: dict[str, Any]) -> float:
    """The group's peak lr: schedulers keep it as `initial_lr`; without one it is `lr`."""
    return float(group.get("initial_lr", group["lr"]))


def sync_schedulers(trainer: Trainer, optimizer: Optimizer) -> None:
    """Give schedulers one entry per param group (torch schedulers silently skip groups added later)."""
    groups = optimizer.param_groups
    for sched in schedulers_of(trainer, optimizer):
        for name in ("base_lrs", "_last_lr"):
            values = getattr(sched, name, None)
            if isinstance(values, list):
                values.extend(base_lr(g) if name == "base_lrs" else g["lr"] for g in groups[len(values) :])
        lambdas = getattr(sched, "lr_lambdas", None)
        if isinstance(lambdas, list) and lambdas:
            lambdas.extend(lambdas[0] for _ in range(len(groups) - len(lambdas)))


def add_param_group(trainer: Trainer, optimizer: Optimizer, params: Sequence[torch.nn.Parameter], peak_lr: float) -> bool:
    """Add the params no group holds yet as one new group at the current point of the schedule.

    The new group copies group 0's scheduler keys (e.g. `initial_lr`) and its lr is `peak_lr` times
    group 0's current schedule factor (`lr / initial_lr`), so warm-up and decay carry on for it too.
    """
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    new = [p for p in params if id(p) not in held]
    if not new:
        return False
    first = optimizer.param_groups[0]
    factor = first["lr"] / base_lr(first) if base_lr(first) else 1.0
    group: dict[str, Any] = {"params": new, "lr": peak_lr * factor}
    if "initial_lr" in first:
        group["initial_lr"] = peak_lr
    for key, value in first.items():
        if key not in optimizer.defaults and key not in group:
            group[key] = value  # scheduler-owned keys (max_lr, ...); optimizer keys come from defaults
    optimizer.add_param_group(group)
    sync_schedulers(trainer, optimizer)
    return True


def set_peak_lr(trainer: Trainer, optimizer: Optimizer, index: int, peak_lr: float) -> None:
    """Set group `index`'s peak lr, keeping its current point on the schedule (lr scales by new/old peak)."""
    group = optimizer.param_groups[index]
    old = base_lr(group)
    if old == peak_lr:
        return
    group["lr"] = group["lr"] * peak_lr / old if old else peak_lr
    if "initial_lr" in group:
        group["initial_lr"] = peak_lr
    for sched in schedulers_of(trainer, optimizer):
        values = getattr(sched, "base_lrs", None)
        if isinstance(values, list) and index < len(values):
            values[index] = peak_lr


def describe_groups(module: LightningModule, optimizer: Optimizer) -> list[dict[str, Any]]:
    """The optimizer's groups with parameter names instead of tensors (for the callback's state)."""
    names = {id(p): n for n, p in module.named_parameters()}
    out = []
    for g in optimizer.param_groups:
        meta = {k: v for k, v in g.items() if k != "params"}
        meta["params"] = [names[id(p)] for p in g["params"]]
        out.append(meta)
    return out


def restore_groups(trainer: Trainer, module: LightningModule, optimizer: Optimizer, groups: list[dict[str, Any]]) -> None:
    """Rebuild the optimizer's groups from `describe_groups` output (before Lightning loads its state)."""
    params = dict(module.named_parameters())
    missing = sorted({n for g in groups for n in g["params"]} - set(params))
    if missing:
        raise RuntimeError(f"MultiStageCurriculum: checkpointed optimizer groups name parameters the model lacks: {missing[:5]}")
    optimizer.param_groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [params[n] for n in g["params"]]} for g in groups]
    sync_schedulers(trainer, optimizer)
