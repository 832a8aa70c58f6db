"""ferkit: facial expression recognition on FER2013."""

from ferkit.version import __version__

__all__ = ["__version__"]
