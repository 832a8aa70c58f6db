"""torchrun set-up: the process group, and the model inside DistributedDataParallel."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def init_distributed(device_name: str) -> tuple[int, int]:
    """(rank, world size); under torchrun, joins the process group (nccl on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() and device_name != "cpu" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), world


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel, or `model` itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
