"""The optimizer's parameter groups and the learning rate each group gets as training progresses."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ferkit.config import TrainConfig
from ferkit.models import backbone_and_head
from ferkit.training.schedule import Plateau, lr_factor


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Param groups: backbone/head (fine-tuning LR scales) x decay/no-decay (no decay on norms, biases)."""
    backbone, head = backbone_and_head(model)
    groups = []
    for is_backbone, params in ((True, backbone), (False, head)):
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "weight_decay": wd, "backbone": is_backbone})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(groups, lr=cfg.lr)


def set_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, plateau: Plateau, progress: float) -> float:
    """Set every group's LR at `progress` epochs (fractional): the schedule's LR times the plateau drops,
    the backbone's scaled while fine-tuning (0 while frozen); returns the head's LR."""
    base = (
        cfg.lr
        * plateau.factor
        * lr_factor(
            cfg.scheduler,
            progress,
            cfg.epochs,
            cfg.warmup_epochs,
            cfg.step_size,
            cfg.gamma,
            cfg.min_lr / cfg.lr if cfg.lr else 0.0,
            cfg.restart_cycles,
        )
    )
    frozen = progress < cfg.freeze_epochs
    backbone_scale = 0.0 if frozen else (cfg.backbone_lr_scale if cfg.pretrained else 1.0)
    for group in optimizer.param_groups:
        group["lr"] = base * (backbone_scale if group["backbone"] else 1.0)
    return base


def lr_setter(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, plateau: Plateau
) -> Callable[[float], float]:
    """`set_lr` as a function of fractional epoch progress alone."""
    return partial(set_lr, optimizer, cfg, plateau)
