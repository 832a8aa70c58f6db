"""A run's state from epoch to epoch, and the one place the checkpoint layout is written and read back."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ferkit.classes import CLASS_NAMES
from ferkit.config import TrainConfig
from ferkit.errors import FerkitError
from ferkit.models import create_model
from ferkit.runtime.checkpoint import atomic_save, model_payload
from ferkit.training.clock import Clock
from ferkit.training.optim import build_optimizer, set_lr
from ferkit.training.schedule import Plateau
from ferkit.utils.distributed import unwrap


@dataclass
class TrainState:
    """The model (DistributedDataParallel-wrapped under torchrun) and everything else that changes as it
    trains: optimizer, moving average of the weights (validated and saved as best.pth when on), plateau
    drops, fp16 loss scaler, the last finished epoch, the best PublicTest accuracy so far and its epoch,
    epochs since it improved, and the wall time spent."""

    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    plateau: Plateau
    clock: Clock
    ema: AveragedModel | None = None
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    stale: int = 0

    @classmethod
    def create(
        cls, cfg: TrainConfig, device: torch.device, dtype: torch.dtype | None, channels_last: bool
    ) -> TrainState:
        """A fresh run: `cfg.model` initialised from `cfg.seed` (or pretrained weights) on `device`."""
        torch.manual_seed(cfg.seed)
        arch_kwargs = {k: v for k, v in (("width", cfg.width), ("img_size", cfg.img_size)) if v}
        pretrained = True if cfg.pretrained == "imagenet" else (cfg.pretrained or False)
        model = create_model(cfg.model, drop_rate=cfg.drop_rate, pretrained=pretrained, **arch_kwargs)
        memory = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(device).to(memory_format=memory)
        ema = None
        if cfg.ema:
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        return cls(
            cfg=cfg,
            model=model,
            optimizer=build_optimizer(model, cfg),
            plateau=Plateau(cfg.plateau_patience, cfg.gamma),
            clock=Clock(cfg.time_budget * 60, cfg.epochs),
            ema=ema,
            scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        )

    def distribute(self, device: torch.device, world: int) -> None:
        """Wrap the model for DistributedDataParallel training when there is more than one process."""
        if world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )

    @property
    def evaluated(self) -> nn.Module:
        """What is validated and saved as best.pth: the moving average if there is one, else the model."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    def set_lr(self, epochs_done: float) -> float:
        """Set the LRs at `epochs_done` (fractional), or further on where the time budget is."""
        return set_lr(self.optimizer, self.cfg, self.plateau, self.clock.progress(epochs_done))

    def record(self, epoch: int, val_acc: float) -> bool:
        """Close `epoch` with its PublicTest accuracy; returns whether it is the best so far."""
        self.epoch = epoch
        if self.cfg.scheduler == "plateau":
            self.plateau.step(val_acc)
        improved = val_acc > self.best_acc
        if improved:
            self.best_acc, self.best_epoch, self.stale = val_acc, epoch, 0
        else:
            self.stale += 1
        return improved

    def save(self, path: Path, resumable: bool) -> None:
        """A checkpoint of the run: the evaluated weights alone (best.pth), or with everything `restore`
        needs to continue the run (last.pth)."""
        weights = self.evaluated if not resumable else unwrap(self.model)
        ckpt = model_payload(weights, CLASS_NAMES) | {
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "elapsed": self.clock.spent(),
        }
        if resumable:
            ckpt |= {
                "optimizer": self.optimizer.state_dict(),
                "plateau": asdict(self.plateau),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
            }
        atomic_save(ckpt, path)

    def restore(self, ckpt: dict[str, Any], source: Path) -> None:
        """Continue the run saved (resumable) in `ckpt`, read from `source`; a FerkitError when it was
        another architecture or trained with(out) --ema unlike this one."""
        if ckpt["arch"] != self.cfg.model:
            raise FerkitError(f"--resume: {source} is a {ckpt['arch']}, not a {self.cfg.model}")
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if (ckpt.get("ema") is None) != (self.ema is None):
            trained = "without" if self.ema is not None else "with"
            raise FerkitError(f"--resume: {source} was trained {trained} --ema; resume with the same --ema")
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        for k, v in ckpt["plateau"].items():
            setattr(self.plateau, k, v)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best_acc, self.best_epoch = ckpt["epoch"], ckpt["best_acc"], ckpt["best_epoch"]
        self.stale = ckpt.get("stale", 0)  # absent in early checkpoints, as is elapsed
        self.clock.before = ckpt.get("elapsed", 0.0)
