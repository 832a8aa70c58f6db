"""Layer 6: the `ferkit` command line (argparse only; each command calls the Python API)."""

from ferkit.cli.main import main

__all__ = ["main"]
