"""scire-jax: SciRE-Solver and baseline diffusion samplers for JAX.

Public API (docs/design.md)::

    import scire_jax as sj
    schedule = sj.schedules.linear()
    noise_fn = sj.wrap_model(apply_fn, schedule, prediction="noise")
    solver = sj.SciRE(steps=10)                    # v1, multistep, order 3, NSR grid
    sample_fn = sj.make_sampler(solver, schedule, noise_fn)
    x0 = jax.jit(sample_fn, static_argnums=2)(params, key, (16, 32, 32, 3))
    sj.plan(solver, schedule)                      # times, orders, phi, coefficients, NFE

Layers: :mod:`scire_jax.core` (the sampler library), :mod:`scire_jax.models` (networks),
:mod:`scire_jax.io` (checkpoints, converters, :func:`load_pretrained`), :mod:`scire_jax.apps`
(command line, comparison, training, metrics).
"""
from scire_jax.core import (
    DDIM,
    DEIS,
    REGISTRY,
    Classifier,
    ClassifierFree,
    DPMSolver,
    DynamicThresholding,
    EDMHeun,
    NonFiniteError,
    Plan,
    SciRE,
    Solver,
    UniPC,
    WrappedModel,
    batch_mesh,
    check_finite,
    dynamic_thresholding,
    execute,
    execute_plan,
    get_solver,
    initial_noise,
    make_pmap_sampler,
    make_sampler,
    make_sharded_sampler,
    make_solver,
    plan,
    register,
    replicate,
    schedules,
    seed_key,
    series_phi,
    solve,
    solver_from_spec,
    solver_names,
    stack_plans,
    timesteps,
    wrap_model,
)

__version__ = "0.1.0"

__all__ = [
    "schedules", "timesteps", "Plan", "execute_plan", "stack_plans", "plan", "execute", "solve",
    "make_sampler", "initial_noise", "seed_key", "check_finite", "NonFiniteError", "batch_mesh", "make_sharded_sampler",
    "make_pmap_sampler", "replicate", "Solver", "SciRE", "DDIM", "DPMSolver", "UniPC", "DEIS", "EDMHeun",
    "series_phi", "REGISTRY", "register", "get_solver", "make_solver", "solver_from_spec", "solver_names",
    "wrap_model", "WrappedModel", "ClassifierFree", "Classifier", "DynamicThresholding",
    "dynamic_thresholding", "load_pretrained", "Pretrained",
]

_LAZY = {"analytic": "scire_jax.models.analytic", "models": "scire_jax.models", "io": "scire_jax.io",
         "convert": "scire_jax.io.convert", "checkpoints": "scire_jax.io.checkpoints",
         "pretrained": "scire_jax.io.pretrained", "apps": "scire_jax.apps"}


def __getattr__(name):
    # Models, checkpoints and applications load on first use: importing the sampler stays light.
    import importlib
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name in ("load_pretrained", "Pretrained"):
        return getattr(importlib.import_module("scire_jax.io.pretrained"), name)
    raise AttributeError(f"module 'scire_jax' has no attribute {name!r}")
