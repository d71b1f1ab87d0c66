"""The sampling core: schedules, time grids, plans and their executor, solvers, model wrapping,
sampling and sharding.

Nothing here imports :mod:`scire_jax.models`, :mod:`scire_jax.io` or :mod:`scire_jax.apps`: the
core only sees a network through ``noise_fn(params, x, t)``.
"""
from scire_jax.core import schedules, timesteps
from scire_jax.core.plans import Plan, execute_plan, stack_plans
from scire_jax.core.sampling import (
                                     NonFiniteError,
                                     check_finite,
                                     execute,
                                     initial_noise,
                                     make_pmap_sampler,
                                     make_sampler,
                                     make_sharded_sampler,
                                     plan,
                                     seed_key,
                                     solve,
)
from scire_jax.core.sharding import batch_mesh, replicate
from scire_jax.core.solvers import (
                                     DDIM,
                                     DEIS,
                                     REGISTRY,
                                     DPMSolver,
                                     EDMHeun,
                                     SciRE,
                                     Solver,
                                     UniPC,
                                     get_solver,
                                     make_solver,
                                     register,
                                     series_phi,
                                     solver_from_spec,
                                     solver_names,
)
from scire_jax.core.wrapping import (
                                     Classifier,
                                     ClassifierFree,
                                     DynamicThresholding,
                                     WrappedModel,
                                     dynamic_thresholding,
                                     wrap_model,
)

__all__ = [
    "schedules", "timesteps", "Plan", "execute_plan", "stack_plans", "plan", "execute", "solve", "make_sampler",
    "initial_noise", "seed_key", "check_finite", "NonFiniteError", "batch_mesh", "make_sharded_sampler", "make_pmap_sampler",
    "replicate", "Solver", "SciRE", "DDIM", "DPMSolver", "UniPC", "DEIS", "EDMHeun", "series_phi", "REGISTRY", "register",
    "get_solver", "make_solver", "solver_from_spec", "solver_names", "wrap_model", "WrappedModel",
    "ClassifierFree", "Classifier", "DynamicThresholding", "dynamic_thresholding",
]
