"""Training throughput: ferkit's training step vs plain fp32 eager PyTorch, same model, same batch size.

Run by hand on an otherwise idle machine:
    FERKIT_DATA=../shared/data/fer2013.csv.gz python bench/train_speed.py [--models cnn vgg] [--batches 30]

Three loops per model, each timed over the same number of batches of real Training faces after warm-up:
  plain fp32 step   the model in fp32 on ready tensors (contiguous memory), Adam: the compute alone
  plain tutorial    the usual tutorial loop: PIL images -> torchvision transforms per image (flip, crop
                    with padding, ToTensor, Normalize) -> DataLoader -> fp32 model
  ferkit            ferkit.engine.train_one_epoch: batched on-tensor augmentation, bf16 autocast and
                    channels-last where the CPU supports them (what `ferkit train` runs)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ferkit.config import TrainConfig
from ferkit.data import load_dataset
from ferkit.data.transforms import BatchTransform
from ferkit.engine import autocast_dtype, build_optimizer, lr_setter, train_one_epoch
from ferkit.models import create_model
from ferkit.schedule import Plateau


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


def plain_step(model_name: str, images: np.ndarray, labels: np.ndarray, batch: int, steps: int) -> float:
    """images/s of fp32 forward+backward+Adam on ready, contiguous tensors."""
    model = create_model(model_name).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(images[:batch]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels[:batch])

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def plain_tutorial(model_name: str, images: np.ndarray, labels: np.ndarray, batch: int, steps: int) -> float:
    """images/s of the tutorial loop: per-image PIL transforms, DataLoader, fp32 model."""
    model = create_model(model_name).train()
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
    cfg = TrainConfig(model=model_name, batch_size=batch, limit_batches=steps, progress=False, epochs=2)
    device = torch.device("cpu")
    dtype = autocast_dtype("auto", device)
    model = create_model(model_name, drop_rate=cfg.drop_rate)
    channels_last = dtype is not None
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    mcfg = model.default_cfg
    tf = BatchTransform(mcfg["input_size"], mcfg["mean"], mcfg["std"], cfg.augment, channels_last)
    opt = build_optimizer(model, cfg)
    set_lr = lr_setter(opt, cfg, Plateau(cfg.plateau_patience, cfg.gamma))
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    train_one_epoch(model, x, y, y, tf, opt, set_lr, cfg, 1, None, dtype, None)  # warm-up
    return train_one_epoch(model, x, y, y, tf, opt, set_lr, cfg, 2, None, dtype, None)["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=None, help="FER2013 file (default $FERKIT_DATA)")
    parser.add_argument("--models", nargs="+", default=["cnn", "vgg"])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per loop")
    args = parser.parse_args()

    train = load_dataset(args.data).split("Training")
    dtype = autocast_dtype("auto", torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ferkit autocast: {dtype or 'fp32'}")
    print(f"batch {args.batch_size}, {args.batches} timed batches per loop; images/s (higher is better)")
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
