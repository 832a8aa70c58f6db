"""Learning-rate and image-size schedules as pure functions of training progress (resuming needs no extra
state)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_factor(name: str, progress: float, total: float, warmup: float, step_size: int, gamma: float,
              min_factor: float = 0.0, cycles: int = 1) -> float:  # fmt: skip
    """Multiplier of the peak LR at `progress` epochs (fractional) out of `total`.

    cosine: linear warm-up then a half cosine down to `min_factor`; restarts: the same in `cycles` cosine
    cycles, each twice as long as the one before (SGDR with T_mult 2), the last ending with the run;
    onecycle: cosine up over the first 30% from 1/25, then cosine down to 1/25e4 (torch's OneCycleLR
    shape); step: times `gamma` every `step_size` epochs; plateau and none: constant (plateau drops are
    applied separately).
    """
    if name == "onecycle":
        up = 0.3 * total
        if progress < up:
            return _cos_between(1 / 25, 1.0, progress / up)
        return _cos_between(1.0, 1 / 25e4, (progress - up) / max(total - up, 1e-8))
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / warmup
    if name in ("cosine", "restarts"):
        t = min((progress - warmup) / max(total - warmup, 1e-8), 1.0)
        if name == "restarts":
            t = _position_in_cycle(t, cycles)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    if name == "step":
        return gamma ** int(progress // step_size)
    return 1.0


def progressive_size(fraction: float, start: int, full: int, until: float, step: int = 4) -> int:
    """Training image side at `fraction` (0 to 1) of the run under progressive resizing: `start` pixels
    at first, growing linearly to `full` by `until` (then `full`), rounded down to a multiple of `step`."""
    if until <= 0 or fraction >= until:
        return full
    side = start + (full - start) * fraction / until
    return max(start, min(full, int(side) // step * step))


def _position_in_cycle(t: float, cycles: int) -> float:
    """Where fraction `t` of the run falls inside its cycle (0 to 1), cycle k being 2^k units long."""
    units = t * (2**cycles - 1)
    k = min(int(math.log2(units + 1)), cycles - 1)
    return (units - (2**k - 1)) / 2**k


def _cos_between(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


@dataclass
class Plateau:
    """Reduce-on-plateau: multiply the LR by `gamma` after `patience` epochs without a better metric."""

    patience: int
    gamma: float
    factor: float = 1.0
    best: float = -math.inf
    bad_epochs: int = 0

    def step(self, metric: float) -> None:
        if metric > self.best + 1e-4:
            self.best, self.bad_epochs = metric, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.factor *= self.gamma
            self.bad_epochs = 0
