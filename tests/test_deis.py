"""DEIS (logrho multistep): coefficients, plan, validation and the empirical order of convergence.

Parity with diffusers' ``DEISMultistepScheduler`` is in tests/test_diffusers_parity.py.  The
empirical order follows tests/test_convergence.py (Gaussian problem, linear schedule, x64, RMS
error of x(t_min) against the closed-form flow, slope of log error on log NFE, NFE 40/80/160).
Measured: DEIS-1 0.98, DEIS-2 1.97, DEIS-3 3.91 (faster than 3 at these NFE, as UniPC-3; 3.4-3.9
per doubling up to 640 NFE).  Unlike DPM-Solver 3M (order 2 here), DEIS-3's first-order start
does not cap it: the start is the same DDIM step, so that cap comes from the 3M update itself.
"""

import doctest
import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import scire_jax as sj
from scire_jax.core.solvers import deis, registry
from scire_jax.core.solvers.deis import deis_coefficients
from scire_jax.models import analytic

pytestmark = pytest.mark.usefixtures("x64")  # convergence in float64, as tests/test_convergence.py

NFES = (40, 80, 160)
SCHEDULE = sj.schedules.linear()
MODEL = analytic.Gaussian(mean=np.array([0.5, -0.3]), std=np.array([0.5, 0.8]))
X_START = np.random.default_rng(0).standard_normal((8, 2))  # to jnp inside the tests (x64)


def empirical_order(make_solver):
    truth = analytic.gaussian_flow(MODEL, SCHEDULE, X_START, SCHEDULE.t_max, SCHEDULE.t_min)
    noise_fn = analytic.model_fn(MODEL, SCHEDULE)
    errors, nfes = [], []
    for nfe in NFES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solver = make_solver(nfe)
        x = sj.solve(solver, SCHEDULE, noise_fn, None, jnp.asarray(X_START))
        assert x.dtype == jnp.float64
        errors.append(float(jnp.sqrt(jnp.mean((x - truth) ** 2))))
        nfes.append(sj.plan(solver, SCHEDULE).nfe)
    return -np.polyfit(np.log(nfes), np.log(errors), 1)[0], errors


@pytest.mark.slow
@pytest.mark.parametrize("order,expected", [(1, 1.0), (2, 2.0)])
def test_empirical_order(order, expected):
    measured, errors = empirical_order(lambda n: sj.DEIS(order=order, steps=n))
    assert np.all(np.diff(errors) < 0), errors
    assert abs(measured - expected) <= 0.3, (order, measured, errors)


@pytest.mark.slow
def test_third_order_is_at_least_third_order():
    # measures ~3.9 at 40-160 NFE (3.4 at 320 -> 640)
    measured, errors = empirical_order(lambda n: sj.DEIS(order=3, steps=n))
    assert np.all(np.diff(errors) < 0), errors
    assert measured >= 2.7, (measured, errors)


# -- coefficients ------------------------------------------------------------------------------------------
RHOS = [3.0, 2.0, 1.2, 0.7]  # rho_2, rho_1, rho_0, rho_t (oldest first, then the target)


def test_coefficients_closed_form():
    # the module docstring's formulas, in v = log(rho / rho_0)
    rho_2, rho_1, rho_0, rho_t = RHOS
    v_t = math.log(rho_t / rho_0)

    def bracket(f):
        return rho_t * f(v_t) - rho_0 * f(0.0)

    assert deis_coefficients(RHOS[2:]) == pytest.approx({1: rho_t - rho_0}, rel=1e-14)
    w = math.log(rho_1 / rho_0)
    assert deis_coefficients(RHOS[1:]) == pytest.approx(
        {1: bracket(lambda v: v - w - 1) / -w, 2: bracket(lambda v: v - 1) / w}, rel=1e-13)
    w1, w2 = math.log(rho_1 / rho_0), math.log(rho_2 / rho_0)
    assert deis_coefficients(RHOS) == pytest.approx({
        1: bracket(lambda v: (v - w1) * (v - w2) - (2 * v - w1 - w2) + 2) / (w1 * w2),
        2: bracket(lambda v: v * (v - w2) - (2 * v - w2) + 2) / (w1 * (w1 - w2)),
        3: bracket(lambda v: v * (v - w1) - (2 * v - w1) + 2) / (w2 * (w2 - w1)),
    }, rel=1e-13)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_coefficients_integrate_polynomials_in_log_rho_exactly(order):
    # sum_j c_j p(log rho_j) = int_{rho_0}^{rho_t} p(log rho) d rho for every p of degree < order
    rhos = RHOS[3 - order:]
    weights = deis_coefficients(rhos)
    logs = np.log(rhos[:-1])[::-1]  # age 1 = newest
    for degree in range(order):
        quadrature = sum(weights[j + 1] * logs[j] ** degree for j in range(order))
        # int rho^... : d/drho [rho sum_k (-1)^(d-k) d!/k! u^k] = u^d
        def antiderivative(r, d=degree):
            u = math.log(r)
            return r * sum((-1) ** (d - k) * math.factorial(d) / math.factorial(k) * u ** k for k in range(d + 1))
        assert quadrature == pytest.approx(antiderivative(rhos[-1]) - antiderivative(rhos[-2]), rel=1e-12)


# -- plan and solver ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [3, 10, 14, 15, 25])
def test_nfe_is_steps_and_orders(order, steps):
    the_plan = sj.plan(sj.DEIS(order=order, steps=steps), SCHEDULE)
    assert the_plan.nfe == steps
    orders = list(the_plan.orders[1:])  # after the initial evaluation
    ramp = [min(i, order) for i in range(1, steps + 1)]
    if steps < 15:  # diffusers' rule: lower_order_final only for fewer than 15 steps
        ramp = [min(o, steps + 1 - i) for i, o in enumerate(ramp, start=1)]
    assert orders == ramp
    assert sj.plan(sj.DEIS(order=order, steps=steps, denoise_to_zero=True), SCHEDULE).nfe == steps + 1


def test_order_one_is_ddim():
    noise_fn = analytic.model_fn(MODEL, SCHEDULE)
    x_start = jnp.asarray(X_START)
    deis = sj.solve(sj.DEIS(order=1, steps=12), SCHEDULE, noise_fn, None, x_start)
    ddim = sj.solve(sj.DDIM(steps=12, skip_type="logSNR"), SCHEDULE, noise_fn, None, x_start)
    np.testing.assert_allclose(np.asarray(deis), np.asarray(ddim), rtol=1e-12, atol=1e-13)


def test_fields_label_and_registry():
    solver = sj.DEIS()
    assert (solver.order, solver.skip_type, solver.method, solver.model_kind) == (2, "logSNR", "multistep", "noise")
    assert sj.DEIS(order=3).label() == "DEIS-3"
    assert hash(solver) == hash(sj.DEIS())
    assert registry.solver_from_spec("deis", steps=10) == sj.DEIS(order=3, steps=10)
    assert registry.solver_from_spec("deis:order=1,skip_type=time_uniform", steps=5).label() == "DEIS-1"
    assert "deis" in sj.solver_names()
    times = (1.0, 0.5, 0.2, 0.05)
    assert sj.DEIS(order=2, times=times).steps == 3
    np.testing.assert_array_equal(sj.plan(sj.DEIS(order=2, times=times), SCHEDULE).times, np.array(times))


@pytest.mark.parametrize("kwargs,match", [
    (dict(order=4), "order=4"),
    (dict(order=0), "order=0"),
    (dict(order=2.0), "order=2.0"),
    (dict(method="singlestep"), "method='singlestep'"),
    (dict(steps=2, order=3), "steps must be >= order"),
    (dict(steps=0), "steps=0"),
    (dict(skip_type="uniform"), "skip_type='uniform'"),
    (dict(lower_order_final="yes"), "lower_order_final"),
    (dict(times=(0.5, 1.0)), "strictly decreasing"),
    (dict(times=(1.0, 0.5), t_end=0.1), "contradicts times"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sj.DEIS(**kwargs)


def test_spec_errors():
    with pytest.raises(ValueError, match="field 'phi' is not allowed for deis"):
        registry.solver_from_spec("deis:phi=1", steps=10)
    with pytest.raises(ValueError, match="order=5"):
        registry.solver_from_spec("deis:order=5", steps=10)


def test_docstring_examples():
    result = doctest.testmod(deis, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
