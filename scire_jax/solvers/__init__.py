"""Solver configurations: each builds a host-side plan for the shared scan executor."""
from scire_jax.solvers.dpm import DPMSolver
from scire_jax.solvers.scire import DDIM, SciRE, series_phi
from scire_jax.solvers.unipc import UniPC

__all__ = ["SciRE", "DDIM", "DPMSolver", "UniPC", "series_phi"]
