"""The training loop, top to bottom: fit (set-up, resume, epochs, final report), one epoch, validation."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ferkit.config import TrainConfig
from ferkit.data.transforms import BatchTransform, mix_batch
from ferkit.errors import FerkitError
from ferkit.runtime.checkpoint import load_checkpoint
from ferkit.runtime.predictor import batches, predict_probs
from ferkit.tracking import Tracker
from ferkit.training.report import copy_best, epoch_line, final_report, start_line
from ferkit.training.schedule import progressive_size
from ferkit.training.setup import Run, open_tracker, run_folder, transforms
from ferkit.training.splits import load_splits
from ferkit.training.state import TrainState
from ferkit.utils.device import autocast, autocast_dtype, channels_last_pays_off, select_device
from ferkit.utils.distributed import init_distributed, unwrap


class Diverged(FerkitError):
    """The loss became NaN or infinite."""


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg.model` on Training, choose the best epoch on PublicTest; returns the summary."""
    rank, world = init_distributed(cfg.device)
    device = select_device(cfg.device)
    dtype = autocast_dtype(cfg.precision, device)
    cfg.validate(world)
    out = run_folder(cfg, rank, world)
    data = load_splits(cfg, device, rank, world)
    channels_last = cfg.channels_last and channels_last_pays_off(dtype, device)
    state = TrainState.create(cfg, device, dtype, channels_last)
    train_tf, eval_tf = transforms(cfg, state.model, channels_last)
    run = Run(cfg, out, rank, world, device, dtype, channels_last, data, train_tf, eval_tf)
    if cfg.resume:
        state.restore(load_checkpoint(run.last), run.last)
    state.distribute(device, world)
    tracker = open_tracker(run, resume_epoch=state.epoch if cfg.resume else None)
    if rank == 0:
        print(start_line(run))

    state.clock.start()
    try:
        train_epochs(run, state, tracker)
    except Diverged as e:
        tracker.finish(exit_code=1)
        raise FerkitError(f"{e}; the last good checkpoint is kept in {run.last}; try a lower --lr") from None

    summary = {
        "best_val_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "output_dir": str(out),
    }
    if rank == 0:
        summary |= final_report(run, tracker)
        tracker.log_summary(summary)
    tracker.finish()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def train_epochs(run: Run, state: TrainState, tracker: Tracker) -> None:
    """The epochs after `state.epoch` up to --epochs, until the time budget is spent or early stopping;
    rank 0 logs each and saves last.pth (and best.pth when it is the best so far)."""
    cfg = run.cfg
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.clock.out_of_time():
            return
        row, size = run_epoch(run, state, epoch)
        improved = state.record(epoch, row["val_acc"])
        if run.rank == 0:
            tracker.log_epoch(row)
            if improved:
                state.save(run.best, resumable=False)
                copy_best(run.best, cfg.save_best_to)
            state.save(run.last, resumable=True)
            print(epoch_line(run, row, size, improved), flush=True)
        if cfg.early_stopping and state.stale >= cfg.early_stopping:
            if run.rank == 0:
                print(f"early stopping: no PublicTest improvement in {state.stale} epochs")
            return


def run_epoch(run: Run, state: TrainState, epoch: int) -> tuple[dict[str, Any], tuple[int, int]]:
    """Train one epoch and validate; returns its row of metrics.csv and the image size it trained at."""
    cfg, data = run.cfg, run.data
    # each epoch's randomness is fixed by (seed, epoch): a resumed run repeats the uninterrupted one
    torch.manual_seed(cfg.seed * 1000 + epoch * 10 + run.rank)
    t0 = time.perf_counter()
    size = train_size(cfg, run.train_tf.size, state.clock.progress(epoch - 1))
    tr = train_one_epoch(
        state.model,
        data.train_images,
        data.train_targets,
        data.train_labels,
        run.train_tf.at_size(size, crop=cfg.progressive_mode == "crop"),
        state.optimizer,
        state.set_lr,
        cfg,
        epoch,
        data.loss_weight,
        run.dtype,
        state.scaler,
        run.rank,
        run.world,
        state.clock.deadline,
        state.ema,
    )
    va = evaluate(
        state.evaluated,
        data.val_images,
        data.val_labels,
        run.eval_tf,
        cfg.eval_batch_size,
        run.dtype,
        cfg.limit_batches,
    )
    row = {
        "epoch": epoch,
        "train_loss": tr["loss"],
        "train_acc": tr["acc"],
        "val_loss": va["loss"],
        "val_acc": va["acc"],
        "lr": state.optimizer.param_groups[-1]["lr"],
        "time": time.perf_counter() - t0,
        "images_per_s": tr["images_per_s"],
        "train_size": size[0],
    }
    return row, size


def train_size(cfg: TrainConfig, full: tuple[int, int], progress: float) -> tuple[int, int]:
    """The training image size at `progress` epochs: the model's `full` size, or smaller early on under
    progressive resizing."""
    if not cfg.progressive_resize:
        return full
    fraction = progress / cfg.epochs
    h, w = (progressive_size(fraction, cfg.progressive_resize, side, cfg.progressive_until) for side in full)
    return h, w


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
    optimizer: torch.optim.Optimizer,
    set_lr: Any,
    cfg: TrainConfig,
    epoch: int,
    loss_weight: torch.Tensor | None,
    dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    rank: int = 0,
    world: int = 1,
    deadline: float | None = None,
    ema: AveragedModel | None = None,
) -> dict[str, float]:
    """One pass over the training images (cut short at `deadline`, a perf_counter time), updating `ema` after
    each step; returns mean loss, accuracy, images/s."""
    model.train()
    device = images.device
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    steps = len(images) // world // cfg.batch_size
    if cfg.limit_batches:
        steps = min(steps, cfg.limit_batches)
    total_loss = correct = seen = 0.0
    start = time.perf_counter()
    bar = progress_bar(cfg, steps, epoch, rank)
    for step, idx in enumerate(batches(len(images), cfg.batch_size, gen, rank, world, cfg.limit_batches)):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        set_lr(epoch - 1 + step / steps)
        idx = idx.to(device)
        x = transform(images[idx])
        y, y_hard = targets[idx], labels[idx]
        x, y = mix_batch(x, y, cfg.mixup, cfg.cutmix)
        with autocast(device, dtype):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, weight=loss_weight, label_smoothing=cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise Diverged(f"loss became {loss.item()} at epoch {epoch}, batch {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        n = len(idx)
        total_loss += loss.item() * n
        correct += (logits.argmax(1) == y_hard).sum().item()
        seen += n
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", img_s=f"{seen * world / elapsed:.0f}", refresh=False)
        bar.update()
    bar.close()
    stats = torch.tensor([total_loss, correct, seen], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(stats)
    elapsed = time.perf_counter() - start
    stats[2].clamp_(min=1)  # a run whose time budget ran out before the first batch
    return {
        "loss": stats[0].item() / stats[2].item(),
        "acc": stats[1].item() / stats[2].item(),
        "images_per_s": stats[2].item() / elapsed,
    }


def progress_bar(cfg: TrainConfig, steps: int, epoch: int, rank: int) -> tqdm:
    """The epoch's progress bar on stderr (rank 0, unless --no-progress)."""
    return tqdm(
        total=steps,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        file=sys.stderr,
        disable=not cfg.progress or rank != 0,
        dynamic_ncols=True,
    )


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
    batch_size: int,
    dtype: torch.dtype | None = None,
    limit: int = 0,
) -> dict[str, Any]:
    """Loss and accuracy on labelled faces, with the probabilities they came from."""
    probs = predict_probs(model, images, transform, batch_size, dtype, limit)
    y = labels[: len(probs)].cpu()
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), y).item()
    return {"loss": loss, "acc": (probs.argmax(1) == y).float().mean().item(), "probs": probs, "labels": y}
