"""Where and in which precision ferkit computes: device, CPU bf16 units, autocast, memory format."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from pathlib import Path

import torch

from ferkit.errors import FerkitError


def select_device(name: str) -> torch.device:
    """auto: the local CUDA device when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FerkitError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FerkitError(f"--device {name}: CUDA is not available on this machine")
    return device


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for benchmark reports that must say what they ran on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AMX or AVX-512 BF16), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


BF16_EMULATED_WARNING = (
    "warning: --precision bf16: this CPU has no bfloat16 units (AVX-512 BF16 or AMX), so bf16 is emulated "
    "and much slower than fp32 here; fp32 is the faster choice"
)


@functools.cache
def warn_bf16_emulated() -> None:
    """Print BF16_EMULATED_WARNING, once a process (an ensemble asks for each of its members)."""
    print(BF16_EMULATED_WARNING, file=sys.stderr)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: plain fp32)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if precision == "fp16" and device.type == "cpu":
        raise FerkitError("--precision fp16 needs a CUDA device; use bf16 on the CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        warn_bf16_emulated()
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def channels_last_pays_off(dtype: torch.dtype | None, device: torch.device) -> bool:
    """Whether training runs faster in channels-last memory: with bf16/fp16 autocast, on CUDA, and in
    fp32 on CPUs without bf16 units; fp32 on CPUs with bf16 units stays contiguous, where channels-last
    is much slower (`bench/train_speed.py --fp32_variants`; figures in docs/benchmarks.md)."""
    return dtype is not None or device.type == "cuda" or not cpu_has_bf16()
