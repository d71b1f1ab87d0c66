"""Loading the official reference outputs (tests/data/reference) and running them through scire_jax.

The manifest describes every case of the official PyTorch code (tests/data/reference/README.md); this
module turns a case into (schedule, noise_fn, solver, x_T) of ours and runs it.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import scire_jax as sj
from scire_jax.models import analytic

REFERENCE = pathlib.Path(__file__).parent / "data" / "reference"


@functools.cache
def manifest():
    return json.loads((REFERENCE / "manifest.json").read_text())


@functools.cache
def npz(name):
    return np.load(REFERENCE / name)


def array(case, key):
    return npz(case["npz"])[case["keys"][key]]


def cases(predicate=lambda case: True):
    return [case for case in manifest()["cases"] if predicate(case)]


def case_by_id(case_id):
    return next(case for case in manifest()["cases"] if case["id"] == case_id)


@functools.cache
def schedule(name, impl="scire"):
    entry = manifest()["schedules"][name]
    kind = entry["kind"]
    clip = -5.1 if impl == "dpm" else None
    if kind == "discrete":
        arrays = npz("schedules.npz")
        if "betas" in entry["constructor"].split("(")[1].split("=")[0]:
            return sj.schedules.discrete(betas=arrays[f"{name}/betas"], clip_log_snr=clip)
        return sj.schedules.discrete(alphas_cumprod=arrays[f"{name}/alphas_cumprod"], clip_log_snr=clip)
    if kind == "linear":
        return sj.schedules.linear(0.1, 20.0)
    if kind == "cosine":
        return sj.schedules.cosine()
    raise ValueError(f"the reference schedule {name!r} has no scire_jax counterpart")


@functools.cache
def model(name):
    return analytic.from_manifest(manifest()["models"][name])


def _t_continuous(case, schedule_, t_input):
    rule = case["wrapper"]["t_input_inverse"]
    if rule.startswith("t_continuous = t_input / 1000"):
        return t_input / 1000.0 + 1.0 / schedule_.total_n
    assert rule.startswith("t_continuous = t_input"), rule
    return t_input


def raw_apply_fn(case, schedule_, the_model):
    """The raw network of a 'model_wrapper' case: its output formula at t = inverse(t_input)."""
    model_type = case["wrapper"]["model_type"]

    def apply_fn(params, x, t_input, condition=None):
        t = _t_continuous(case, schedule_, t_input)
        if isinstance(the_model, analytic.ConditionalGaussians):
            eps = the_model.noise(x, t, schedule_, condition)
        else:
            eps = the_model.noise(x, t, schedule_)
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha = schedule_.alpha(t).reshape(shape)
        sigma = schedule_.sigma(t).reshape(shape)
        if model_type == "noise":
            return eps
        if model_type == "x_start":
            return (x - sigma * eps) / alpha
        if model_type == "v":
            return (eps - sigma * x) / alpha
        if model_type == "score":
            return -eps / sigma
        raise AssertionError(model_type)

    return apply_fn


def noise_function(case, schedule_):
    the_model = model(case["model"])
    if case["route"] == "direct":
        exact = analytic.model_fn(the_model, schedule_)
        if case["dtype"] == "float64":
            return exact

        # float32 cases: the exact model evaluated in float64 and rounded to float32, like a
        # float32 network output, so the comparison measures the solver's float32 arithmetic.
        def rounded(params, x, t):
            return exact(params, x.astype(jnp.float64), t.astype(jnp.float64)).astype(x.dtype)
        return rounded
    wrapper = case["wrapper"]
    guidance = None
    if wrapper["guidance_type"] == "classifier-free":
        guidance = sj.ClassifierFree(
            scale=wrapper["guidance_scale"], condition=jnp.asarray(wrapper["condition"]),
            unconditional_condition=(None if wrapper["unconditional_condition"] is None
                                     else jnp.asarray(wrapper["unconditional_condition"])))
    elif wrapper["guidance_type"] == "classifier":
        def classifier_fn(x, t_input, condition):
            return the_model.log_prob_condition(x, _t_continuous(case, schedule_, t_input), schedule_, condition)
        guidance = sj.Classifier(classifier_fn, scale=wrapper["guidance_scale"],
                                 condition=jnp.asarray(wrapper["condition"]))
    # The official wrappers feed 1000 (t - 1/N) (SciRE: also for 'linear') or t (DPM-Solver's 'linear',
    # cosine): our explicit time_input option.
    discrete_time = wrapper["t_input_inverse"].startswith("t_continuous = t_input / 1000")
    return sj.wrap_model(raw_apply_fn(case, schedule_, the_model), schedule_, prediction=wrapper["model_type"],
                         time_input="discrete" if discrete_time else "continuous", guidance=guidance)


def _scale_corrector(factor):
    def correct_xt(x, t, step):
        return factor * x
    return correct_xt


def solver(case):
    """Our solver configuration for a case (raises ValueError for invalid configurations)."""
    kwargs = case["sample_kwargs"]
    solver_kwargs = case["solver_kwargs"]
    correcting_x0 = solver_kwargs["correcting_x0_fn"]
    if correcting_x0 is None:
        thresholding = None
    elif correcting_x0 == "dynamic_thresholding" or (
            isinstance(correcting_x0, dict) and correcting_x0["callable"] == "official_dynamic_thresholding_t_none"):
        thresholding = sj.DynamicThresholding(solver_kwargs["dynamic_thresholding_ratio"],
                                              solver_kwargs["thresholding_max_val"])
    else:
        raise AssertionError(correcting_x0)
    correcting_xt = solver_kwargs["correcting_xt_fn"]
    correct_xt = None
    if correcting_xt is not None:
        assert correcting_xt["callable"] == "scale"
        correct_xt = _scale_corrector(correcting_xt["factor"])
    common = dict(steps=kwargs["steps"], order=kwargs["order"], skip_type=kwargs["skip_type"],
                  t_start=kwargs["t_start"], t_end=kwargs["t_end"], lower_order_final=kwargs["lower_order_final"],
                  denoise_to_zero=kwargs["denoise_to_zero"], thresholding=thresholding, correct_xt=correct_xt)
    algorithm = solver_kwargs["algorithm_type"]
    if case["impl"] == "scire":
        algorithm = {"scire_v1": "v1", "scire_v2": "v2"}.get(algorithm, algorithm)
        return sj.SciRE(algorithm=algorithm, method=kwargs["method"], **common)
    return sj.DPMSolver(algorithm=algorithm, method=kwargs["method"], solver_type=kwargs["solver_type"], **common)


def dtype_of(case):
    return jnp.float64 if case["dtype"] == "float64" else jnp.float32


def run(case, x_start=None):
    """Run a case with our library; returns (x_out, trajectory, plan)."""
    schedule_ = schedule(case["schedule"], case["impl"])
    the_solver = solver(case)
    noise_fn = noise_function(case, schedule_)
    if x_start is None:
        x_start = array(case, "x_T")
    x_start = jnp.asarray(x_start, dtype=dtype_of(case))
    x_out, trajectory = jax.jit(
        lambda x: sj.solve(the_solver, schedule_, noise_fn, None, x, return_trajectory=True))(x_start)
    return np.asarray(x_out), np.asarray(trajectory), sj.plan(the_solver, schedule_)


def reference_intermediates_as_x(case, the_plan):
    """Official intermediates converted to x_t at our trajectory times.

    SciRE stores its scaled state (v1: x / alpha, v2: x / sigma), DPM-Solver stores x_t; with
    denoise_to_zero the last entry is the data prediction itself.  SciRE singlestep intermediates
    have no initial entry (ours start with x_T), so the first trajectory time is dropped then.
    """
    reference = array(case, "intermediates")
    times = the_plan.trajectory_times
    if len(times) == len(reference) + 1:
        times = times[1:]
        offset = 1
    else:
        offset = 0
    assert len(times) == len(reference), (len(times), len(reference))
    schedule_ = schedule(case["schedule"], case["impl"])
    converted = np.array(reference, dtype=np.float64)
    algorithm = case["solver_kwargs"]["algorithm_type"]
    count = len(reference) - (1 if case["sample_kwargs"]["denoise_to_zero"] else 0)
    if case["impl"] == "scire":
        scale = schedule_.alpha if algorithm == "scire_v1" else schedule_.sigma
        for k in range(count):
            converted[k] = converted[k] * float(scale(np.float64(times[k])))
    return converted, offset


def relative_error(ours, reference):
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - reference)) / np.max(np.abs(reference)))
