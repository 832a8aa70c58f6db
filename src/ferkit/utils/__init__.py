"""Layer 0: small helpers every other package may use (atomic files, devices, processes, plots)."""
