"""Tests of scire_jax.models.analytic: exact models against the official reference data, and the ODE ground truth."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scire_jax.core import schedules
from scire_jax.models import analytic

pytestmark = pytest.mark.usefixtures("x64")  # parity with float64 references

REFERENCE = pathlib.Path(__file__).parent / "data" / "reference"


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def manifest():
    return json.loads((REFERENCE / "manifest.json").read_text())


@pytest.fixture(scope="module")
def blocks():
    return np.load(REFERENCE / "building_blocks.npz")


def reference_schedule(name, impl="scire"):
    """The schedule a reference case used (dpm_solver_pytorch clips discrete tables at half-logSNR -5.1)."""
    clip = -5.1 if impl == "dpm" else None
    tables = np.load(REFERENCE / "schedules.npz")
    if name == "ddpm_linear_1000":
        return schedules.discrete(betas=tables["ddpm_linear_1000/betas"], clip_log_snr=clip)
    if name == "cosine_discrete_1000":
        return schedules.discrete(alphas_cumprod=tables["cosine_discrete_1000/alphas_cumprod"], clip_log_snr=clip)
    if name == "vp_linear":
        return schedules.linear()
    if name == "vp_cosine":
        return schedules.cosine()
    raise KeyError(name)


def rel_err(value, expected):
    value, expected = np.asarray(value), np.asarray(expected)
    return float(np.max(np.abs(value - expected)) / np.max(np.abs(expected)))


def wrapper_blocks(manifest, guidance_type):
    return [b for b in manifest["building_blocks"]
            if b["kind"] == "model_wrapper" and b["params"]["model_type"] == "noise"
            and b["params"]["guidance_type"] == guidance_type]


# -- noise predictions against the official generator ----------------------------------------------------


def test_noise_matches_reference_eps_exact(manifest, blocks):
    cases = wrapper_blocks(manifest, "uncond")
    assert len(cases) >= 7
    for block in cases:
        model = analytic.from_manifest(manifest["models"][block["model"]])
        noise_fn = jax.jit(analytic.model_fn(model, reference_schedule(block["schedule"], block["impl"])))
        x = blocks[block["keys"]["x"]]
        for i, t in enumerate(block["params"]["times"]):
            eps = noise_fn(None, jnp.asarray(x), jnp.full(x.shape[:1], t))
            assert eps.shape == x.shape and eps.dtype == jnp.float64
            assert rel_err(eps, blocks[block["keys"]["eps_exact"]][i]) < 1e-10, block["id"]
            assert rel_err(eps, blocks[block["keys"]["out"]][i]) < 1e-10, block["id"]


@jax.jit
def _guidance_parts(model, schedule, x, t, condition, unconditional):
    """Conditional, unconditional-id, no-condition noise and the classifier gradient, in one compiled call."""
    log_prob = analytic.classifier_fn(model, schedule)
    grad = jax.grad(lambda z: jnp.sum(log_prob(z, t, condition)))(x)
    return (model.noise(x, t, schedule, condition), model.noise(x, t, schedule, unconditional),
            model.noise(x, t, schedule), grad, schedule.sigma(t))


def test_conditional_noise_and_classifier_match_reference_guidance(manifest, blocks):
    """Classifier-free and classifier guidance outputs of the official wrapper, rebuilt from our model."""
    checked = 0
    for guidance in ("classifier-free", "classifier"):
        for block in wrapper_blocks(manifest, guidance):
            params = block["params"]
            model = analytic.from_manifest(manifest["models"][block["model"]])
            assert isinstance(model, analytic.ConditionalGaussians)
            schedule = reference_schedule(block["schedule"], block["impl"])
            x = blocks[block["keys"]["x"]]
            times = len(params["times"])
            # all times at once: batch (times * B)
            x_all = jnp.asarray(np.tile(x, (times, 1)))
            t_all = jnp.asarray(np.repeat(params["times"], x.shape[0]))
            condition = jnp.asarray(np.tile(params["condition"], times))
            uncond_ids = params["unconditional_condition"] or [0] * x.shape[0]
            unconditional = jnp.asarray(np.tile(uncond_ids, times))
            eps_c, eps_u, eps_0, grad, sigma = _guidance_parts(model, schedule, x_all, t_all, condition, unconditional)
            scale = params["guidance_scale"]
            if guidance == "classifier":
                out = eps_0 - scale * sigma[:, None] * grad
            elif scale == 1.0 or params["unconditional_condition"] is None:
                out = eps_c
            else:
                out = eps_u + scale * (eps_c - eps_u)
            out = np.asarray(out).reshape((times,) + x.shape)
            for i in range(times):
                assert rel_err(out[i], blocks[block["keys"]["out"]][i]) < 1e-10, block["id"]
                checked += 1
    assert checked >= 60


def test_conditional_components_and_log_prob():
    rng = np.random.default_rng(3)
    model = analytic.ConditionalGaussians([0.2, 0.5, 0.3], rng.normal(size=(3, 2, 3)), rng.uniform(0.2, 1, (3, 2, 3)))
    schedule = schedules.linear()
    x = jnp.asarray(rng.standard_normal((6, 2, 3)))
    t = jnp.linspace(0.05, 0.9, 6)
    condition = jnp.asarray([0, 1, 2, 3, 0, 2])

    @jax.jit
    def check(x, t):
        eps = model.noise(x, t, schedule, condition)
        per_condition = jnp.stack([model.conditional(c).noise(x, t, schedule) for c in range(4)])  # (4, B, ...)
        selected = per_condition[condition, jnp.arange(x.shape[0])]
        log_probs = jnp.stack([model.log_prob_condition(x, t, schedule, c) for c in (1, 2, 3)], axis=-1)
        # Bayes: grad log p(c|x) = grad log p(x|c) - grad log p(x) = -(eps_c - eps_mix) / sigma
        grad = jax.grad(lambda z: jnp.sum(model.log_prob_condition(z, t, schedule, 2)))(x)
        bayes = -(per_condition[2] - per_condition[0]) / schedule.sigma(t)[:, None, None]
        return eps, selected, log_probs, model.log_prob_condition(x, t, schedule, 0), grad, bayes

    eps, selected, log_probs, log_prob_0, grad, bayes = check(x, t)
    assert rel_err(eps, selected) < 1e-13
    # log p(c | x) over the classes is a normalised distribution; id 0 gives 0
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-13)
    np.testing.assert_array_equal(log_prob_0, 0.0)
    assert rel_err(grad, bayes) < 1e-10


def test_gmm_with_one_component_equals_gaussian():
    rng = np.random.default_rng(0)
    shape = (3, 8, 8)
    mean, std = rng.normal(size=shape), rng.uniform(0.1, 1.2, size=shape)
    gaussian = analytic.Gaussian(mean, std)
    mixture = analytic.GaussianMixture([1.0], mean[None], std[None])
    x = jnp.asarray(rng.standard_normal((4,) + shape))
    for schedule in (schedules.linear(), schedules.cosine(), schedules.edm()):
        for t in (schedule.t_min, 0.3, schedule.t_max):
            t = jnp.full((4,), t)
            assert rel_err(mixture.noise(x, t, schedule), gaussian.noise(x, t, schedule)) < 1e-13
    # the same in float32 under jit
    schedule = schedules.linear()
    x32, t32 = x.astype(jnp.float32), jnp.full((4,), 0.02, jnp.float32)
    out = jax.jit(analytic.model_fn(mixture, schedule))(None, x32, t32)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    assert rel_err(out, gaussian.noise(x, 0.02, schedule)) < 1e-5


def test_gmm_is_stable_far_from_the_data():
    rng = np.random.default_rng(1)
    model = analytic.GaussianMixture([0.5, 0.5], rng.normal(size=(2, 3, 8, 8)), np.full((2, 3, 8, 8), 0.05))
    x = jnp.asarray(50.0 * rng.standard_normal((2, 3, 8, 8)))
    eps = model.noise(x, jnp.full((2,), 1e-3), schedules.linear())
    assert bool(jnp.all(jnp.isfinite(eps)))


# -- ground truth of the probability-flow ODE --------------------------------------------------------------


@pytest.mark.parametrize("schedule_name,shape", [("linear", (16,)), ("discrete", (3, 8, 8))])
def test_gaussian_closed_form_matches_diffrax(schedule_name, shape):
    schedule = (schedules.linear() if schedule_name == "linear"
                else schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000)))
    rng = np.random.default_rng(7)
    model = analytic.Gaussian(rng.normal(size=shape), rng.uniform(0.2, 1.0, size=shape))
    x_start = rng.standard_normal((3,) + shape)
    exact = analytic.gaussian_flow(model, schedule, x_start, 1.0, 1e-3)
    reference = analytic.reference_solution(model, schedule, x_start, 1.0, 1e-3)
    assert reference.shape == x_start.shape and reference.dtype == jnp.float64
    assert rel_err(reference, exact) < 1e-8
    assert rel_err(analytic.ode_solution(model, schedule, x_start, 1.0, 1e-3), exact) == 0.0


def test_reference_solution_matches_reference_truth(manifest):
    cases = [c for c in manifest["cases"] if c["family"] == "convergence"]
    data = np.load(REFERENCE / "convergence.npz")
    by_model = {}
    for case in cases:
        by_model.setdefault(case["model"], []).append(case)
    assert set(by_model) == {"gmm_d5_k4_diag", "gauss_d7"}
    for name, group in by_model.items():
        first = group[0]
        assert first["schedule"] == "vp_linear"
        x_T, truth = data[first["keys"]["x_T"]], data[first["keys"]["truth_t_end"]]
        for case in group:  # every case of a model shares x_T, t_T, t_0 and the truth
            assert (case["t_T"], case["t_0"]) == (first["t_T"], first["t_0"])
            np.testing.assert_array_equal(data[case["keys"]["truth_t_end"]], truth)
        model = analytic.from_manifest(manifest["models"][name])
        schedule = reference_schedule("vp_linear")
        if isinstance(model, analytic.Gaussian):
            assert rel_err(analytic.gaussian_flow(model, schedule, x_T, first["t_T"], first["t_0"]), truth) < 1e-13
        else:
            solution = analytic.reference_solution(model, schedule, x_T, first["t_T"], first["t_0"])
            assert rel_err(solution, truth) < 1e-8


def test_reference_solution_requires_x64():
    model = analytic.Gaussian(np.zeros(2), np.ones(2))
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="jax_enable_x64"):
            analytic.reference_solution(model, schedules.linear(), np.zeros((1, 2)), 1.0, 1e-3)
    with pytest.raises(ValueError, match="solver"):
        analytic.reference_solution(model, schedules.linear(), np.zeros((1, 2)), 1.0, 1e-3, solver="euler")


# -- construction, adapters, sampling ---------------------------------------------------------------------


def test_from_manifest_builds_every_model(manifest):
    kinds = {"gaussian": analytic.Gaussian, "gmm": analytic.GaussianMixture,
             "conditional_gaussians": analytic.ConditionalGaussians}
    for name, entry in manifest["models"].items():
        model = analytic.from_manifest(entry)
        assert isinstance(model, kinds[entry["kind"]]), name
        assert model.shape == tuple(entry["shape"])
        assert model == analytic.from_manifest(entry) and hash(model) == hash(analytic.from_manifest(entry))
    with pytest.raises(ValueError, match="kind"):
        analytic.from_manifest({"kind": "laplace"})
    with pytest.raises(ValueError, match="std"):
        analytic.Gaussian([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="weights"):
        analytic.GaussianMixture([0.5, 0.5], np.zeros((3, 2)), np.ones((3, 2)))


def test_models_are_static_jit_arguments():
    schedule = schedules.cosine()
    model = analytic.GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [[0.5, 0.5], [0.3, 0.2]])
    traces = []

    @jax.jit
    def as_pytree(m, x, t):
        traces.append(1)
        return m.noise(x, t, schedule)

    f_static = jax.jit(lambda m, x, t: m.noise(x, t, schedule), static_argnums=0)
    x, t = jnp.ones((2, 2)), jnp.full((2,), 0.5)
    expected = model.noise(x, t, schedule)
    same = analytic.GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [[0.5, 0.5], [0.3, 0.2]])
    for m in (model, same):
        assert rel_err(as_pytree(m, x, t), expected) == 0.0
        assert rel_err(f_static(m, x, t), expected) == 0.0
    assert len(traces) == 1
    # vmap over samples
    per_sample = jax.vmap(lambda xi, ti: model.noise(xi[None], ti, schedule)[0])(x, t)
    assert rel_err(per_sample, expected) < 1e-15


def test_raw_model_fn_conversions():
    schedule = schedules.linear()
    model = analytic.Gaussian(np.array([0.5, -1.0, 2.0]), np.array([0.3, 1.0, 0.7]))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3)))
    t = jnp.asarray([1.0, 0.5, 0.1, 0.002])
    eps = model.noise(x, t, schedule)
    alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    t_input = schedule.time_input(t)  # "discrete": 1000 (t - 1/N)
    raw = {p: analytic.raw_model_fn(model, schedule, p)(None, x, t_input) for p in ("noise", "x_start", "v", "score")}
    assert rel_err(raw["noise"], eps) < 1e-12
    assert rel_err((x - alpha * raw["x_start"]) / sigma, eps) < 1e-10
    assert rel_err(alpha * raw["v"] + sigma * x, eps) < 1e-12
    assert rel_err(-sigma * raw["score"], eps) < 1e-12
    continuous = analytic.raw_model_fn(model, schedule, time_input="continuous")(None, x, t)
    assert rel_err(continuous, eps) == 0.0


def test_sample_data_moments():
    key = jax.random.PRNGKey(0)
    sample_data = jax.jit(analytic.sample_data, static_argnums=(2, 3))
    gaussian = analytic.Gaussian(np.array([[1.0, -2.0]]), np.array([[0.5, 2.0]]))
    samples = sample_data(gaussian, key, 20000)
    assert samples.shape == (20000, 1, 2)
    np.testing.assert_allclose(samples.mean(0), gaussian.mean, atol=0.05)
    np.testing.assert_allclose(samples.std(0), gaussian.std, rtol=0.03)
    mixture = analytic.GaussianMixture([0.25, 0.75], [[-3.0], [3.0]], [[0.1], [0.1]])
    samples = sample_data(mixture, key, 20000)
    np.testing.assert_allclose(float(jnp.mean(samples > 0)), 0.75, atol=0.02)
    conditional = analytic.ConditionalGaussians([0.5, 0.5], [[-3.0], [3.0]], [[0.1], [0.1]])
    assert bool(jnp.all(sample_data(conditional, key, 100, 2) > 0))
    prior = analytic.prior_sample(key, (3, 4))
    assert prior.shape == (3, 4) and prior.dtype == jnp.float64
