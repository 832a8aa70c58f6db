"""Training throughput: ferkit's training step vs plain fp32 eager PyTorch, same model, same batch size.

Run by hand on an otherwise idle machine (a --models entry is NAME, or NAME:WIDTH such as cnn:16):
    FERKIT_DATA=../shared/data/fer2013.csv.gz python bench/train_speed.py [--models cnn vgg] [--batches 30]

Three loops per model, each timed over the same number of batches of real Training faces after warm-up:
  plain fp32 step   the model in fp32 on ready tensors (contiguous memory), Adam: the compute alone
  plain tutorial    the usual tutorial loop: PIL images -> torchvision transforms per image (flip, crop
                    with padding, ToTensor, Normalize) -> DataLoader -> fp32 model
  ferkit            training.loop.train_one_epoch: batched on-tensor augmentation, bf16 autocast where
                    the CPU has bf16 units, channels-last where it is faster (what `ferkit train` runs)

With --fp32_variants it times, instead, the plain fp32 step three ways (contiguous memory, channels-last
memory, torch.compile), interleaved over --rounds rounds and reported as medians:
    FERKIT_DATA=../shared/data/fer2013.csv.gz python bench/train_speed.py --fp32_variants --models cnn vgg
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ferkit.config import TrainConfig
from ferkit.data import FerDataset, load_dataset
from ferkit.data.transforms import BatchTransform
from ferkit.models import create_model
from ferkit.training.loop import train_one_epoch
from ferkit.training.optim import build_optimizer, lr_setter
from ferkit.training.schedule import Plateau
from ferkit.utils.device import autocast_dtype, channels_last_pays_off

FP32_VARIANTS = ("contiguous", "channels_last", "compile")


class TutorialDataset(Dataset):
    """FER faces as PIL images with per-image torchvision transforms, as tutorials write it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.tf = transforms.Compose(
            [
                transforms.RandomHorizontalFlip(),
                transforms.RandomCrop(48, padding=4),
                transforms.ToTensor(),
                transforms.Normalize((0.5,), (0.5,)),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tf(Image.fromarray(self.images[i])), int(self.labels[i])


def model_spec(spec: str) -> tuple[str, dict[str, int]]:
    """A --models entry, NAME or NAME:WIDTH (the from-scratch nets' `width`): (name, model kwargs)."""
    name, _, width = spec.partition(":")
    return name, ({"width": int(width)} if width else {})


def build_model(spec: str, **kwargs: float) -> torch.nn.Module:
    name, arch = model_spec(spec)
    return create_model(name, **arch, **kwargs)


def fp32_step(
    model_name: str, x: torch.Tensor, y: torch.Tensor, variant: str = "contiguous"
) -> Callable[[], None]:
    """One fp32 forward+backward+Adam step on ready tensors, warmed up (compiled first, for "compile").
    `variant`: "contiguous" memory, "channels_last" memory, or "compile" (torch.compile, contiguous)."""
    model = build_model(model_name).train()
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if variant == "compile" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    return step


def images_per_s(step: Callable[[], None], batch: int, steps: int) -> float:
    """images/s of `steps` calls of `step` on batches of `batch` images."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def real_batch(images: np.ndarray, labels: np.ndarray, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch` Training faces as a float N x 1 x 48 x 48 tensor in [0, 1], and their labels."""
    return torch.from_numpy(images[:batch]).float().div(255).unsqueeze(1), torch.from_numpy(labels[:batch])


def plain_step(model_name: str, images: np.ndarray, labels: np.ndarray, batch: int, steps: int) -> float:
    """images/s of fp32 forward+backward+Adam on ready, contiguous tensors."""
    return images_per_s(fp32_step(model_name, *real_batch(images, labels, batch)), batch, steps)


def fp32_variants(
    model_name: str, images: np.ndarray, labels: np.ndarray, batch: int, steps: int, rounds: int
) -> dict[str, float]:
    """Median images/s of each fp32 step variant over `rounds` interleaved rounds of `steps` steps each
    (interleaved so that a slow spell of a shared machine hits every variant alike)."""
    x, y = real_batch(images, labels, batch)
    steps_by_variant = {v: fp32_step(model_name, x, y, v) for v in FP32_VARIANTS}
    speeds: dict[str, list[float]] = {v: [] for v in FP32_VARIANTS}
    for _ in range(rounds):
        for variant, step in steps_by_variant.items():
            speeds[variant].append(images_per_s(step, batch, steps))
    return {v: statistics.median(s) for v, s in speeds.items()}


def plain_tutorial(model_name: str, images: np.ndarray, labels: np.ndarray, batch: int, steps: int) -> float:
    """images/s of the tutorial loop: per-image PIL transforms, DataLoader, fp32 model."""
    model = build_model(model_name).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TutorialDataset(images, labels), batch_size=batch, shuffle=True, drop_last=True)
    it = iter(loader)
    for _ in range(3):
        x, y = next(it)
        F.cross_entropy(model(x), y).backward()
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def ferkit_loop(model_name: str, images: np.ndarray, labels: np.ndarray, batch: int, steps: int) -> float:
    """images/s of ferkit's own train_one_epoch (warm-up epoch first), as `ferkit train` runs it."""
    cfg = TrainConfig(
        model=model_spec(model_name)[0], batch_size=batch, limit_batches=steps, progress=False, epochs=2
    )
    device = torch.device("cpu")
    dtype = autocast_dtype("auto", device)
    model = build_model(model_name, drop_rate=cfg.drop_rate)
    channels_last = channels_last_pays_off(dtype, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    mcfg = model.default_cfg
    tf = BatchTransform(mcfg["input_size"], mcfg["mean"], mcfg["std"], cfg.augment, channels_last)
    opt = build_optimizer(model, cfg)
    set_lr = lr_setter(opt, cfg, Plateau(cfg.plateau_patience, cfg.gamma))
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    train_one_epoch(model, x, y, y, tf, opt, set_lr, cfg, 1, None, dtype, None)  # warm-up
    return train_one_epoch(model, x, y, y, tf, opt, set_lr, cfg, 2, None, dtype, None)["images_per_s"]


def print_fp32_variants(train: FerDataset, args: argparse.Namespace) -> None:
    """The --fp32_variants table: median images/s of each variant per model, and the ratios."""
    print(f"median of {args.rounds} interleaved rounds")
    print("".join(f"{h:>16}" for h in ("model", *FP32_VARIANTS, "cl vs contig", "compile vs")))
    for name in args.models:
        speed = fp32_variants(name, train.images, train.labels, args.batch_size, args.batches, args.rounds)
        base = speed["contiguous"]
        cells = [f"{speed[v]:.0f}" for v in FP32_VARIANTS]
        cells += [f"{speed['channels_last'] / base:.2f}x", f"{speed['compile'] / base:.2f}x"]
        print(f"{name:>16}" + "".join(f"{c:>16}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=None, help="FER2013 file (default $FERKIT_DATA)")
    parser.add_argument("--models", nargs="+", default=["cnn", "vgg"], help="NAME or NAME:WIDTH (cnn:16)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per loop")
    parser.add_argument(
        "--fp32_variants",
        action="store_true",
        help="instead: the fp32 step with contiguous or channels-last memory, or torch.compile'd",
    )
    parser.add_argument("--rounds", type=int, default=6, help="with --fp32_variants: interleaved rounds")
    args = parser.parse_args()
    if args.rounds < 1 or args.batches < 1:
        parser.error("--rounds and --batches must be at least 1")
    for spec in args.models:
        try:
            model_spec(spec)
        except ValueError:
            parser.error(f"--models {spec}: expected NAME or NAME:WIDTH with an integer WIDTH")

    train = load_dataset(args.data).split("Training")
    dtype = autocast_dtype("auto", torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ferkit autocast: {dtype or 'fp32'}")
    print(f"batch {args.batch_size}, {args.batches} timed batches per loop; images/s (higher is better)")
    if args.fp32_variants:
        print_fp32_variants(train, args)
        return
    header = ("model", "plain fp32 step", "plain tutorial", "ferkit", "vs step", "vs tutorial")
    print("".join(f"{h:>16}" for h in header))
    for name in args.models:
        step = plain_step(name, train.images, train.labels, args.batch_size, args.batches)
        tutorial = plain_tutorial(name, train.images, train.labels, args.batch_size, args.batches)
        ours = ferkit_loop(name, train.images, train.labels, args.batch_size, args.batches)
        cells = (
            f"{step:.0f}",
            f"{tutorial:.0f}",
            f"{ours:.0f}",
            f"{ours / step:.2f}x",
            f"{ours / tutorial:.2f}x",
        )
        print(f"{name:>16}" + "".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
