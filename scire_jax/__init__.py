"""scire-jax: SciRE-Solver and baseline diffusion samplers for JAX.

Public API (DESIGN.md §3)::

    import scire_jax as sj
    schedule = sj.schedules.linear()
    noise_fn = sj.wrap_model(apply_fn, schedule, prediction="noise")
    solver = sj.SciRE(algorithm="v1", method="multistep", order=3, steps=10)
    sample_fn = sj.make_sampler(solver, schedule, noise_fn)
    x0 = jax.jit(sample_fn, static_argnums=2)(params, key, (16, 32, 32, 3))
    sj.plan(solver, schedule)   # times, orders, phi, coefficients, NFE
"""
from scire_jax.core import schedules, timesteps
from scire_jax.core.sharding import batch_mesh, make_pmap_sampler, make_sharded_sampler, replicate
from scire_jax.core.plans import Plan
from scire_jax.core.sampling import initial_noise, make_sampler, plan, solve
from scire_jax.core.solvers import DDIM, DPMSolver, SciRE, UniPC, series_phi
from scire_jax.core.wrapping import (Classifier, ClassifierFree, DynamicThresholding, dynamic_thresholding,
                                wrap_model)

__version__ = "0.1.0"

__all__ = [
    "schedules", "timesteps", "Plan", "batch_mesh", "make_sharded_sampler", "make_pmap_sampler", "replicate", "plan", "solve", "make_sampler", "initial_noise",
    "SciRE", "DDIM", "DPMSolver", "UniPC", "series_phi",
    "wrap_model", "ClassifierFree", "Classifier", "DynamicThresholding", "dynamic_thresholding",
    "load_pretrained",
]


_LAZY = {"analytic": "scire_jax.models.analytic", "models": "scire_jax.models", "io": "scire_jax.io",
         "convert": "scire_jax.io.convert", "checkpoints": "scire_jax.io.checkpoints",
         "pretrained": "scire_jax.io.pretrained", "apps": "scire_jax.apps"}


def __getattr__(name):
    # Heavier optional modules load on first use.
    import importlib
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name == "load_pretrained":
        return importlib.import_module("scire_jax.io.pretrained").load_pretrained
    raise AttributeError(f"module 'scire_jax' has no attribute {name!r}")
