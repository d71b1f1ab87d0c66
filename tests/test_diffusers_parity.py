"""Parity with diffusers' PyTorch schedulers through explicit ``times=`` (float64, 1e-6 relative).

Both sides run the same model (the exact noise predictor of a Gaussian, in torch for diffusers and
through ``sj.wrap_model(analytic.raw_model_fn(...))`` here, which sees the network time
``1000 (t - 1/N) = k``), the same ``alphas_cumprod`` table, the same timesteps and the same ``x_T``.
The grid is :func:`scire_jax.core.diffusers_grid.from_diffusers_timesteps` of
``scheduler.timesteps``.

diffusers keeps its tables in float32 (``betas``, ``alphas_cumprod``, ``sigmas``) and
``DPMSolverMultistepScheduler.step`` rounds the state to float32 (``sample.to(torch.float32)``).
For a float64 comparison the tables are replaced by the float64 ones (checked to agree with
diffusers' float32 values to float32 round-off) and, for DPM-Solver, that rounding is lifted by
giving the module a ``torch`` whose ``float32`` is ``float64``.  Nothing else of diffusers is
touched.  (With the rounding left in, DPM-Solver agrees to ~1e-7-6e-7.)
"""

import doctest
import warnings

import diffusers
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_module
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import scire_jax as sj
from scire_jax.core import diffusers_grid
from scire_jax.core.diffusers_grid import diffusers_timesteps, from_diffusers_timesteps
from scire_jax.models import analytic

pytestmark = pytest.mark.usefixtures("x64")  # float64 on both sides

RTOL = 1e-6
N = 1000
BETAS = np.linspace(1e-4, 0.02, N)
ALPHAS_CUMPROD = np.cumprod(1.0 - BETAS)
SCHEDULE = sj.schedules.discrete(betas=BETAS)
MEAN = np.array([1.5, -2.0, 1.0])
STD = np.array([0.3, 0.5, 0.2])
NOISE_FN = sj.wrap_model(analytic.raw_model_fn(analytic.Gaussian(mean=MEAN, std=STD), SCHEDULE), SCHEDULE)
X_T = np.random.default_rng(0).standard_normal((4, 3))
# samples stay away from 0 (means 1.5, -2, 1 with std <= 0.5), so an element-wise relative error is meaningful
EXECUTE = jax.jit(sj.execute, static_argnums=1)


class _Float64Torch:
    """``torch`` with ``float32`` meaning ``float64`` (lifts DPM-Solver's float32 rounding of the state)."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture(autouse=True)
def _float64_diffusers(monkeypatch):
    monkeypatch.setattr(dpm_module, "torch", _Float64Torch())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' deprecation notices
        yield


def torch_model(x, k):
    """The Gaussian's exact noise prediction at integer timestep ``k`` (torch, float64)."""
    alpha2 = torch.tensor(ALPHAS_CUMPROD[int(k)], dtype=torch.float64)
    alpha, sigma = alpha2.sqrt(), (1.0 - alpha2).sqrt()
    mean, std = torch.from_numpy(MEAN), torch.from_numpy(STD)
    return sigma * (x - alpha * mean) / (alpha2 * std ** 2 + sigma ** 2)


def diffusers_sample(cls, steps, **config):
    """diffusers' sampling loop in float64; returns ``(x_0, timesteps)``."""
    scheduler = cls(num_train_timesteps=N, **config)
    table = torch.from_numpy(ALPHAS_CUMPROD)
    assert np.allclose(scheduler.alphas_cumprod.numpy(), ALPHAS_CUMPROD, rtol=1e-6, atol=0)
    scheduler.alphas_cumprod = table
    if cls is diffusers.DDIMScheduler:
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if config["set_alpha_to_one"] \
            else table[0]
    else:
        scheduler.alpha_t, scheduler.sigma_t = table.sqrt(), (1.0 - table).sqrt()
        scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.numpy()
    if cls is not diffusers.DDIMScheduler:
        sigmas = np.sqrt((1.0 - ALPHAS_CUMPROD) / ALPHAS_CUMPROD)  # diffusers' sigma = sigma_t / alpha_t
        final = 0.0 if float(scheduler.sigmas[-1]) == 0.0 else sigmas[0]
        float64_sigmas = np.concatenate([sigmas[timesteps], [final]])
        np.testing.assert_allclose(float64_sigmas, scheduler.sigmas.numpy(), rtol=1e-6, atol=0)
        scheduler.sigmas = torch.from_numpy(float64_sigmas)
    x = torch.from_numpy(X_T.copy())
    for k in scheduler.timesteps:
        x = scheduler.step(torch_model(x, k), k, x).prev_sample
    assert x.dtype == torch.float64
    return x.numpy(), timesteps


def scire_sample(solver):
    the_plan = sj.plan(solver, SCHEDULE)
    out = EXECUTE(the_plan, NOISE_FN, None, jnp.asarray(X_T))
    assert out.dtype == jnp.float64
    return np.asarray(out), the_plan


def assert_parity(ours, theirs):
    error = float(np.max(np.abs(ours - theirs) / np.abs(theirs)))
    assert error <= RTOL, error
    return error


# -- DDIM ---------------------------------------------------------------------------------------------
DDIM_CASES = [  # (timestep_spacing, steps_offset, set_alpha_to_one, steps)
    ("leading", 1, False, 10), ("leading", 1, True, 10), ("leading", 0, False, 10), ("trailing", 0, False, 8),
    ("trailing", 0, True, 20),
]


@pytest.mark.parametrize("spacing,offset,alpha_to_one,steps", DDIM_CASES)
def test_ddim(spacing, offset, alpha_to_one, steps):
    theirs, timesteps = diffusers_sample(diffusers.DDIMScheduler, steps, timestep_spacing=spacing,
                                         steps_offset=offset, set_alpha_to_one=alpha_to_one, clip_sample=False)
    np.testing.assert_array_equal(timesteps, diffusers_timesteps(steps, N, spacing, offset, scheduler="ddim"))
    grid = from_diffusers_timesteps(timesteps, N, "zero" if alpha_to_one else "sigma_min", step_ratio=N // steps)
    ours, the_plan = scire_sample(sj.DDIM(**grid._asdict()))
    assert_parity(ours, theirs)
    # with steps_offset=0 diffusers' last step (k = 0 -> alphas_cumprod[0]) is a no-op we drop
    assert the_plan.nfe == steps - (offset == 0 and spacing == "leading" and not alpha_to_one)


def test_ddim_linspace_has_no_grid():
    timesteps = diffusers_timesteps(10, N, "linspace", scheduler="ddim")  # 999, 888, ... but steps of 100
    with pytest.raises(ValueError, match="not spaced by step_ratio=100"):
        from_diffusers_timesteps(timesteps, N, step_ratio=100)


# -- DPM-Solver(++) -----------------------------------------------------------------------------------
DPM_CASES = [  # (algorithm_type, solver_order, lower_order_final, steps, timestep_spacing)
    (algorithm, order, lower, 8, "linspace") for algorithm in ("dpmsolver++", "dpmsolver") for order in (1, 2, 3)
    for lower in (True, False)
] + [("dpmsolver++", 3, True, 20, "linspace"), ("dpmsolver", 3, True, 16, "linspace"),
     ("dpmsolver++", 2, True, 6, "leading"), ("dpmsolver++", 2, True, 6, "trailing"),
     ("dpmsolver", 3, False, 7, "trailing")]


@pytest.mark.parametrize("algorithm,order,lower,steps,spacing", DPM_CASES)
def test_dpm_solver_sigma_min(algorithm, order, lower, steps, spacing):
    # diffusers lowers the final orders for < 15 steps, the official DPM-Solver (and sj.DPMSolver) for
    # < 10: they agree for steps < 10 and >= 15 (and always with lower_order_final=False)
    theirs, timesteps = diffusers_sample(diffusers.DPMSolverMultistepScheduler, steps, algorithm_type=algorithm,
                                         solver_order=order, lower_order_final=lower, final_sigmas_type="sigma_min",
                                         timestep_spacing=spacing)
    np.testing.assert_array_equal(timesteps, diffusers_timesteps(steps, N, spacing))
    grid = from_diffusers_timesteps(timesteps, N, "sigma_min")
    ours, the_plan = scire_sample(sj.DPMSolver(algorithm=algorithm, order=order, lower_order_final=lower,
                                               **grid._asdict()))
    assert_parity(ours, theirs)
    assert the_plan.nfe == steps


@pytest.mark.parametrize("order,lower,steps", [(1, True, 8), (2, True, 8), (2, False, 8), (3, False, 8),
                                               (3, True, 20)])
def test_dpm_solver_plus_plus_final_zero(order, lower, steps):
    # final_sigmas_type="zero" (diffusers' default): the last step returns the data prediction at the last
    # timestep = denoise_to_zero; diffusers caps the second-to-last step at order 2 when it lowers (< 15 steps),
    # so order 3 with lower_order_final=True matches only from 15 steps on
    theirs, timesteps = diffusers_sample(diffusers.DPMSolverMultistepScheduler, steps, solver_order=order,
                                         lower_order_final=lower, final_sigmas_type="zero")
    grid = from_diffusers_timesteps(timesteps, N, "zero")
    assert grid.denoise_to_zero and len(grid.times) == steps
    ours, the_plan = scire_sample(sj.DPMSolver(order=order, lower_order_final=False, **grid._asdict()))
    assert_parity(ours, theirs)
    assert the_plan.nfe == steps


# -- UniPC --------------------------------------------------------------------------------------------
UNIPC_CASES = [(variant, order, lower) for variant in ("bh1", "bh2") for order in (1, 2, 3) for lower in (True, False)]


@pytest.mark.parametrize("variant,order,lower", UNIPC_CASES)
def test_unipc_sigma_min(variant, order, lower):
    theirs, timesteps = diffusers_sample(diffusers.UniPCMultistepScheduler, 8, solver_type=variant,
                                         solver_order=order, lower_order_final=lower, final_sigmas_type="sigma_min")
    grid = from_diffusers_timesteps(timesteps, N, "sigma_min")
    ours, the_plan = scire_sample(sj.UniPC(variant=variant, order=order, lower_order_final=lower, **grid._asdict()))
    assert_parity(ours, theirs)
    assert the_plan.nfe == 8


@pytest.mark.parametrize("order", [1, 2])
def test_unipc_bh2_final_zero(order):
    # diffusers lowers the last two orders (final step: data prediction at the last timestep).  Other
    # "zero" configurations have no equivalent: bh1 (any order) and bh2 with lower_order_final=False and
    # order >= 2 give NaN (or a singular solve) in diffusers, bh2 order 3 caps the second-to-last step at 2.
    theirs, timesteps = diffusers_sample(diffusers.UniPCMultistepScheduler, 8, solver_order=order,
                                         final_sigmas_type="zero")
    grid = from_diffusers_timesteps(timesteps, N, "zero")
    ours, _ = scire_sample(sj.UniPC(order=order, lower_order_final=False, **grid._asdict()))
    assert_parity(ours, theirs)


# -- DEIS ---------------------------------------------------------------------------------------------
DEIS_CASES = [(order, lower, 8) for order in (1, 2, 3) for lower in (True, False)] + [(3, True, 12), (3, True, 16)]


@pytest.mark.parametrize("order,lower,steps", DEIS_CASES)
def test_deis(order, lower, steps):
    # DEIS has no final_sigmas_type: it always ends at alphas_cumprod[0] ("sigma_min")
    theirs, timesteps = diffusers_sample(diffusers.DEISMultistepScheduler, steps, solver_order=order,
                                         lower_order_final=lower)
    grid = from_diffusers_timesteps(timesteps, N, "sigma_min")
    ours, the_plan = scire_sample(sj.DEIS(order=order, lower_order_final=lower, **grid._asdict()))
    assert_parity(ours, theirs)
    assert the_plan.nfe == steps


# -- the mapping itself -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler,
                                 diffusers.DEISMultistepScheduler, diffusers.DDIMScheduler])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_diffusers_timesteps_match_set_timesteps(cls, spacing):
    kind = "ddim" if cls is diffusers.DDIMScheduler else "multistep"
    for steps in (1, 3, 7, 10, 25, 50, 999):
        for offset in ((0, 1) if spacing == "leading" else (0,)):
            scheduler = cls(num_train_timesteps=N, timestep_spacing=spacing, steps_offset=offset)
            scheduler.set_timesteps(steps)
            expected = scheduler.timesteps.numpy()
            np.testing.assert_array_equal(diffusers_timesteps(steps, N, spacing, offset, kind), expected)


def test_grid_mapping():
    grid = from_diffusers_timesteps(torch.tensor([999, 500, 0]), N, "sigma_min")  # k = 0 -> 1/N: dropped
    assert grid == ((1.0, 0.501, 0.001), False)
    assert from_diffusers_timesteps([999, 500, 9], N, "sigma_min").times[-1] == SCHEDULE.t_min
    assert from_diffusers_timesteps([999, 500, 9], N, "zero") == ((1.0, 0.501, 0.01), True)
    assert from_diffusers_timesteps([901, 801], N, "zero", step_ratio=100) == ((0.902, 0.802, 0.702), False)
    # the network sees k again
    assert np.allclose(SCHEDULE.time_input(np.array(grid.times)), [999, 500, 0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(timesteps=[999, 999, 500]), "strictly decreasing"),
    (dict(timesteps=[500, 999]), "strictly decreasing"),
    (dict(timesteps=[1000, 5]), r"0\.\.999"),
    (dict(timesteps=[999, -1]), r"0\.\.999"),
    (dict(timesteps=[999.5, 5]), "integers"),
    (dict(timesteps=[[999, 5]]), "1-D"),
    (dict(timesteps=[999, 5], final="one"), "final='one'"),
    (dict(timesteps=[999, 5], num_train_timesteps=1.5), "num_train_timesteps"),
    (dict(timesteps=[999], final="zero"), "single data prediction"),
    (dict(timesteps=[0]), "zero length"),
    (dict(timesteps=[999, 5], step_ratio=0), "step_ratio"),
])
def test_grid_mapping_validation(kwargs, match):
    kwargs.setdefault("num_train_timesteps", N)
    with pytest.raises(ValueError, match=match):
        from_diffusers_timesteps(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(spacing="karras"), "spacing"), (dict(scheduler="euler"), "scheduler"),
    (dict(num_inference_steps=0), "num_inference_steps"), (dict(num_inference_steps=1001), "<= num_train"),
    (dict(steps_offset=-1), "steps_offset"),
])
def test_diffusers_timesteps_validation(kwargs, match):
    kwargs.setdefault("num_inference_steps", 10)
    with pytest.raises(ValueError, match=match):
        diffusers_timesteps(**kwargs)


def test_docstring_examples():
    result = doctest.testmod(diffusers_grid, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
