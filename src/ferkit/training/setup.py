"""Setting a run up: its folder, the model's transforms, the tracker; `Run`, what stays fixed through it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferkit.config import TrainConfig
from ferkit.data.transforms import BatchTransform
from ferkit.errors import FerkitError
from ferkit.tracking import Tracker
from ferkit.training.splits import Splits
from ferkit.utils.paths import timestamped_run_dir


@dataclass(frozen=True)
class Run:
    """What stays fixed through a run: options, folder, processes, device and precision, data, transforms."""

    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    data: Splits
    train_tf: BatchTransform
    eval_tf: BatchTransform

    @property
    def last(self) -> Path:
        return last_checkpoint(self.out)

    @property
    def best(self) -> Path:
        """The checkpoint of the best epoch on PublicTest (its moving average, when --ema is on)."""
        return self.out / "best.pth"

    def describe(self) -> dict[str, Any]:
        """The options with the facts of this run, as the tracker records them."""
        return self.cfg.to_dict() | {
            "output_dir": str(self.out),
            "world_size": self.world,
            "autocast": str(self.dtype),
            "memory_format": "channels_last" if self.channels_last else "contiguous",
            "device": str(self.device),
            "train_images": len(self.data.train),
            "val_images": len(self.data.val),
        }


def last_checkpoint(out: Path) -> Path:
    """The resumable checkpoint of a run's latest epoch."""
    return out / "last.pth"


def run_folder(cfg: TrainConfig, rank: int, world: int) -> Path:
    """The run folder: --output_dir or a new timestamped one; a FerkitError when --resume finds no
    last.pth there, or a new run would overwrite one."""
    out = Path(cfg.output_dir) if cfg.output_dir else timestamped_run_dir(cfg.model)
    if world > 1 and not cfg.output_dir:
        raise FerkitError("multi-process training needs --output_dir (every process must agree on it)")
    last = last_checkpoint(out)
    if cfg.resume and not last.exists():
        raise FerkitError(f"--resume: no checkpoint at {last}")
    if not cfg.resume and rank == 0 and last.exists():
        raise FerkitError(
            f"{out} already holds a run (last.pth): pass --resume to continue it, or another --output_dir"
        )
    return out


def transforms(
    cfg: TrainConfig, model: nn.Module, channels_last: bool
) -> tuple[BatchTransform, BatchTransform]:
    """The training (augmented) and evaluation transforms at the model's input size (with --crop_size, on
    crops of that side: random ones in training, centre ones for the evaluation); a FerkitError when
    --progressive_resize does not fit that size."""
    mcfg = model.default_cfg
    size, mean, std, crop = mcfg["input_size"], mcfg["mean"], mcfg["std"], cfg.crop_size
    train_tf = BatchTransform(size, mean, std, cfg.augment, channels_last, crop_size=crop)
    eval_tf = BatchTransform(size, mean, std, "none", channels_last, crop_size=crop)
    if cfg.progressive_resize and not 16 <= cfg.progressive_resize <= min(train_tf.size):
        raise FerkitError(
            f"--progressive_resize {cfg.progressive_resize}: expected 16 to {min(train_tf.size)} "
            f"({cfg.model}'s input side), or 0 for off"
        )
    return train_tf, eval_tf


def open_tracker(run: Run, resume_epoch: int | None) -> Tracker:
    """The run's records (metrics.csv, summary, W&B), kept by rank 0, which also writes config.yaml;
    `resume_epoch`: the epoch a resumed run continues after."""
    cfg = run.cfg
    if run.rank == 0:
        run.out.mkdir(parents=True, exist_ok=True)
        cfg.save(run.out / "config.yaml")
    return Tracker(
        run.out,
        run.describe(),
        mode=cfg.wandb,
        project=cfg.wandb_project,
        tags=[cfg.model, cfg.labels, cfg.experiment_type, *cfg.tags],
        run_name=cfg.run_name or run.out.name,
        resume_epoch=resume_epoch,
        enabled=run.rank == 0,
    )
