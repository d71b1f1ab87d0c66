"""Public API: validation at build time, one trace, exact NFE, schedules, grids, phi."""

import itertools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scire_jax as sj
from scire_jax.core.solvers.scire import multistep_phi_schedule, singlestep_phi_schedule
from scire_jax.models import analytic

DDPM_BETAS = np.linspace(1e-4, 0.02, 1000)


def _gaussian_noise_fn(schedule, dim=3):
    model = analytic.Gaussian(mean=np.full(dim, 0.5), std=np.full(dim, 0.5))
    return analytic.model_fn(model, schedule)


# -- validation ------------------------------------------------------------------------------------

INVALID_SOLVER_ARGUMENTS = [
    (dict(method="adaptive"), "method='adaptive'"),
    (dict(algorithm="v3"), "algorithm='v3'"),
    (dict(algorithm="scire_v1"), "algorithm='scire_v1'"),
    (dict(skip_type="uniform"), "skip_type='uniform'"),
    (dict(order=4), "order=4"),
    (dict(order=0), "order=0"),
    (dict(steps=0), "steps=0"),
    (dict(steps=2, order=3), "steps=2 is not allowed with order=3"),
    (dict(steps=2.5), "steps=2.5"),
    (dict(t_end=0.0), "t_end=0.0"),
    (dict(t_end=-1e-3), "t_end=-0.001"),
    (dict(t_start=0.5, t_end=0.6), "t_end=0.6"),
    (dict(phi=0.0), "phi=0.0"),
    (dict(phi="sometimes"), "phi='sometimes'"),
    (dict(thresholding="static"), "thresholding='static'"),
]


@pytest.mark.parametrize("kwargs,message", INVALID_SOLVER_ARGUMENTS, ids=lambda v: str(v))
def test_invalid_solver_argument_names_parameter_value_and_allowed(kwargs, message):
    with pytest.raises(ValueError) as error:
        sj.SciRE(**kwargs)
    text = str(error.value)
    assert message in text
    assert "allowed" in text or "must" in text


def test_schedule_dependent_errors_raise_when_the_sampler_is_built():
    discrete = sj.schedules.discrete(betas=DDPM_BETAS)
    noise_fn = _gaussian_noise_fn(discrete)
    with pytest.raises(ValueError, match=r"t_end=0.0005 is not allowed for a discrete schedule .* >= 1/1000"):
        sj.make_sampler(sj.SciRE(t_end=5e-4), discrete, noise_fn)
    with pytest.raises(ValueError, match=r"t_start=2.0 is not allowed: it must be <= t_max"):
        sj.make_sampler(sj.SciRE(t_start=2.0), sj.schedules.linear(), noise_fn)
    with pytest.raises(ValueError, match="t_end=0.9 is not allowed: it must be smaller than t_start=0.5"):
        sj.make_sampler(sj.SciRE(t_start=0.5, t_end=None), sj.schedules.edm(0.9, 1.0), noise_fn)
    with pytest.raises(ValueError, match="schedule="):
        sj.make_sampler(sj.SciRE(), "linear", noise_fn)
    with pytest.raises(ValueError, match="solver="):
        sj.make_sampler("scire", discrete, noise_fn)


def test_wrap_model_rejects_bad_arguments():
    schedule = sj.schedules.linear()
    with pytest.raises(ValueError, match="prediction='eps'.*allowed"):
        sj.wrap_model(lambda p, x, t: x, schedule, prediction="eps")
    with pytest.raises(ValueError, match="time_input='seconds'.*allowed"):
        sj.wrap_model(lambda p, x, t: x, schedule, time_input="seconds")
    with pytest.raises(ValueError, match="apply_fn=3 is not callable"):
        sj.wrap_model(3, schedule)
    with pytest.raises(ValueError, match="guidance="):
        sj.wrap_model(lambda p, x, t: x, schedule, guidance="cfg")


def test_model_output_shape_and_dtype_mismatch_raise_value_error():
    schedule = sj.schedules.linear()
    solver = sj.SciRE(steps=4)
    x = jnp.ones((2, 3))
    bad_shape = sj.wrap_model(lambda p, x, t: x[:, :2], schedule)
    with pytest.raises(ValueError, match=r"apply_fn output has shape \(2, 2\), but the model input x has shape \(2, 3\)"):
        sj.solve(solver, schedule, bad_shape, None, x)
    bad_dtype = sj.wrap_model(lambda p, x, t: jnp.ones(x.shape, jnp.int32), schedule)
    with pytest.raises(ValueError, match="dtype int32; a floating dtype is required"):
        sj.solve(solver, schedule, bad_dtype, None, x)
    with pytest.raises(ValueError, match="noise_fn output has shape"):
        sj.solve(solver, schedule, lambda p, x, t: x[:1], None, x)


def test_schedule_constructors_reject_bad_tables():
    with pytest.raises(ValueError, match="exactly one"):
        sj.schedules.discrete()
    with pytest.raises(ValueError, match="betas must hold finite values"):
        sj.schedules.discrete(betas=np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="beta_0"):
        sj.schedules.linear(beta_0=30.0, beta_1=20.0)


# -- tracing and NFE ---------------------------------------------------------------------------------


class CountingModel:
    """Counts network calls in the traced program (a host callback per call)."""

    def __init__(self, schedule):
        self.calls = 0
        self.inner = _gaussian_noise_fn(schedule)

    def _count(self):
        self.calls += 1

    def __call__(self, params, x, t):
        jax.debug.callback(self._count, ordered=True)
        return self.inner(params, x, t)


ALL_CONFIGURATIONS = list(itertools.product(("v1", "v2"), ("multistep", "singlestep_agile", "singlestep_fixed"),
                                            (1, 2, 3), (5, 10)))


@pytest.mark.parametrize("algorithm,method,order,steps", ALL_CONFIGURATIONS)
def test_network_is_called_exactly_nfe_times(algorithm, method, order, steps):
    schedule = sj.schedules.discrete(betas=DDPM_BETAS)
    model = CountingModel(schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solver = sj.SciRE(algorithm=algorithm, method=method, order=order, steps=steps, denoise_to_zero=steps == 5)
    the_plan = sj.plan(solver, schedule)
    expected = (steps // order * order if method == "singlestep_fixed" else steps) + (1 if steps == 5 else 0)
    assert the_plan.nfe == expected
    x = sj.solve(solver, schedule, model, None, jnp.ones((2, 3)))
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert model.calls == expected
    assert np.all(np.isfinite(np.asarray(x)))


def test_jitted_sampler_traces_once_and_is_deterministic():
    schedule = sj.schedules.linear()
    noise_fn = sj.wrap_model(lambda params, x, t: params["w"] * x, schedule)
    sample_fn = sj.make_sampler(sj.SciRE(order=3, steps=8), schedule, noise_fn)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, key):
        return sample_fn(params, key, (4, 3))

    a = run({"w": jnp.float32(0.3)}, jax.random.key(0))
    b = run({"w": jnp.float32(0.5)}, jax.random.key(1))
    c = run({"w": jnp.float32(0.3)}, jax.random.key(0))
    chex.assert_trees_all_equal(a, c)
    assert not np.allclose(a, b)


def test_jit_with_static_shape_as_documented():
    schedule = sj.schedules.linear()
    sample_fn = sj.make_sampler(sj.SciRE(steps=6), schedule, _gaussian_noise_fn(schedule))
    x = jax.jit(sample_fn, static_argnums=2)(None, jax.random.key(3), (5, 3))
    assert x.shape == (5, 3)


def test_initial_noise_depends_only_on_key_and_index():
    key = jax.random.key(7)
    full = sj.initial_noise(key, (8, 4), jnp.float32)
    first = sj.initial_noise(key, (3, 4), jnp.float32)
    chex.assert_trees_all_equal(full[:3], first)


def test_compile_structure_independent_of_steps():
    schedule = sj.schedules.linear()
    for steps in (10, 200):
        p = sj.plan(sj.SciRE(order=3, steps=steps), schedule)
        # start-up, warm-up orders, main run, lower-order final steps: a fixed number of scans
        assert len(p.segments) <= 4


def test_trajectory_times_and_values():
    schedule = sj.schedules.linear()
    noise_fn = _gaussian_noise_fn(schedule)
    solver = sj.SciRE(order=2, steps=6, skip_type="time_uniform")
    x_start = jnp.ones((2, 3))
    x, trajectory = sj.solve(solver, schedule, noise_fn, None, x_start, return_trajectory=True)
    the_plan = sj.plan(solver, schedule)
    assert trajectory.shape == (7, 2, 3)
    np.testing.assert_allclose(the_plan.trajectory_times, np.linspace(1.0, 1e-3, 7), rtol=1e-12)
    chex.assert_trees_all_close(trajectory[0], x_start)
    chex.assert_trees_all_close(trajectory[-1], x)


def test_bf16_network_keeps_float32_solver_state():
    schedule = sj.schedules.linear()
    seen = []

    def apply_fn(params, x, t):
        seen.append(x.dtype)
        return (0.5 * x).astype(jnp.bfloat16)

    noise_fn = sj.wrap_model(apply_fn, schedule, network_dtype=jnp.bfloat16)
    x = sj.solve(sj.SciRE(steps=5), schedule, noise_fn, None, jnp.ones((2, 3), jnp.float32))
    assert x.dtype == jnp.float32 and seen and all(d == jnp.bfloat16 for d in seen)
    x_low = sj.solve(sj.SciRE(steps=5), schedule, noise_fn, None, jnp.ones((2, 3), jnp.bfloat16))
    assert x_low.dtype == jnp.float32


# -- schedules, grids, phi ------------------------------------------------------------------------------


def test_spec_reference_values():
    linear = sj.schedules.linear()
    assert float(linear.nsr(0.5)) == pytest.approx(3.412918309, rel=1e-9)
    assert float(linear.alpha(1e-3)) == pytest.approx(0.9999450265, rel=1e-9)
    assert float(linear.sigma(1e-3)) == pytest.approx(0.01048541634, rel=1e-9)
    nsr1, nsr05 = float(linear.nsr(1.0)), float(linear.nsr(0.5))
    assert float(linear.inverse_nsr(nsr1 + 0.5 * (nsr05 - nsr1))) == pytest.approx(0.9305069075, rel=1e-9)
    grid = sj.timesteps.time_grid(linear, "NSR", 1.0, 1e-3, 10)
    np.testing.assert_allclose(grid, [1, 0.914638, 0.820498, 0.714295, 0.590734, 0.443174, 0.276847, 0.135736,
                                      0.054236, 0.016113, 0.001], atol=1e-6)
    cosine = sj.schedules.cosine()
    assert float(cosine.alpha(0.9946)) == pytest.approx(8.415535e-3, rel=1e-6)
    assert float(cosine.nsr(1e-3)) == pytest.approx(6.425413e-3, rel=1e-6)


@pytest.mark.parametrize("schedule", [sj.schedules.linear(), sj.schedules.cosine(), sj.schedules.edm(),
                                      sj.schedules.discrete(betas=DDPM_BETAS)], ids=lambda s: s.name)
def test_inverses_round_trip_in_numpy_and_jax(x64, schedule):
    t = np.linspace(schedule.t_min, schedule.t_max, 7)
    np.testing.assert_allclose(schedule.inverse_nsr(schedule.nsr(t)), t, rtol=1e-9)
    np.testing.assert_allclose(schedule.inverse_log_snr(schedule.log_snr(t)), t, rtol=1e-9)
    jt = jnp.asarray(t)
    np.testing.assert_allclose(np.asarray(schedule.inverse_nsr(schedule.nsr(jt))), t, rtol=1e-9)


@pytest.mark.parametrize("skip_type", sj.timesteps.SKIP_TYPES)
def test_time_grids_are_decreasing_and_start_at_t_start(skip_type):
    for schedule in (sj.schedules.linear(), sj.schedules.edm()):
        grid = sj.timesteps.time_grid(schedule, skip_type, schedule.t_max, schedule.t_min, 12)
        assert grid.shape == (13,)
        assert np.all(np.diff(grid) < 0)
        assert grid[0] == pytest.approx(schedule.t_max, rel=1e-9)
        assert grid[-1] == pytest.approx(schedule.t_min, rel=1e-6)


def test_karras_grid_matches_edm_formula():
    schedule = sj.schedules.edm()
    grid = sj.timesteps.time_grid(schedule, "karras", 80.0, 0.002, 18)
    i = np.arange(19) / 18
    expected = (80.0 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(grid, expected, rtol=1e-12)


def test_series_phi_values_and_limit():
    phis = sj.series_phi(1.0, 14)
    np.testing.assert_allclose(phis[:4], [2 / 3, 5 / 8, 19 / 30, 91 / 144], rtol=1e-15)
    assert phis[-1] == pytest.approx(1 - np.exp(-1), abs=1e-10)
    assert sj.series_phi(1.0, 0) == []


def test_official_phi_tables_of_the_spec():
    # the official phi schedules (docs/design.md section 5): multistep steps=10 order=3 and singlestep K=5 (steps=10, order=2)
    phis = sj.series_phi(1.0, 11)
    indices = [1, 3, 1, 3, 10, 8, 6, 4, 2, 0]
    np.testing.assert_allclose(multistep_phi_schedule(10, 3), [phis[i] for i in indices])
    single = sj.series_phi(1.0, 5)
    np.testing.assert_allclose(singlestep_phi_schedule(5, 5), [single[i] for i in [0, 2, 4, 3, 1]])
    p = sj.plan(sj.SciRE(method="singlestep_agile", order=3, steps=10), sj.schedules.linear())
    assert list(p.orders) == [3, 3, 3, 1]


def test_constant_phi_option():
    p = sj.plan(sj.SciRE(order=2, steps=10, phi=1.0), sj.schedules.linear())
    assert np.all(p.phi[~np.isnan(p.phi)] == 1.0)


def test_plan_is_printable_and_cached():
    schedule = sj.schedules.linear()
    solver = sj.SciRE(order=3, steps=10)
    assert sj.plan(solver, schedule) is sj.plan(solver, schedule)
    text = sj.plan(solver, schedule).summary()
    assert "NFE = 10" in text


def test_dynamic_thresholding_per_sample_quantile(x64):
    x0 = jnp.stack([jnp.linspace(-3, 3, 100), jnp.linspace(-0.5, 0.5, 100)])
    out = sj.dynamic_thresholding(x0, 0.995, 1.0)
    q = np.quantile(np.abs(np.asarray(x0[0])), 0.995)
    np.testing.assert_allclose(out[0], np.clip(x0[0], -q, q) / q, rtol=1e-12)
    np.testing.assert_allclose(out[1], x0[1])  # threshold floored at max_value = 1
