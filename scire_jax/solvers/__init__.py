"""Solver configurations: each builds a host-side plan for the shared scan executor."""
from scire_jax.solvers.scire import DDIM, SciRE, series_phi

__all__ = ["SciRE", "DDIM", "series_phi"]
