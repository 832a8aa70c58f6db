"""`fit` under its former module name, for callers not yet importing it from ferkit.training.loop."""

from ferkit.training.loop import fit

__all__ = ["fit"]
