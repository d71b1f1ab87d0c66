"""Solver configurations: each builds a host-side plan for the shared scan executor."""
from scire_jax.core.solvers.dpm import DPMSolver
from scire_jax.core.solvers.scire import DDIM, SciRE, series_phi
from scire_jax.core.solvers.unipc import UniPC

__all__ = ["SciRE", "DDIM", "DPMSolver", "UniPC", "series_phi"]
