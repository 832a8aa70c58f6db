"""The public Python API (re-exported by `ferkit/__init__.py`); being built."""
