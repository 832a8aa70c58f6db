"""The training loop, top to bottom: data on the device, train_one_epoch, evaluate, fit (resume, DDP)."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ferkit.classes import CLASS_NAMES
from ferkit.config import TrainConfig
from ferkit.data import class_weights, load_dataset
from ferkit.data.cache import cache_dir
from ferkit.data.transforms import BatchTransform, mix_batch
from ferkit.errors import FerkitError
from ferkit.metrics import classification_report
from ferkit.models import backbone_and_head, create_model
from ferkit.runtime.checkpoint import atomic_save, load_checkpoint, model_from_checkpoint, model_payload
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.predictor import batches, members_and_weights, predict_probs
from ferkit.tracking import Tracker
from ferkit.training.schedule import Plateau, lr_factor, progressive_size
from ferkit.utils.device import autocast, autocast_dtype, channels_last_pays_off, select_device
from ferkit.utils.distributed import init_distributed, unwrap
from ferkit.utils.io import atomic_copy
from ferkit.utils.paths import timestamped_run_dir


class Diverged(FerkitError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------- one epoch
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
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        file=sys.stderr,
        disable=not cfg.progress or rank != 0,
        dynamic_ncols=True,
    )
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


# ----------------------------------------------------------------------------- optimizer
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


def lr_setter(optimizer: torch.optim.Optimizer, cfg: TrainConfig, plateau: Plateau) -> Any:
    """A function of fractional epoch progress that sets every group's LR."""

    def set_lr(progress: float) -> float:
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

    return set_lr


# ----------------------------------------------------------------------------- fit
def teacher_key(teacher: Any, faces: np.ndarray) -> str:
    """A digest of what the teacher's flip-TTA probabilities depend on: each member's architecture,
    preprocessing, weights and vote, and the faces' pixels (not the paths they came from)."""
    h = hashlib.blake2b(b"teacher|flip|", digest_size=16)
    for member, weight in zip(*members_and_weights(teacher), strict=True):
        ck = member.ckpt
        h.update(f"{member.arch}|{ck['input_size']}|{ck['mean']}|{ck['std']}|{weight:.17g}|".encode())
        for name, t in member.model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    h.update(np.ascontiguousarray(faces))
    return h.hexdigest()


def teacher_probabilities(cfg: TrainConfig, faces: np.ndarray) -> torch.Tensor:
    """The teacher's flip-TTA probabilities on `faces`, kept in the cache folder under `teacher_key`: a
    resumed run, or the next student of the same teacher, reads them back instead of running the
    teacher again (21 minutes for the shipped ensemble on an AVX2 CPU)."""
    teacher, _ = load_predictor(cfg.teacher, cfg.device)
    file = cache_dir() / f"teacher-{teacher_key(teacher, faces)}.pt"
    with contextlib.suppress(Exception):  # missing or damaged: run the teacher and rewrite the file
        probs = torch.load(file, map_location="cpu", weights_only=True)
        if probs.shape == (len(faces), len(CLASS_NAMES)):
            return probs
    print(f"teacher: {cfg.teacher} on {len(faces)} training faces (flip TTA), once", flush=True)
    probs = torch.from_numpy(teacher.predict(faces, "flip")).float()
    with contextlib.suppress(OSError):  # an unwritable cache only costs time
        atomic_save(probs, file)
    return probs


def distillation_targets(cfg: TrainConfig, faces: np.ndarray, targets: torch.Tensor) -> torch.Tensor:
    """Knowledge distillation with fixed soft targets: `cfg.distill` x the teacher's flip-TTA probabilities
    on the (unaugmented) training faces + the rest x the labels (class indices or FER+ distributions)."""
    probs = teacher_probabilities(cfg, faces)
    targets = targets.cpu()
    labels = F.one_hot(targets, len(CLASS_NAMES)).float() if targets.dim() == 1 else targets.float()
    return cfg.distill * probs + (1 - cfg.distill) * labels


def vote_targets(share: float, labels: np.ndarray, votes: np.ndarray) -> torch.Tensor:
    """`share` x each face's FER+ vote distribution + the rest x its FER2013 label; a face without
    FER+ votes keeps its label."""
    onehot = F.one_hot(torch.from_numpy(labels), len(CLASS_NAMES)).float()
    shares = torch.from_numpy(votes).float()
    return torch.where(shares.sum(1, keepdim=True) > 0, share * shares + (1 - share) * onehot, onehot)


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg.model` on Training, choose the best epoch on PublicTest; returns the summary."""
    rank, world = init_distributed(cfg.device)
    device = select_device(cfg.device)
    dtype = autocast_dtype(cfg.precision, device)
    if cfg.time_budget and world > 1:
        raise FerkitError("--time_budget is for single-process runs; use --epochs with torchrun")
    if cfg.ferplus_votes and cfg.labels == "ferplus":
        raise FerkitError("--ferplus_votes is for FER2013 labels; with --labels ferplus use --soft_labels")
    if cfg.soft_labels and cfg.labels != "ferplus":
        raise FerkitError("--soft_labels trains on FER+ vote distributions: add --labels ferplus")
    progressive_set = (cfg.progressive_mode, cfg.progressive_until) != (
        TrainConfig.progressive_mode,
        TrainConfig.progressive_until,
    )
    if progressive_set and not cfg.progressive_resize:
        raise FerkitError("--progressive_mode and --progressive_until need --progressive_resize SIDE")
    if cfg.resume and not cfg.output_dir:
        raise FerkitError("--resume needs --output_dir (the run folder holding last.pth)")
    out = Path(cfg.output_dir) if cfg.output_dir else timestamped_run_dir(cfg.model)
    if world > 1 and not cfg.output_dir:
        raise FerkitError("multi-process training needs --output_dir (every process must agree on it)")
    last = out / "last.pth"
    if cfg.resume and not last.exists():
        raise FerkitError(f"--resume: no checkpoint at {last}")
    if not cfg.resume and rank == 0 and last.exists():
        raise FerkitError(
            f"{out} already holds a run (last.pth): pass --resume to continue it, or another --output_dir"
        )

    # data: all of it on the device as uint8; batches are index tensors
    ds = load_dataset(
        cfg.data or None,
        skip_bad_rows=cfg.skip_bad_rows,
        labels=cfg.labels,
        ferplus=cfg.ferplus or None,
        votes=cfg.ferplus_votes > 0,
    )
    train = ds.split("Training", labelled_only=True)
    try:
        val = ds.split("PublicTest", labelled_only=True)
    except FerkitError:
        raise FerkitError(
            f"{ds.source}: no labelled PublicTest rows; validation (checkpoint choice) needs them"
        ) from None
    train_images = torch.from_numpy(train.images).to(device)
    train_labels = torch.from_numpy(train.labels).to(device)
    train_targets = torch.from_numpy(train.soft_labels).to(device) if cfg.soft_labels else train_labels
    if cfg.ferplus_votes:
        train_targets = vote_targets(cfg.ferplus_votes, train.labels, train.soft_labels).to(device)
    if cfg.teacher:  # rank 0 runs the teacher; the other processes receive its targets
        if rank == 0:
            train_targets = distillation_targets(cfg, train.images, train_targets)
        else:
            train_targets = torch.empty(len(train.images), len(CLASS_NAMES))
        train_targets = train_targets.to(device)
        if world > 1:
            dist.broadcast(train_targets, src=0)
    val_images = torch.from_numpy(val.images).to(device)
    val_labels = torch.from_numpy(val.labels)

    # model, transforms, loss, optimizer
    torch.manual_seed(cfg.seed)
    arch_kwargs = {"width": cfg.width} if cfg.width else {}
    pretrained = True if cfg.pretrained == "imagenet" else (cfg.pretrained or False)
    model = create_model(cfg.model, drop_rate=cfg.drop_rate, pretrained=pretrained, **arch_kwargs)
    model = model.to(device)
    channels_last = cfg.channels_last and channels_last_pays_off(dtype, device)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    mcfg = model.default_cfg
    train_tf = BatchTransform(mcfg["input_size"], mcfg["mean"], mcfg["std"], cfg.augment, channels_last)
    eval_tf = BatchTransform(mcfg["input_size"], mcfg["mean"], mcfg["std"], "none", channels_last)
    if cfg.progressive_resize and not 16 <= cfg.progressive_resize <= min(train_tf.size):
        raise FerkitError(
            f"--progressive_resize {cfg.progressive_resize}: expected 16 to {min(train_tf.size)} "
            f"({cfg.model}'s input side), or 0 for off"
        )
    weights = class_weights(train.labels, cfg.class_weights)
    loss_weight = None if cfg.class_weights == "none" else torch.from_numpy(weights).to(device)
    optimizer = build_optimizer(model, cfg)
    # the moving average (if any) is what is validated and saved as best.pth; last.pth keeps both
    ema = None
    if cfg.ema:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    plateau = Plateau(cfg.plateau_patience, cfg.gamma)
    set_epoch_lr = lr_setter(optimizer, cfg, plateau)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    # resume
    start_epoch, best_acc, best_epoch, stale, elapsed = 1, -1.0, 0, 0, 0.0
    if cfg.resume:
        ckpt = load_checkpoint(last)
        if ckpt["arch"] != cfg.model:
            raise FerkitError(f"--resume: {last} is a {ckpt['arch']}, not a {cfg.model}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if (ckpt.get("ema") is None) != (ema is None):
            trained = "without" if ema is not None else "with"
            raise FerkitError(f"--resume: {last} was trained {trained} --ema; resume with the same --ema")
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        for k, v in ckpt["plateau"].items():
            setattr(plateau, k, v)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_acc, best_epoch = ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["best_epoch"]
        stale, elapsed = ckpt.get("stale", 0), ckpt.get("elapsed", 0.0)  # absent in early checkpoints
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
    run_cfg = cfg.to_dict() | {
        "output_dir": str(out),
        "world_size": world,
        "autocast": str(dtype),
        "memory_format": "channels_last" if channels_last else "contiguous",
        "device": str(device),
        "train_images": len(train),
        "val_images": len(val),
    }
    tracker = Tracker(
        out,
        run_cfg,
        mode=cfg.wandb,
        project=cfg.wandb_project,
        tags=[cfg.model, cfg.labels, cfg.experiment_type, *cfg.tags],
        run_name=cfg.run_name or out.name,
        resume_epoch=start_epoch - 1 if cfg.resume else None,
        enabled=rank == 0,
    )

    def save(path: Path, epoch: int, resumable: bool) -> None:
        weights = ema.module if ema is not None and not resumable else unwrap(model)
        ckpt = model_payload(weights, CLASS_NAMES) | {
            "config": cfg.to_dict(),
            "epoch": epoch,
            "best_acc": best_acc,
            "best_epoch": best_epoch,
            "stale": stale,
            "elapsed": spent(),
        }
        if resumable:
            ckpt |= {
                "optimizer": optimizer.state_dict(),
                "plateau": asdict(plateau),
                "scaler": scaler.state_dict() if scaler else None,
                "ema": ema.state_dict() if ema is not None else None,
            }
        atomic_save(ckpt, path)

    if rank == 0:
        print(
            f"training {cfg.model} on {len(train)} images ({device}, {dtype or 'fp32'}, "
            f"{world} process{'es' if world > 1 else ''}), validating on {len(val)} PublicTest; "
            f"run folder {out}"
        )
    # wall-time budget: training stops when it is spent, and the LR and size schedules follow whichever
    # of the budget and --epochs runs out first
    run_start = time.perf_counter()
    budget = cfg.time_budget * 60

    def spent() -> float:
        return elapsed + time.perf_counter() - run_start

    def progress(epochs_done: float) -> float:
        """Training progress in epochs: `epochs_done`, or further on where the time budget is."""
        return max(epochs_done, spent() / budget * cfg.epochs) if budget else epochs_done

    def set_lr(epochs_done: float) -> float:
        return set_epoch_lr(progress(epochs_done))

    deadline = run_start + budget - elapsed if budget else None

    def train_size(epoch: int) -> tuple[int, int]:
        """The epoch's training image size: the model's, or smaller early on under progressive resizing."""
        if not cfg.progressive_resize:
            return train_tf.size
        fraction = progress(epoch - 1) / cfg.epochs
        h, w = (
            progressive_size(fraction, cfg.progressive_resize, full, cfg.progressive_until)
            for full in train_tf.size
        )
        return h, w

    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if budget and spent() >= budget:
                epoch -= 1
                break
            # each epoch's randomness is fixed by (seed, epoch): a resumed run repeats the uninterrupted one
            torch.manual_seed(cfg.seed * 1000 + epoch * 10 + rank)
            t0 = time.perf_counter()
            size = train_size(epoch)
            tr = train_one_epoch(
                model,
                train_images,
                train_targets,
                train_labels,
                train_tf.at_size(size, crop=cfg.progressive_mode == "crop"),
                optimizer,
                set_lr,
                cfg,
                epoch,
                loss_weight,
                dtype,
                scaler,
                rank,
                world,
                deadline,
                ema,
            )
            va = evaluate(
                ema.module if ema is not None else unwrap(model),
                val_images,
                val_labels,
                eval_tf,
                cfg.eval_batch_size,
                dtype,
                cfg.limit_batches,
            )
            if cfg.scheduler == "plateau":
                plateau.step(va["acc"])
            improved = va["acc"] > best_acc
            if improved:
                best_acc, best_epoch, stale = va["acc"], epoch, 0
            else:
                stale += 1
            row = {
                "epoch": epoch,
                "train_loss": tr["loss"],
                "train_acc": tr["acc"],
                "val_loss": va["loss"],
                "val_acc": va["acc"],
                "lr": optimizer.param_groups[-1]["lr"],
                "time": time.perf_counter() - t0,
                "images_per_s": tr["images_per_s"],
                "train_size": size[0],
            }
            if rank == 0:
                tracker.log_epoch(row)
                if improved:
                    save(out / "best.pth", epoch, resumable=False)
                    copy_best(out / "best.pth", cfg.save_best_to)
                save(last, epoch, resumable=True)
                print(
                    f"epoch {epoch}/{cfg.epochs}  train loss {tr['loss']:.4f} acc {tr['acc']:.2%}  "
                    f"val loss {va['loss']:.4f} acc {va['acc']:.2%}{' *' if improved else ''}  "
                    f"lr {row['lr']:.2e}  {row['time']:.1f}s ({tr['images_per_s']:.0f} img/s"
                    f"{f' at {size[0]}x{size[1]}' if cfg.progressive_resize else ''})",
                    flush=True,
                )
            if cfg.early_stopping and stale >= cfg.early_stopping:
                if rank == 0:
                    print(f"early stopping: no PublicTest improvement in {stale} epochs")
                break
    except Diverged as e:
        tracker.finish(exit_code=1)
        raise FerkitError(f"{e}; the last good checkpoint is kept in {last}; try a lower --lr") from None

    summary = {
        "best_val_acc": best_acc,
        "best_epoch": best_epoch,
        "epochs_run": epoch,
        "output_dir": str(out),
    }
    if rank == 0:
        summary |= final_report(out, val, val_images, eval_tf, cfg, tracker)
        tracker.log_summary(summary)
    tracker.finish()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def copy_best(best: Path, target: str) -> None:
    """Atomically copy the best checkpoint to the seed's models/best_model.pth (or another path)."""
    if not target:
        return
    atomic_copy(best, target)


def final_report(
    out: Path,
    val: Any,
    val_images: torch.Tensor,
    eval_tf: BatchTransform,
    cfg: TrainConfig,
    tracker: Tracker,
) -> dict[str, Any]:
    """The best checkpoint on PublicTest: confusion matrix, sample predictions, model artifact."""
    best = model_from_checkpoint(load_checkpoint(out / "best.pth"), str(out / "best.pth")).to(
        val_images.device
    )
    probs = predict_probs(
        best, val_images, eval_tf, cfg.eval_batch_size, None, cfg.limit_batches
    ).numpy()  # fp32, as evaluate
    labels = val.labels[: len(probs)]
    report = classification_report(labels, probs, CLASS_NAMES)
    tracker.log_confusion_matrix(labels, probs.argmax(1), CLASS_NAMES, title="val_confusion_matrix")
    sample = np.linspace(0, len(probs) - 1, min(64, len(probs))).astype(int)
    tracker.log_predictions(val.images[sample], labels[sample], probs[sample], CLASS_NAMES)
    tracker.log_model(out / "best.pth", aliases=("best", "latest"), metadata={"val_acc": report["accuracy"]})
    return {
        "val_acc_fp32": report["accuracy"],
        "val_macro_f1": report["macro_f1"],
        "val_ece": report["ece"],
        "val_confusion_matrix": report["confusion_matrix"],
    }
