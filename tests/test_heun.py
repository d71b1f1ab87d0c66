"""EDM's deterministic Heun sampler as a solver of the shared engine."""

import jax.numpy as jnp
import numpy as np
import pytest

import scire_jax as sj

pytestmark = pytest.mark.usefixtures("x64")


def _edm_algorithm_1(denoise, x, num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM's Algorithm 1 (S_churn = 0) written out directly, in float64 numpy."""
    i = np.arange(num_steps)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = np.append(t, 0.0)
    for k in range(num_steps):
        d = (x - denoise(x, t[k])) / t[k]
        x_next = x + (t[k + 1] - t[k]) * d
        if k < num_steps - 1:
            d_next = (x_next - denoise(x_next, t[k + 1])) / t[k + 1]
            x_next = x + (t[k + 1] - t[k]) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x


@pytest.mark.parametrize("num_steps", [2, 5, 18])
def test_heun_equals_edm_algorithm_1(num_steps):
    schedule = sj.schedules.edm()
    model = sj.analytic.GaussianMixture(weights=np.array([0.3, 0.7]), means=np.array([[0.5, -0.2], [-0.4, 0.1]]),
                                        stds=0.3)
    noise_fn = sj.analytic.model_fn(model, schedule)

    def denoise(x, sigma):
        return x - sigma * np.asarray(noise_fn(None, jnp.asarray(x), jnp.full((x.shape[0],), sigma)))

    x_start = 80.0 * np.random.default_rng(1).standard_normal((6, 2))
    solver = sj.EDMHeun(steps=num_steps)
    assert sj.plan(solver, schedule).nfe == 2 * num_steps - 1
    ours = np.asarray(sj.solve(solver, schedule, noise_fn, None, x_start))
    np.testing.assert_allclose(ours, _edm_algorithm_1(denoise, x_start, num_steps), rtol=1e-10, atol=1e-10)


def test_heun_converges_at_second_order():
    schedule = sj.schedules.edm()
    model = sj.analytic.Gaussian(np.full(2, 0.2), np.full(2, 0.5))
    noise_fn = sj.analytic.model_fn(model, schedule)
    x_start = 80.0 * np.random.default_rng(2).standard_normal((8, 2))
    truth = np.asarray(sj.analytic.gaussian_flow(model, schedule, x_start, 80.0, 0.002))
    errors = []
    for n in (20, 40, 80):
        solver = sj.EDMHeun(steps=n, denoise_to_zero=False)
        errors.append(float(np.max(np.abs(np.asarray(sj.solve(solver, schedule, noise_fn, None, x_start)) - truth))))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 1.7), (errors, orders)


def test_heun_validation_and_times():
    with pytest.raises(ValueError, match="order"):
        sj.EDMHeun(order=3)
    with pytest.raises(ValueError, match="steps"):
        sj.EDMHeun(steps=1)
    grid = sj.timesteps.time_grid(sj.schedules.edm(), "karras", 80.0, 0.002, 9)
    explicit = sj.EDMHeun(times=grid)
    assert explicit.steps == 10
    assert sj.plan(explicit, sj.schedules.edm()).nfe == sj.plan(sj.EDMHeun(steps=10), sj.schedules.edm()).nfe == 19
