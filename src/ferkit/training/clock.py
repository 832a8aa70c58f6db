"""The run's wall time across resumes, and how far on the time budget puts training."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Clock:
    """Seconds spent on a run (by earlier processes of a resumed run, then since `start`) against an
    optional time budget; the LR and size schedules follow whichever of the budget and the epochs runs
    out first."""

    budget: float  # seconds; 0: none
    epochs: int
    before: float = 0.0  # seconds spent before this process resumed the run
    started: float | None = None  # perf_counter time this process started training

    def start(self) -> None:
        self.started = time.perf_counter()

    def spent(self) -> float:
        assert self.started is not None, "Clock.start() first"
        return self.before + time.perf_counter() - self.started

    def progress(self, epochs_done: float) -> float:
        """Training progress in epochs: `epochs_done`, or further on where the time budget is."""
        return max(epochs_done, self.spent() / self.budget * self.epochs) if self.budget else epochs_done

    def out_of_time(self) -> bool:
        return bool(self.budget) and self.spent() >= self.budget

    @property
    def deadline(self) -> float | None:
        """The perf_counter time at which the budget is spent (None without one)."""
        assert self.started is not None, "Clock.start() first"
        return self.started + self.budget - self.before if self.budget else None
