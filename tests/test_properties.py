"""Property-based tests (hypothesis) of the plan/executor invariants, over every registered solver."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scire_jax as sj
from scire_jax.core.solvers import registry

SCHEDULES = {"linear": sj.schedules.linear(), "discrete": sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))}
PROPERTY_SETTINGS = settings(max_examples=15, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def solvers(draw):
    """A valid solver configuration of any registered name."""
    name = draw(st.sampled_from(registry.solver_names()))
    entry = registry.get_solver(name)
    fields = dict(entry.defaults)
    allowed = registry.solver_fields(name)
    field_names = {f.name for f in dataclasses.fields(entry.cls)}
    order = entry.fixed.get("order") or draw(st.integers(1, 3))
    if "order" in allowed:
        fields["order"] = order
    methods = entry.cls.methods
    if "method" in allowed:
        fields["method"] = draw(st.sampled_from(methods))
    if "skip_type" in allowed:
        fields["skip_type"] = draw(st.sampled_from(entry.cls.skip_types))
    if "phi" in field_names and "phi" in allowed:
        fields["phi"] = draw(st.sampled_from(["official", 1.0, 2.0 / 3.0]))
    steps = draw(st.integers(max(order, 1), 12))
    if fields.get("method") == "singlestep_fixed":
        steps = order * max(1, steps // order)  # no warning about dropped steps
    fields["denoise_to_zero"] = draw(st.booleans())
    return entry.make(steps, **fields)


def _constant_noise(value):
    """A model whose noise prediction is ``value`` everywhere (the solve is then affine in x_T and value)."""
    def noise_fn(params, x, t):
        return jnp.broadcast_to(jnp.asarray(value, x.dtype), x.shape)
    return noise_fn


@PROPERTY_SETTINGS
@given(solver=solvers(), schedule_name=st.sampled_from(sorted(SCHEDULES)))
def test_nfe_equals_counted_network_calls(solver, schedule_name):
    schedule = SCHEDULES[schedule_name]
    calls = []

    def noise_fn(params, x, t):
        calls.append(1)
        return 0.1 * x

    with jax.disable_jit():  # scan runs as a Python loop, so every network call is counted
        sj.solve(solver, schedule, noise_fn, None, jnp.ones((2, 3)))
    assert len(calls) == sj.plan(solver, schedule).nfe


@PROPERTY_SETTINGS
@given(solver=solvers(), schedule_name=st.sampled_from(sorted(SCHEDULES)), seed=st.integers(0, 2**16))
def test_update_is_linear_in_the_model_outputs(x64, solver, schedule_name, seed):
    schedule = SCHEDULES[schedule_name]
    rng = np.random.default_rng(seed)
    x_start, c1, c2 = (rng.standard_normal((2, 3)) for _ in range(3))
    both = sj.solve(solver, schedule, _constant_noise(c1 + 2.0 * c2), None, x_start)
    first = sj.solve(solver, schedule, _constant_noise(c1), None, x_start)
    second = sj.solve(solver, schedule, _constant_noise(c2), None, np.zeros_like(x_start))
    np.testing.assert_allclose(both, first + 2.0 * second, rtol=1e-9, atol=1e-9 * float(np.max(np.abs(both))))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(solver=solvers(), batch=st.integers(2, 6), chunk=st.integers(1, 4))
def test_chunked_and_sharded_sampling_equal_one_batch(x64, solver, batch, chunk):
    schedule = SCHEDULES["linear"]
    noise_fn = sj.analytic.model_fn(sj.analytic.Gaussian(np.full(3, 0.5), np.full(3, 0.3)), schedule)
    key = jax.random.key(7)
    sample_fn = sj.make_sampler(solver, schedule, noise_fn)
    whole = np.asarray(sample_fn(None, key, (batch, 3)))
    chunks = [np.asarray(sample_fn(None, key, (min(chunk, batch - start), 3), start))
              for start in range(0, batch, chunk)]
    # equal up to the round-off of batch-size dependent vectorisation
    np.testing.assert_allclose(np.concatenate(chunks), whole, rtol=1e-12, atol=1e-12)
    mesh = sj.batch_mesh()
    if batch % mesh.size == 0:
        sharded = sj.make_sampler(solver, schedule, noise_fn, mesh=mesh)
        np.testing.assert_allclose(np.asarray(jax.jit(sharded, static_argnums=2)(None, key, (batch, 3))), whole,
                                   rtol=1e-12, atol=1e-12)


INVALID = st.one_of(
    st.fixed_dictionaries({"order": st.sampled_from([0, 4, -1, 2.0, True, "2", None])}),
    st.fixed_dictionaries({"steps": st.sampled_from([0, -3, 2.5, True, "10", None])}),
    st.fixed_dictionaries({"skip_type": st.sampled_from(["linear", "", None, 3, "nsr"])}),
    st.fixed_dictionaries({"t_start": st.sampled_from([0.0, -1.0, float("nan"), float("inf"), True]),
                           }),
    st.fixed_dictionaries({"t_start": st.just(0.5), "t_end": st.sampled_from([0.5, 0.9])}),
    st.fixed_dictionaries({"times": st.sampled_from([[1.0], [0.5, 0.9], [1.0, 1.0, 0.5], [1.0, float("nan")],
                                                     [[1.0, 0.5]], [1.0, -0.1]])}),
    st.fixed_dictionaries({"lower_order_final": st.sampled_from([None, "yes", 1])}),
    st.fixed_dictionaries({"thresholding": st.sampled_from([1.0, "static"])}),
)


@PROPERTY_SETTINGS
@given(name=st.sampled_from(registry.solver_names()), bad=INVALID)
def test_invalid_configuration_raises_before_tracing(name, bad):
    entry = registry.get_solver(name)
    bad = {k: v for k, v in bad.items() if k not in entry.fixed}
    if not bad:
        return
    fields = {**entry.defaults, **bad}
    steps = fields.pop("steps", 10)
    traced = []

    def noise_fn(params, x, t):  # pragma: no cover - must never run
        traced.append(1)
        return x

    with pytest.raises(ValueError):
        solver = entry.cls(steps=steps, **{**fields, **entry.fixed})
        sj.make_sampler(solver, SCHEDULES["linear"], noise_fn)
    assert not traced


def test_check_finite_opt_in_raises_eagerly_and_under_jit():
    schedule = SCHEDULES["linear"]

    def broken(params, x, t):
        return x * jnp.nan

    sample_fn = sj.make_sampler(sj.DDIM(steps=3), schedule, broken, check_finite=True)
    with pytest.raises(sj.NonFiniteError, match="2 of 2 samples are not finite"):
        sample_fn(None, jax.random.key(0), (2, 3))
    with pytest.raises(Exception, match="not finite"):
        jax.block_until_ready(jax.jit(sample_fn, static_argnums=2)(None, jax.random.key(0), (2, 3)))
    fine = sj.make_sampler(sj.DDIM(steps=3), schedule, _constant_noise(0.1), check_finite=True)
    assert np.all(np.isfinite(np.asarray(fine(None, jax.random.key(0), (2, 3)))))


@given(seed=st.integers(0, 2**64 - 1))
@settings(max_examples=30, deadline=None)
def test_seed_keys_never_alias_their_low_bits(seed):
    key = jax.random.key_data(sj.seed_key(seed))
    low = jax.random.key_data(sj.seed_key(seed & 0xFFFFFFFF))
    assert bool((key == low).all()) == (seed < 2**32)
