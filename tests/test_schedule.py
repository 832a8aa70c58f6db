"""Tests of the LR schedules (pure functions of progress): warm restarts against a single cosine."""

from __future__ import annotations

import numpy as np
import pytest

from ferkit.training.schedule import lr_factor, progressive_size


def curve(name: str, cycles: int = 1, total: float = 100, warmup: float = 2) -> np.ndarray:
    grid = np.linspace(0, total, 10001)
    return np.array([lr_factor(name, p, total, warmup, 10, 0.1, 0.01, cycles) for p in grid])


@pytest.mark.parametrize("cycles", [1, 2, 3, 5])
def test_restarts_cycles_double_in_length_and_end_with_the_run(cycles: int) -> None:
    lr = curve("restarts", cycles)
    after_warmup = lr[201:]  # the grid step is 0.01 epoch: warm-up ends at index 200
    jumps = np.flatnonzero(np.diff(after_warmup) > 0.5) + 1  # the restarts: back up to the peak
    assert len(jumps) == cycles - 1
    bounds = np.concatenate([[0], jumps, [len(after_warmup)]])
    lengths = np.diff(bounds)
    np.testing.assert_allclose(lengths[1:] / lengths[:-1], 2.0, atol=0.01)
    assert lr[-1] == pytest.approx(0.01)  # every run ends at the floor, as a single cosine does
    assert after_warmup.max() <= 1.0 and after_warmup.min() >= 0.01 - 1e-12


def test_one_restart_cycle_is_the_cosine_schedule() -> None:
    np.testing.assert_allclose(curve("restarts", 1), curve("cosine"))


def test_progressive_size_grows_in_steps_to_the_full_size() -> None:
    sizes = [progressive_size(f, 32, 48, 0.75) for f in np.linspace(0, 1, 101)]
    assert sizes[0] == 32 and sizes[-1] == 48
    assert all(a <= b for a, b in zip(sizes, sizes[1:], strict=False))
    assert set(sizes) == {32, 36, 40, 44, 48}  # 4-pixel steps
    assert progressive_size(0.74, 32, 48, 0.75) == 44 and progressive_size(0.75, 32, 48, 0.75) == 48
    assert progressive_size(0.0, 32, 48, 0.0) == 48  # until 0: full size from the start
