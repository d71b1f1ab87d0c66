"""Public entry points: :func:`plan`, :func:`execute`, :func:`solve`, :func:`make_sampler`.

Example:
    >>> import jax, jax.numpy as jnp, scire_jax as sj
    >>> schedule = sj.schedules.linear()
    >>> model = sj.analytic.Gaussian(mean=jnp.zeros(2), std=jnp.ones(2))
    >>> noise_fn = sj.analytic.model_fn(model, schedule)
    >>> solver = sj.SciRE(algorithm="v1", method="multistep", order=2, steps=10)
    >>> x0 = sj.solve(solver, schedule, noise_fn, None, jnp.ones((4, 2)))
    >>> x0.shape
    (4, 2)
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from scire_jax.core import sharding
from scire_jax.core.plans import Plan, execute_plan
from scire_jax.core.schedules import NoiseSchedule
from scire_jax.core.solvers.base import Solver
from scire_jax.core.solvers.registry import solver_names
from scire_jax.core.wrapping import DynamicThresholding

__all__ = ["plan", "execute", "solve", "make_sampler", "make_sharded_sampler", "make_pmap_sampler", "initial_noise",
           "seed_key", "check_shape", "check_finite", "NonFiniteError"]


class NonFiniteError(FloatingPointError, ValueError):
    """A sampler produced NaN or infinite values (``check_finite=True``)."""


def _check_solver(solver) -> None:
    if not isinstance(solver, Solver):
        raise ValueError(f"solver={solver!r} is not a solver configuration (an instance of "
                         f"scire_jax.core.solvers.Solver; registered: {', '.join(solver_names())})")


def _resolve_thresholding(value):
    return DynamicThresholding() if value == "dynamic" else value


@functools.lru_cache(maxsize=256)
def _cached_plan(solver, schedule) -> Plan:
    return solver.build_plan(schedule)


def plan(solver, schedule) -> Plan:
    """The host-side plan of ``solver`` on ``schedule``: times, orders, phi, coefficients, NFE.

    Plans are cached per (solver, schedule); all validation that depends on the schedule (time
    range, degenerate grids) happens here, before anything is traced.

    Example:
        >>> import scire_jax as sj
        >>> p = sj.plan(sj.SciRE(method="singlestep_fixed", order=3, steps=10), sj.schedules.linear())
        >>> p.nfe
        9
    """
    _check_solver(solver)
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule={schedule!r} is not a scire_jax.core.schedules schedule")
    return _cached_plan(solver, schedule)


def _evaluator(noise_fn, params, thresholding):
    noise_with_coefficients = getattr(noise_fn, "noise", None)

    def evaluate(x, t, alpha, sigma, kind):
        t_vector = jnp.broadcast_to(t, (x.shape[0],))
        if noise_with_coefficients is not None:
            eps = noise_with_coefficients(params, x, t_vector, alpha, sigma)
        else:
            eps = noise_fn(params, x, t_vector)
        eps = jnp.asarray(eps)
        if eps.shape != x.shape:
            raise ValueError(f"noise_fn output has shape {eps.shape}, but x has shape {x.shape}: "
                             f"the model must return a prediction of x's shape")
        if not jnp.issubdtype(eps.dtype, jnp.floating):
            raise ValueError(f"noise_fn output has dtype {eps.dtype}; a floating dtype is required")
        eps = eps.astype(x.dtype)
        if kind == "noise":
            return eps
        x0 = (x - sigma * eps) / alpha
        if thresholding is not None:
            x0 = thresholding(x0, t_vector).astype(x.dtype)
        return x0

    return evaluate


def _state_dtype(dtype):
    # Solver arithmetic is at least float32 even when the input (or the network) is bf16/fp16.
    return jnp.promote_types(dtype, jnp.float32)


def _check_state(x_start):
    x_start = jnp.asarray(x_start)
    if x_start.ndim < 1:
        raise ValueError(f"x_start has shape {x_start.shape}: a leading batch axis is required")
    if any(size == 0 for size in x_start.shape):
        raise ValueError(f"x_start has shape {x_start.shape}: every axis must be >= 1")
    if not jnp.issubdtype(x_start.dtype, jnp.floating):
        raise ValueError(f"x_start has dtype {x_start.dtype}: a floating dtype is required")
    return x_start.astype(_state_dtype(x_start.dtype))


def execute(the_plan: Plan, noise_fn: Callable, params, x_start, *, thresholding=None,
            correct_xt: Optional[Callable] = None, return_trajectory: bool = False,
            callback: Optional[Callable] = None):
    """Run a plan (from :func:`plan`, or :func:`scire_jax.core.plans.stack_plans` under ``vmap``).

    The plan is a pytree, so ``jax.jit(execute, static_argnums=1)(plan, noise_fn, params, x)``
    takes its coefficients as arguments: one compilation serves every plan of the same structure.

    Args:
      the_plan: the plan.
      noise_fn, params: as :func:`solve`.
      x_start: ``x_T`` of shape ``(batch, ...)``.
      thresholding: corrector of every data prediction (``"dynamic"`` or a callable ``(x0, t) -> x0``).
      correct_xt: optional ``(x_t, t, step) -> x_t`` after every step.
      return_trajectory, callback: as :func:`solve`.
    """
    evaluate = _evaluator(noise_fn, params, _resolve_thresholding(thresholding))
    return execute_plan(the_plan, evaluate, _check_state(x_start), return_trajectory=return_trajectory,
                        correct_xt=correct_xt, callback=callback)


def check_finite(x, what: str = "samples"):
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or infinite values (one reduction; host sync).

    Returns ``x`` unchanged otherwise.  Outside ``jit`` only (it reads the result on the host).
    """
    finite = jnp.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
    bad = int(x.shape[0] - jnp.sum(finite))
    if bad:
        raise NonFiniteError(f"{bad} of {x.shape[0]} {what} are not finite (NaN or inf): the network, its weights "
                             "or the solver settings (e.g. a tiny phi, t_end too close to 0) produced overflow")
    return x


def solve(solver, schedule, noise_fn: Callable, params, x_start, *, return_trajectory: bool = False,
          callback: Optional[Callable] = None):
    """Integrate the probability-flow ODE from ``x_start`` (at ``t_start``) to ``t_end``.

    Args:
      solver: a solver configuration (:class:`~scire_jax.SciRE`, :func:`~scire_jax.DDIM`, ...).
      schedule: the noise schedule.
      noise_fn: ``noise_fn(params, x, t) -> eps`` (e.g. from :func:`scire_jax.wrap_model`).
      params: network parameters (any pytree; ``None`` for analytic models).
      x_start: initial noisy sample ``x_T``, shape ``(batch, ...)``.
      return_trajectory: also return ``x_t`` at ``plan.trajectory_times`` stacked on axis 0.
      callback: optional host function ``callback(step, t)`` called once per step (progress).

    Returns:
      ``x`` at ``t_end`` (or the data prediction with ``denoise_to_zero``), optionally with the
      trajectory.  Jit-able; the network is called exactly ``plan(solver, schedule).nfe`` times.
    """
    the_plan = plan(solver, schedule)
    return execute(the_plan, noise_fn, params, x_start, thresholding=solver.thresholding,
                   correct_xt=solver.correct_xt, return_trajectory=return_trajectory, callback=callback)


#: the largest seed :func:`seed_key` takes (seeds are unsigned 64-bit integers)
MAX_SEED = 2 ** 64 - 1


def seed_key(seed: int):
    """The PRNG key of an integer seed ``0 .. 2**64 - 1`` without aliasing.

    ``jax.random.key`` keeps only the low 32 bits of a seed, so ``key(2**32)`` would equal
    ``key(0)``.  Seeds below ``2**32`` give ``jax.random.key(seed)``; larger seeds are
    ``fold_in(key(seed % 2**32), seed >> 32)``, so every seed has its own key.

    Example:
        >>> import jax, scire_jax as sj
        >>> bool((jax.random.key_data(sj.seed_key(2**32)) == jax.random.key_data(sj.seed_key(0))).all())
        False
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed={seed!r} is not allowed: it must be an integer in 0 .. 2**64 - 1")
    seed = int(seed)
    low, high = seed & 0xFFFFFFFF, seed >> 32
    key = jax.random.key(low)
    return jax.random.fold_in(key, high) if high else key


def check_shape(shape) -> tuple:
    """``shape`` as a tuple of positive ints ``(batch, *sample_shape)``, or a ValueError naming it."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape={shape!r} is not allowed: it must be a tuple (batch, *sample_shape)") from None
    if not dims or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in dims):
        raise ValueError(f"shape={shape!r} is not allowed: it must be a non-empty tuple of positive integers "
                         "(batch, *sample_shape)")
    return tuple(int(d) for d in dims)


def initial_noise(key, shape, dtype=None, first_index=0):
    """Standard normal ``x_T`` where sample ``i`` depends only on ``(key, i)``.

    ``x_T[j] = normal(fold_in(key, first_index + j), shape[1:])``: the same key gives the same
    samples for any batch split and any number of devices; a large batch drawn in chunks of ``b``
    (``first_index = 0, b, 2b, ...``) equals the batch drawn at once.
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    indices = first_index + jnp.arange(shape[0])
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), tuple(shape[1:]), dtype))(indices)


def _finite_guard(x):
    """Raise :class:`NonFiniteError` on the host if ``x`` has non-finite samples (one reduction; works under jit)."""
    bad = jnp.sum(~jnp.isfinite(x).reshape(x.shape[0], -1).all(axis=1))

    def report(count):
        if int(count):
            raise NonFiniteError(f"{int(count)} of {x.shape[0]} samples are not finite (NaN or inf): the network, "
                                 "its weights or the solver settings produced overflow")

    jax.debug.callback(report, bad)
    return x


def make_sampler(solver, schedule, noise_fn: Callable, *, dtype=None, return_trajectory: bool = False,
                 callback: Optional[Callable] = None, mesh=None, check_finite: bool = False):
    """Build ``sample_fn(params, key, shape)`` that draws ``x_T`` and solves to ``t_end``.

    The plan is built (and validated) now, on the host.  Use it as
    ``jax.jit(sample_fn, static_argnums=2)(params, key, shape)``.  Sample ``i`` starts from
    ``normal(fold_in(key, i))``; the optional fourth argument ``first_index`` (traced, default 0)
    offsets ``i``, so chunks ``sample_fn(params, key, (b, ...), k * b)`` start from the same noise
    as the batch ``sample_fn(params, key, (n, ...))``, with one compilation for all chunks.

    Args:
      solver, schedule, noise_fn: as :func:`solve`.
      dtype: dtype of ``x_T`` and of the solver arithmetic (default float32, float64 with x64).
      return_trajectory: return ``(x, trajectory)``.
      callback: per-step host callback ``callback(step, t)`` (progress display).
      mesh: optional ``jax.sharding.Mesh``: shard the batch over it (see
        :func:`scire_jax.make_sharded_sampler`; not combined with ``return_trajectory``).
      check_finite: raise :class:`NonFiniteError` when samples hold NaN / inf (one reduction and a
        host callback; under ``jit`` the error surfaces when the result is computed).

    Example:
        >>> import jax, jax.numpy as jnp, scire_jax as sj
        >>> schedule = sj.schedules.linear()
        >>> noise_fn = sj.analytic.model_fn(sj.analytic.Gaussian(jnp.zeros(3), jnp.ones(3)), schedule)
        >>> sample_fn = sj.make_sampler(sj.SciRE(steps=5), schedule, noise_fn)
        >>> jax.jit(sample_fn, static_argnums=2)(None, jax.random.key(0), (2, 3)).shape
        (2, 3)
    """
    plan(solver, schedule)  # validate and build before any tracing
    if mesh is not None:
        if return_trajectory:
            raise ValueError("return_trajectory=True is not allowed with mesh=...: use solve() on a sharded x_T")
        sharded = make_sharded_sampler(solver, schedule, noise_fn, mesh, dtype=dtype, callback=callback)
        if not check_finite:
            return sharded
        return lambda params, key, shape, first_index=0: _finite_guard(sharded(params, key, shape, first_index))

    def sample_fn(params, key, shape, first_index=0):
        check_shape(shape)
        x_start = initial_noise(key, shape, dtype, first_index)
        out = solve(solver, schedule, noise_fn, params, x_start, return_trajectory=return_trajectory,
                    callback=callback)
        if check_finite:
            _finite_guard(out[0] if return_trajectory else out)
        return out

    return sample_fn


def make_sharded_sampler(solver, schedule, noise_fn: Callable, mesh: Optional[jax.sharding.Mesh] = None, *,
                         dtype=None, axis_name: Optional[str] = None, callback: Optional[Callable] = None):
    """``sample_fn(params, key, shape, first_index=0)`` with the batch axis sharded over ``mesh``.

    Params (and the plan's constants) are replicated; the initial noise, every state and the
    output are sharded along the batch axis.  ``shape[0]`` must be divisible by the mesh size.

    Args:
      solver, schedule, noise_fn: as :func:`make_sampler`.
      mesh: a mesh (default :func:`scire_jax.batch_mesh` over all devices).
      dtype: dtype of ``x_T`` and of the solver arithmetic.
      axis_name: the mesh axis to shard the batch over (default: the mesh's first axis).
      callback: optional per-step host callback ``callback(step, t)``.
    """
    plan(solver, schedule)
    mesh = sharding.batch_mesh() if mesh is None else mesh

    def draw_and_solve(params, key, shape, first_index, constrain):
        check_shape(shape)
        x_start = constrain(initial_noise(key, shape, dtype, first_index))
        return solve(solver, schedule, noise_fn, params, x_start, callback=callback)

    return sharding.shard_batch(draw_and_solve, mesh, axis_name)


def make_pmap_sampler(solver, schedule, noise_fn: Callable, *, devices=None, dtype=None):
    """``sample_fn(params, key, shape)`` that splits the batch over devices with ``jax.pmap``.

    Returns the full batch ``(shape[0], ...)`` (gathered), identical to the single-device sampler
    for the same key.  ``shape`` is a static Python tuple; ``shape[0]`` must be divisible by the
    number of devices.
    """
    plan(solver, schedule)

    def solve_indices(params, key, indices, sample_shape):
        noise_dtype = jnp.result_type(float) if dtype is None else dtype
        x_start = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), sample_shape, noise_dtype))(indices)
        return solve(solver, schedule, noise_fn, params, x_start)

    return sharding.pmap_batch(solve_indices, devices)
