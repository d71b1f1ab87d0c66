"""Solver configurations behind one contract (:class:`Solver`) and one registry.

Each solver module writes host-side steps for the shared scan executor
(:mod:`scire_jax.core.plans`); :mod:`scire_jax.core.solvers.registry` names them for the command
line, ``compare`` and the benchmarks.
"""
from scire_jax.core.solvers.base import Solver
from scire_jax.core.solvers.deis import DEIS
from scire_jax.core.solvers.dpm import DPMSolver
from scire_jax.core.solvers.heun import EDMHeun
from scire_jax.core.solvers.registry import (
                                             REGISTRY,
                                             get_solver,
                                             make_solver,
                                             register,
                                             solver_fields,
                                             solver_from_spec,
                                             solver_names,
)
from scire_jax.core.solvers.scire import DDIM, SciRE, series_phi
from scire_jax.core.solvers.unipc import UniPC

__all__ = ["Solver", "SciRE", "DDIM", "DPMSolver", "UniPC", "DEIS", "EDMHeun", "series_phi", "REGISTRY", "register",
           "get_solver", "make_solver", "solver_fields", "solver_from_spec", "solver_names"]
