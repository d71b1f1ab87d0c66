"""The sampling core: schedules, time grids, plans and their executor, solvers, model wrapping,
sampling and sharding.

Nothing here imports :mod:`scire_jax.models`, :mod:`scire_jax.io` or :mod:`scire_jax.apps`: the
core only sees a network through ``noise_fn(params, x, t)``.
"""
from scire_jax.core import schedules, timesteps
from scire_jax.core.plans import Plan, execute_plan
from scire_jax.core.sampling import initial_noise, make_sampler, plan, solve
from scire_jax.core.sharding import batch_mesh, make_pmap_sampler, make_sharded_sampler, replicate
from scire_jax.core.solvers import DDIM, DPMSolver, SciRE, UniPC, series_phi
from scire_jax.core.wrapping import (Classifier, ClassifierFree, DynamicThresholding, WrappedModel,
                                     dynamic_thresholding, wrap_model)

__all__ = [
    "schedules", "timesteps", "Plan", "execute_plan", "plan", "solve", "make_sampler", "initial_noise",
    "check_finite", "batch_mesh", "make_sharded_sampler", "make_pmap_sampler", "replicate",
    "Solver", "SciRE", "DDIM", "DPMSolver", "UniPC", "DEIS", "series_phi", "REGISTRY", "register",
    "get_solver", "solver_names", "wrap_model", "WrappedModel", "ClassifierFree", "Classifier",
    "DynamicThresholding", "dynamic_thresholding",
]
