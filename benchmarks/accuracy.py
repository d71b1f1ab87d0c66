"""The accuracy atlas (issue 3): RMS error of every shipped solver against the exact ODE solution.

    python benchmarks/accuracy.py             # default grid (the whole grid of issue 3), ~3 min on 2 CPU cores
    python benchmarks/accuracy.py --quick     # CI grid: 2 problems, 1 schedule, 3 NFE, 5 configurations (< 60 s)
    python benchmarks/accuracy.py --full      # default + karras, singlestep_fixed DPM, taylor, UniPC noise, cosine (~5 min)
    python benchmarks/accuracy.py --out DIR   # where the outputs go (default: docs/)

Problems (analytic data, so the exact noise prediction and the exact probability-flow ODE are known):
``gauss2`` (Gaussian 2-D), ``gauss16`` (Gaussian 16-D, stds 0.05..2), ``gmm5`` (5-D mixture, K=4,
diagonal), ``img_gmm`` (3x8x8 "image" mixture, K=2, std 0.1).  Schedules: ``ddpm`` (discrete,
betas = linspace(1e-4, 0.02, 1000)) and ``linear_vp`` (beta in [0.1, 20]).  Every solve runs from
``t_max = 1`` to ``t_end = schedule.t_min = 1e-3`` in float64 on a fixed batch of 16 prior samples;
the error is ``sqrt(mean((x - x_true)^2))`` over the batch and the dimensions.  Ground truth:
``analytic.gaussian_flow`` (closed form) for Gaussians and ``analytic.reference_solution`` (diffrax
Dopri8, rtol = atol = 1e-12, x64) for mixtures, computed once per problem and schedule.  Every solver
runs with ``steps`` = the NFE budget; the *true* NFE of ``sj.plan(...).nfe`` is recorded
(``singlestep_fixed`` may use fewer); configurations whose plan raises ``ValueError`` are skipped.

How it stays fast (thousands of solves; one XLA compile costs ~0.5-2 s on these CPUs):

* The plans are built by the library (``sj.plan``) on the host.  Plans with the same *structure*
  (segment kinds and lengths; coefficient values may differ) are run by ONE compiled function that
  takes the plan's coefficient arrays as traced arguments and is ``jax.vmap``-ed over the
  configurations, through the library's executor ``scire_jax.core.plans.execute_plan`` -- exactly what
  ``sj.solve`` runs, minus the plan baked in as constants.  Static zero-masks are OR-ed over the group
  and shorter histories are zero-padded (both exact: a zero coefficient times a finite value is 0).
* The four problems are solved at once as one block-diagonal problem (their states concatenated):
  every solver is linear in the state with x-independent coefficients, so each block evolves exactly
  as if solved alone.  The model gets ``alpha``, ``sigma`` from the plan (``noise_fn.noise``).
* The schedules are part of the coefficient arrays, so both schedules share a compile too.
* A cross-check re-solves a few configurations with the public ``sj.solve`` +
  ``analytic.model_fn`` per problem and reports the largest difference (float64 round-off expected).

``run_atlas(grid, out_dir) -> rows`` is the entry point for ``scire-jax bench accuracy``.
"""

import argparse
import collections
import csv
import dataclasses
import json
import math
import pathlib
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent

PHIS = {"official": "official", "2/3": 2.0 / 3.0, "1-1/e": 1.0 - math.exp(-1.0), "1": 1.0}
FAMILIES = ("SciRE", "DDIM", "DPM-Solver", "DPM-Solver++", "UniPC")
CSV_FIELDS = ("problem", "schedule", "budget", "nfe", "family", "solver", "algorithm", "method", "order",
              "skip_type", "phi", "rms_error")

PROBLEM_TEXT = {"gauss2": "Gaussian 2-D", "gauss16": "Gaussian 16-D, stds 0.05..2",
                "gmm5": "5-D diagonal mixture, K=4, stds 0.1..0.5", "img_gmm": "3x8x8 image-shaped mixture, K=2, std 0.1"}
SCHEDULE_TEXT = {"ddpm": "discrete, betas linspace(1e-4, 0.02, 1000)", "linear_vp": "continuous linear VP, beta 0.1..20",
                 "cosine": "cosine, s = 0.008"}

# Solvers drawn in the error-vs-NFE plot (when present in the grid).
PLOT_SOLVERS = (
    "DDIM time_uniform",
    "SciRE-v1 multistep o3 NSR phi=official",
    "SciRE-v1 multistep o3 NSR phi=1",
    "SciRE-v2 multistep o3 NSR phi=official",
    "SciRE-v1 singlestep_agile o3 NSR phi=official",
    "DPM-Solver++ multistep o2 logSNR",
    "DPM-Solver++ multistep o3 logSNR",
    "DPM-Solver singlestep o3 logSNR",
    "UniPC-bh1 o3 logSNR",
    "UniPC-bh2 o3 logSNR",
)
# The recommended/default configuration of each family (compared head to head in the summary).
DEFAULTS = {
    "SciRE": "SciRE-v1 multistep o3 NSR phi=official",
    "SciRE (phi=1)": "SciRE-v1 multistep o3 NSR phi=1",
    "DPM-Solver++": "DPM-Solver++ multistep o3 logSNR",
    "UniPC": "UniPC-bh2 o3 logSNR",
    "DDIM": "DDIM time_uniform",
}


# -- the grid --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grid:
    """What the atlas covers.  ``--quick``, the default and ``--full`` are :data:`GRIDS`."""

    name: str
    problems: Tuple[str, ...] = ("gauss2", "gauss16", "gmm5", "img_gmm")
    schedules: Tuple[str, ...] = ("ddpm", "linear_vp")
    nfes: Tuple[int, ...] = (5, 6, 8, 10, 12, 15, 20, 25, 50, 100)
    families: Tuple[str, ...] = FAMILIES
    scire_algorithms: Tuple[str, ...] = ("v1", "v2")
    scire_methods: Tuple[str, ...] = ("multistep", "singlestep_agile", "singlestep_fixed")
    scire_orders: Tuple[int, ...] = (2, 3)  # order 1 of every method is DDIM (the DDIM rows)
    scire_skips: Tuple[str, ...] = ("NSR", "time_uniform", "time_quadratic", "logSNR")
    scire_phis: Tuple[str, ...] = ("official", "2/3", "1-1/e", "1")
    ddim_skips: Tuple[str, ...] = ("time_uniform", "NSR", "time_quadratic", "logSNR")
    dpm_methods: Tuple[str, ...] = ("multistep", "singlestep")
    dpm_orders: Tuple[int, ...] = (1, 2, 3)  # order 1 only once (multistep): = DDIM in that family's variables
    dpm_skips: Tuple[str, ...] = ("logSNR", "time_uniform")
    dpm_solver_types: Tuple[str, ...] = ("dpmsolver",)
    unipc_variants: Tuple[str, ...] = ("bh1", "bh2")
    unipc_orders: Tuple[int, ...] = (1, 2, 3)
    unipc_skips: Tuple[str, ...] = ("logSNR", "time_uniform")
    unipc_predictions: Tuple[str, ...] = ("data",)
    only: Optional[Tuple[str, ...]] = None  # keep only these labels (quick grid)
    batch: int = 16
    seed: int = 0
    reference_tol: float = 1e-12
    crosscheck: Tuple[str, ...] = ()  # labels re-solved with sj.solve (at the crosscheck NFE, every schedule/problem)
    crosscheck_nfe: int = 10
    check_reference: bool = True  # diffrax reference vs the closed form on gauss16 (validates the ground truth)


_CROSSCHECK = ("SciRE-v1 multistep o3 NSR phi=official", "SciRE-v2 singlestep_agile o3 time_quadratic phi=2/3",
               "DPM-Solver++ multistep o3 logSNR", "UniPC-bh2 o3 logSNR", "DDIM time_uniform")

GRIDS: Dict[str, Grid] = {
    "quick": Grid(
        name="quick", problems=("gauss16", "gmm5"), schedules=("ddpm",), nfes=(5, 10, 20),
        only=("DDIM time_uniform", "SciRE-v1 multistep o3 NSR phi=official", "SciRE-v2 singlestep_agile o2 NSR phi=official",
              "DPM-Solver++ multistep o3 logSNR", "UniPC-bh2 o3 logSNR"),
        reference_tol=1e-10, crosscheck=("SciRE-v1 multistep o3 NSR phi=official",), check_reference=False),
    "default": Grid(name="default", crosscheck=_CROSSCHECK),
    "full": Grid(
        name="full", schedules=("ddpm", "linear_vp", "cosine"),
        scire_skips=("NSR", "time_uniform", "time_quadratic", "logSNR", "karras"),
        ddim_skips=("time_uniform", "NSR", "time_quadratic", "logSNR", "karras"),
        dpm_methods=("multistep", "singlestep", "singlestep_fixed"), dpm_skips=("logSNR", "time_uniform", "time_quadratic"),
        dpm_solver_types=("dpmsolver", "taylor"), unipc_skips=("logSNR", "time_uniform", "time_quadratic", "NSR"),
        unipc_predictions=("data", "noise"), crosscheck=_CROSSCHECK),
}


@dataclasses.dataclass(frozen=True)
class Config:
    family: str
    label: str
    solver: object
    algorithm: str
    method: str
    order: int
    skip_type: str
    phi: str = ""


def solver_configs(grid: Grid, steps: int, verbose: bool = False) -> List[Config]:
    """Every configuration of ``grid`` at ``steps`` (families missing from ``scire_jax`` are skipped)."""
    import scire_jax as sj

    out: List[Config] = []
    available = {"SciRE": hasattr(sj, "SciRE"), "DDIM": hasattr(sj, "DDIM"), "DPM-Solver": hasattr(sj, "DPMSolver"),
                 "DPM-Solver++": hasattr(sj, "DPMSolver"), "UniPC": hasattr(sj, "UniPC")}
    for family in grid.families:
        if not available.get(family, False):
            if verbose:
                print(f"note: {family} is not available in this scire_jax (skipped)", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singlestep_fixed with steps % order != 0 warns (true NFE is recorded)
        if "SciRE" in grid.families and available["SciRE"]:
            for algorithm in grid.scire_algorithms:
                for method in grid.scire_methods:
                    for order in grid.scire_orders:
                        for skip in grid.scire_skips:
                            for phi_name in grid.scire_phis:
                                label = f"SciRE-{algorithm} {method} o{order} {skip} phi={phi_name}"
                                try:
                                    solver = sj.SciRE(algorithm=algorithm, method=method, order=order, steps=steps,
                                                      skip_type=skip, phi=PHIS[phi_name])
                                except ValueError:
                                    continue
                                out.append(Config("SciRE", label, solver, algorithm, method, order, skip, phi_name))
        if "DDIM" in grid.families and available["DDIM"]:
            for skip in grid.ddim_skips:
                out.append(Config("DDIM", f"DDIM {skip}", sj.DDIM(steps=steps, skip_type=skip), "ddim", "multistep", 1, skip))
        for family, algorithm in (("DPM-Solver", "dpmsolver"), ("DPM-Solver++", "dpmsolver++")):
            if family not in grid.families or not available[family]:
                continue
            for method in grid.dpm_methods:
                for order in grid.dpm_orders:
                    if order == 1 and method != "multistep":
                        continue
                    for skip in grid.dpm_skips:
                        for solver_type in grid.dpm_solver_types:
                            if solver_type != "dpmsolver" and order == 1:
                                continue
                            suffix = "" if solver_type == "dpmsolver" else " taylor"
                            label = f"{family} {method} o{order} {skip}{suffix}"
                            try:
                                solver = sj.DPMSolver(algorithm=algorithm, method=method, order=order, steps=steps,
                                                      skip_type=skip, solver_type=solver_type)
                            except ValueError:
                                continue
                            out.append(Config(family, label, solver, algorithm, method, order, skip))
        if "UniPC" in grid.families and available["UniPC"]:
            for variant in grid.unipc_variants:
                for order in grid.unipc_orders:
                    for skip in grid.unipc_skips:
                        for prediction in grid.unipc_predictions:
                            suffix = "" if prediction == "data" else " noise"
                            label = f"UniPC-{variant} o{order} {skip}{suffix}"
                            try:
                                solver = sj.UniPC(variant=variant, order=order, steps=steps, skip_type=skip,
                                                  prediction=prediction)
                            except ValueError:
                                continue
                            out.append(Config("UniPC", label, solver, variant, "multistep", order, skip))
    if grid.only is not None:
        out = [config for config in out if config.label in grid.only]
    return out


# -- problems and schedules ------------------------------------------------------------------------


def make_schedule(name: str):
    import scire_jax as sj

    if name == "ddpm":
        return sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))
    if name == "linear_vp":
        return sj.schedules.linear()
    if name == "cosine":
        return sj.schedules.cosine()
    raise ValueError(f"schedule={name!r} is not one of 'ddpm', 'linear_vp', 'cosine'")


def make_problem(name: str):
    """The analytic data distribution of a problem (fixed parameters)."""
    from scire_jax.models import analytic

    if name == "gauss2":
        return analytic.Gaussian(mean=np.array([1.0, -0.5]), std=np.array([0.3, 1.5]))
    if name == "gauss16":
        return analytic.Gaussian(mean=np.linspace(-1.0, 1.0, 16), std=np.geomspace(0.05, 2.0, 16))
    if name == "gmm5":
        rng = np.random.default_rng(5)
        return analytic.GaussianMixture(weights=np.array([0.1, 0.2, 0.3, 0.4]), means=1.5 * rng.normal(size=(4, 5)),
                                        stds=rng.uniform(0.1, 0.5, size=(4, 5)))
    if name == "img_gmm":
        rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
        checker = np.where((rows + cols) % 2 == 0, 0.8, -0.8)
        ramp = np.linspace(-0.9, 0.9, 8)[None, :] * np.ones((8, 1))
        means = np.stack([np.stack([checker, ramp, -checker]), np.stack([ramp.T, -ramp, 0.5 * checker])])
        return analytic.GaussianMixture(weights=np.array([0.4, 0.6]), means=means, stds=0.1)
    raise ValueError(f"problem={name!r} is not one of 'gauss2', 'gauss16', 'gmm5', 'img_gmm'")


def _block_noise_fn(models):
    """``noise_fn`` of the block-diagonal problem (states concatenated) with ``noise_fn.noise(params, x, t, alpha, sigma)``.

    Same formulas as :mod:`scire_jax.models.analytic` (``Gaussian.noise``, ``GaussianMixture.noise``), with
    ``alpha``, ``sigma`` taken from the plan (host float64) instead of ``schedule.alpha(t)``.
    """
    import jax
    import jax.numpy as jnp
    from scire_jax.models import analytic

    blocks = []
    start = 0
    for model in models:
        size = int(np.prod(model.shape))
        if isinstance(model, analytic.Gaussian):
            blocks.append((start, size, "gauss", (model.mean.reshape(-1), model.std.reshape(-1))))
        else:
            count = model.num_components
            blocks.append((start, size, "gmm", (np.log(model.weights), model.means.reshape(count, -1),
                                                 model.stds.reshape(count, -1))))
        start += size

    def noise(params, x, t, alpha, sigma):
        del params, t
        parts = []
        for offset, size, kind, values in blocks:
            xb = x[:, offset:offset + size]
            if kind == "gauss":
                mean, std = (jnp.asarray(v, x.dtype) for v in values)
                parts.append(sigma * (xb - alpha * mean) / ((alpha * std) ** 2 + sigma ** 2))
            else:
                log_weights, means, stds = (jnp.asarray(v, x.dtype) for v in values)
                variance = (alpha * stds) ** 2 + sigma ** 2  # (K, D)
                diff = xb[:, None, :] - alpha * means[None]  # (B, K, D)
                logits = log_weights[None] - 0.5 * jnp.sum(diff * diff / variance + jnp.log(variance), axis=-1)
                resp = jax.nn.softmax(logits, axis=-1)
                parts.append(sigma * jnp.einsum("bk,bkd->bd", resp, diff / variance))
        return jnp.concatenate(parts, axis=1)

    def noise_fn(params, x, t):  # pragma: no cover - the executor uses .noise
        raise NotImplementedError("the atlas model needs alpha and sigma: call noise_fn.noise")

    noise_fn.noise = noise
    return noise_fn, [(offset, size) for offset, size, _, _ in blocks]


def _evaluator(noise_fn):
    """``evaluate(x, t, alpha, sigma, kind)`` as ``sj.solve`` builds it (no thresholding)."""
    import jax.numpy as jnp

    def evaluate(x, t, alpha, sigma, kind):
        eps = noise_fn.noise(None, x, jnp.broadcast_to(t, (x.shape[0],)), alpha, sigma).astype(x.dtype)
        return eps if kind == "noise" else (x - sigma * eps) / alpha

    return evaluate


# -- the grouped executor ----------------------------------------------------------------------------
#
# Plans of equal structure run in one compiled, vmapped executor.  Two exact paddings widen a group:
#
# * history: a shorter history is zero-padded on its oldest side (a zero coefficient reads nothing);
# * length: one segment (the longest) is padded at its START with "restart" rows: the state is kept
#   (``out_state = 1``, nothing else) and the model is evaluated at ``(state, t_start)``.  Without
#   history these rows are no-ops.  With history they are only used where the state is still
#   ``x_T`` (first segment, or right after the single initial evaluation of a multistep plan), so
#   they push copies of ``F(x_T, t_start)`` -- the value the initial evaluation pushes anyway -- into
#   slots the real plan only reads with zero coefficients (checked per plan by
#   :func:`_history_reads_are_pushed`; plans that fail keep their exact length).


def _history_reads_are_pushed(plan) -> bool:
    """Every nonzero history coefficient of the plan reads a slot that was pushed before."""
    size = plan.history_size
    pushes = 0
    for segment in plan.segments:
        rows = segment.length
        before = pushes + np.arange(rows)  # pushes made before each row
        age = size - np.arange(size)  # slot m holds age H - m
        stage = np.any(segment.arrays["stage_history"] != 0, axis=1)  # (rows, H)
        out = segment.arrays["out_history"] != 0
        unread = age[None, :] > before[:, None]
        if np.any((stage | out) & unread):
            return False
        if segment.push is not None:
            pushes += rows
    return True


def _pad_index(plan) -> Optional[int]:
    """The segment whose length may be padded (see above), or None."""
    lengths = [segment.length for segment in plan.segments]
    index = int(np.argmax(lengths))
    if not any(segment.push for segment in plan.segments):
        return index
    starts_at_x_T = index == 0 or (index == 1 and plan.steps[0].initial and plan.segments[0].length == 1)
    return index if starts_at_x_T and _history_reads_are_pushed(plan) else None


def _group_key(plan) -> tuple:
    pad = _pad_index(plan)
    return tuple((s.num_stages, s.post_evaluation, s.push, s.kind, s.record, None if i == pad else s.length)
                 for i, s in enumerate(plan.segments))


def _padded_arrays(plan, history_size: int, lengths: Sequence[int], start_coefficients) -> List[Dict[str, np.ndarray]]:
    """The plan's segment arrays with the history padded to ``history_size`` and segments to ``lengths``."""
    alpha0, sigma0 = start_coefficients
    out = []
    for segment, length in zip(plan.segments, lengths):
        arrays = dict(segment.arrays)
        for name in ("stage_history", "out_history"):
            missing = history_size - arrays[name].shape[-1]
            if missing:  # slot H - age: the oldest slots are on the left
                arrays[name] = np.concatenate([np.zeros(arrays[name].shape[:-1] + (missing,)), arrays[name]], axis=-1)
        extra = length - segment.length
        if extra:
            pad = {name: np.zeros((extra,) + value.shape[1:], value.dtype) for name, value in arrays.items()}
            pad["stage_time"][:] = plan.t_start
            pad["stage_alpha"][:] = alpha0
            pad["stage_sigma"][:] = sigma0
            pad["stage_state"][:] = 1.0
            pad["out_state"][:] = 1.0
            pad["time"][:] = plan.t_start
            pad["post_alpha"][:] = alpha0
            pad["post_sigma"][:] = sigma0
            arrays = {name: np.concatenate([pad[name], value]) for name, value in arrays.items()}
        out.append(arrays)
    return out


def _masks(arrays: Dict[str, np.ndarray], num_stages: int, history_size: int):
    """Static nonzero-masks of stacked arrays (leading axes: configuration, row), as ``build_plan_from_steps``."""
    def nonzero(value, axes):
        return np.any(value != 0, axis=axes)

    return {
        "stage_stage": tuple(tuple(bool(v) for v in nonzero(arrays["stage_stage"][:, :, k, :], (0, 1)))
                             for k in range(num_stages)),
        "stage_history": tuple(tuple(bool(v) for v in nonzero(arrays["stage_history"][:, :, k, :], (0, 1)))
                               if history_size else () for k in range(num_stages)),
        "stage_state": tuple(bool(v) for v in nonzero(arrays["stage_state"], (0, 1))),
        "stage_state_is_one": tuple(bool(v) for v in np.all(arrays["stage_state"] == 1, axis=(0, 1))),
        "out_stage": tuple(bool(v) for v in nonzero(arrays["out_stage"], (0, 1))),
        "out_history": tuple(bool(v) for v in nonzero(arrays["out_history"], (0, 1))) if history_size else (),
        "out_state": bool(np.any(arrays["out_state"] != 0)),
    }


def solve_group(plans: Sequence, evaluate, x_start, start_coefficients: Sequence[Tuple[float, float]]):
    """Solve every plan of a group (equal :func:`_group_key`) with one compiled, vmapped executor.

    ``start_coefficients[i]`` is ``(alpha, sigma)`` at ``t_start`` of plan ``i`` (for padded rows).
    Returns ``x`` at ``t_end`` of shape ``(len(plans), *x_start.shape)``.
    """
    import jax
    from scire_jax.core.plans import Plan, Segment, execute_plan

    history_size = max(plan.history_size for plan in plans)
    template = plans[0]
    lengths = [max(plan.segments[i].length for plan in plans) for i in range(len(template.segments))]
    padded = [_padded_arrays(plan, history_size, lengths, coefficients) for plan, coefficients in zip(plans, start_coefficients)]
    statics, stacked = [], []
    for index, segment in enumerate(template.segments):
        arrays = {name: np.stack([p[index][name] for p in padded]) for name in padded[0][index]}
        stacked.append(arrays)
        statics.append((segment.num_stages, segment.post_evaluation, segment.push, segment.kind, segment.record,
                        _masks(arrays, segment.num_stages, history_size)))

    def one(arrays):
        segments = tuple(Segment(num_stages, post, push, kind, record, dict(a), masks)
                         for (num_stages, post, push, kind, record, masks), a in zip(statics, arrays))
        plan = Plan(segments, history_size, template.t_start, template.t_end, None, template.steps)
        return execute_plan(plan, evaluate, x_start)

    return jax.jit(jax.vmap(one))(stacked)


# -- the atlas -------------------------------------------------------------------------------------------


def _x64():
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX
    return enable_x64()


def _ground_truth(model, schedule, x_start, t_start, t_end, tol):
    from scire_jax.models import analytic

    if isinstance(model, analytic.Gaussian):
        return np.asarray(analytic.gaussian_flow(model, schedule, x_start, t_start, t_end))
    return np.asarray(analytic.reference_solution(model, schedule, x_start, t_start, t_end, rtol=tol, atol=tol))


def run_atlas(grid="default", out_dir=None, verbose: bool = True) -> List[dict]:
    """Run the atlas on ``grid`` (a :class:`Grid` or a name of :data:`GRIDS`); write outputs to ``out_dir``.

    Returns one dict per (problem, schedule, NFE budget, configuration) with the fields of
    :data:`CSV_FIELDS`.  With ``out_dir`` it writes ``accuracy_table.csv``, ``accuracy.json``,
    ``accuracy.md`` and (if matplotlib imports) ``accuracy_error_vs_nfe.png``.
    """
    if isinstance(grid, str):
        grid = GRIDS[grid]
    start_time = time.perf_counter()
    with _x64():
        rows, info = _run(grid, verbose)
    info["runtime_s"] = time.perf_counter() - start_time
    if verbose:
        print_summary(rows, info)
    if out_dir is not None:
        write_outputs(rows, info, grid, pathlib.Path(out_dir), verbose=verbose)
    return rows


def _run(grid: Grid, verbose: bool):
    import jax
    import jax.numpy as jnp
    import scire_jax as sj
    from scire_jax.models import analytic

    def log(message):
        if verbose:
            print(message, flush=True)

    timings = collections.OrderedDict()
    clock = time.perf_counter()
    models = [make_problem(name) for name in grid.problems]
    schedules = {name: make_schedule(name) for name in grid.schedules}
    noise_fn, blocks = _block_noise_fn(models)
    evaluate = _evaluator(noise_fn)

    # The fixed batch: x_T of each problem from its own key, flattened and concatenated.
    keys = jax.random.split(jax.random.key(grid.seed), len(models))
    x_blocks = [analytic.prior_sample(key, (grid.batch,) + tuple(model.shape), jnp.float64) for key, model in zip(keys, models)]
    x_start = jnp.concatenate([x.reshape(grid.batch, -1) for x in x_blocks], axis=1)

    # Ground truth, once per problem and schedule.
    truth = {}
    for schedule_name, schedule in schedules.items():
        t_start, t_end = schedule.t_max, schedule.t_min
        truth[schedule_name] = np.concatenate(
            [_ground_truth(model, schedule, x, t_start, t_end, grid.reference_tol).reshape(grid.batch, -1)
             for model, x in zip(models, x_blocks)], axis=1)
    timings["ground_truth_s"] = time.perf_counter() - clock
    log(f"ground truth: {timings['ground_truth_s']:.1f} s")
    info = {"grid": grid.name, "problems": list(grid.problems), "schedules": list(grid.schedules), "nfes": list(grid.nfes),
            "batch": grid.batch, "seed": grid.seed, "reference_tol": grid.reference_tol, "timings": timings,
            "missing_families": [f for f in grid.families if not _family_available(f)]}
    for family in info["missing_families"]:
        log(f"note: {family} is not available in this scire_jax yet: skipped")
    if grid.check_reference and "gauss16" in grid.problems:
        model = models[grid.problems.index("gauss16")]
        x = x_blocks[grid.problems.index("gauss16")]
        checks = []
        for schedule in schedules.values():
            reference = analytic.reference_solution(model, schedule, x, schedule.t_max, schedule.t_min,
                                                    rtol=grid.reference_tol, atol=grid.reference_tol)
            exact = analytic.gaussian_flow(model, schedule, x, schedule.t_max, schedule.t_min)
            checks.append(float(jnp.sqrt(jnp.mean((reference - exact) ** 2))))
        info["reference_check_rms"] = max(checks)
        log(f"diffrax reference vs closed form (gauss16): RMS {info['reference_check_rms']:.2e}")

    # Plans (host), grouped by structure over every NFE, configuration and schedule.
    clock = time.perf_counter()
    entries = []  # (budget, config, schedule_name, plan)
    skipped = []
    for budget in grid.nfes:
        for config in solver_configs(grid, budget):
            for schedule_name, schedule in schedules.items():
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        plan = sj.plan(config.solver, schedule)
                except ValueError as error:
                    skipped.append((budget, config.label, schedule_name, str(error)))
                    continue
                entries.append((budget, config, schedule_name, plan))
    groups = collections.defaultdict(list)
    for index, entry in enumerate(entries):
        groups[_group_key(entry[3])].append(index)
    timings["plans_s"] = time.perf_counter() - clock
    log(f"{len(entries)} plans ({len(skipped)} skipped) in {timings['plans_s']:.1f} s; {len(groups)} compiled groups")
    info["num_solves"] = len(entries) * len(models)
    info["num_plans"] = len(entries)
    info["num_groups"] = len(groups)
    info["skipped"] = skipped

    # Solve every group.
    clock = time.perf_counter()
    outputs = [None] * len(entries)
    for number, (key, indices) in enumerate(groups.items()):
        result = np.asarray(solve_group([entries[i][3] for i in indices], evaluate, x_start,
                                        [_start_coefficients(entries[i][3], schedules[entries[i][2]]) for i in indices]))
        for row, i in enumerate(indices):
            outputs[i] = result[row]
        if verbose and (number + 1) % 25 == 0:
            log(f"  {number + 1}/{len(groups)} groups, {time.perf_counter() - clock:.0f} s")
    timings["solves_s"] = time.perf_counter() - clock
    log(f"solves: {timings['solves_s']:.1f} s")

    rows = []
    for (budget, config, schedule_name, plan), output in zip(entries, outputs):
        for problem, (offset, size) in zip(grid.problems, blocks):
            diff = output[:, offset:offset + size] - truth[schedule_name][:, offset:offset + size]
            rows.append({
                "problem": problem, "schedule": schedule_name, "budget": budget, "nfe": plan.nfe,
                "family": config.family, "solver": config.label, "algorithm": config.algorithm,
                "method": config.method, "order": config.order, "skip_type": config.skip_type, "phi": config.phi,
                "rms_error": float(np.sqrt(np.mean(diff ** 2))), "max_error": float(np.max(np.abs(diff)))})

    # Cross-check against the public API: sj.solve + analytic.model_fn, one problem at a time.
    clock = time.perf_counter()
    worst = 0.0
    checked = 0
    by_label = {(e[0], e[1].label, e[2]): i for i, e in enumerate(entries)}
    for number, label in enumerate(grid.crosscheck):
        for schedule_name, schedule in schedules.items():
            if number and schedule_name != grid.schedules[0]:
                continue  # the first configuration on every schedule, the others on the first schedule
            index = by_label.get((grid.crosscheck_nfe, label, schedule_name))
            if index is None:
                continue
            solver = entries[index][1].solver
            for model, x, (offset, size) in zip(models, x_blocks, blocks):
                fn = analytic.model_fn(model, schedule)
                reference = jax.jit(lambda x, solver=solver, schedule=schedule, fn=fn: sj.solve(solver, schedule, fn, None, x))(x)
                diff = np.max(np.abs(np.asarray(reference).reshape(grid.batch, -1) - outputs[index][:, offset:offset + size]))
                worst = max(worst, float(diff))
                checked += 1
    timings["crosscheck_s"] = time.perf_counter() - clock
    info["crosscheck_solves"] = checked
    info["crosscheck_max_abs_diff"] = worst
    if checked:
        log(f"cross-check vs sj.solve: {checked} solves, max |diff| = {worst:.2e} ({timings['crosscheck_s']:.1f} s)")
        if not worst < 1e-8:
            print(f"WARNING: the grouped executor differs from sj.solve by {worst:.2e}", file=sys.stderr)
    return rows, info


def _start_coefficients(plan, schedule) -> Tuple[float, float]:
    t = np.float64(plan.t_start)
    return float(schedule.alpha(t)), float(schedule.sigma(t))


def _family_available(family: str) -> bool:
    import scire_jax as sj

    return hasattr(sj, {"SciRE": "SciRE", "DDIM": "DDIM", "DPM-Solver": "DPMSolver", "DPM-Solver++": "DPMSolver",
                        "UniPC": "UniPC"}[family])


# -- analysis ------------------------------------------------------------------------------------------


def _cells(rows):
    cells = collections.defaultdict(list)
    for row in rows:
        cells[(row["problem"], row["schedule"], row["budget"])].append(row)
    return cells


def _best(rows, family=None, label=None):
    candidates = [r for r in rows if (family is None or r["family"] == family) and (label is None or r["solver"] == label)
                  and math.isfinite(r["rms_error"])]
    return min(candidates, key=lambda r: r["rms_error"]) if candidates else None


def best_per_nfe(rows) -> Dict[tuple, dict]:
    """The most accurate row of every (problem, schedule, NFE budget)."""
    return {cell: _best(cell_rows) for cell, cell_rows in sorted(_cells(rows).items())}


def overall_ranking(rows) -> Dict[int, List[Tuple[str, float]]]:
    """Per NFE budget: configurations ranked by the geometric mean of their error over all (problem, schedule) cells."""
    by_budget = collections.defaultdict(lambda: collections.defaultdict(list))
    cells_per_budget = collections.defaultdict(set)
    for row in rows:
        by_budget[row["budget"]][row["solver"]].append(row["rms_error"])
        cells_per_budget[row["budget"]].add((row["problem"], row["schedule"]))
    ranking = {}
    for budget, solvers in sorted(by_budget.items()):
        count = len(cells_per_budget[budget])
        scored = []
        for label, errors in solvers.items():
            if len(errors) == count and all(math.isfinite(e) and e > 0 for e in errors):
                scored.append((label, float(np.exp(np.mean(np.log(errors))))))
        ranking[budget] = sorted(scored, key=lambda item: item[1])
    return ranking


def family_comparison(rows):
    """Per cell: best of each family; counts of SciRE wins against DPM-Solver++ and UniPC."""
    table = {}
    for cell, cell_rows in sorted(_cells(rows).items()):
        table[cell] = {family: _best(cell_rows, family=family) for family in FAMILIES}
    return table


def _fmt(value):
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2e}"


def print_summary(rows, info):
    ranking = overall_ranking(rows)
    print(f"\nAtlas ({info['grid']}): {len(rows)} rows, {info['num_plans']} plans x {len(info['problems'])} problems, "
          f"{info['num_groups']} compiled groups, {info['runtime_s']:.0f} s")
    print("Most accurate at each NFE (geometric mean of the RMS error over every problem and schedule):")
    for budget, scored in ranking.items():
        if scored:
            label, value = scored[0]
            second = f"; 2nd {scored[1][0]} {scored[1][1]:.2e}" if len(scored) > 1 else ""
            print(f"  NFE {budget:4d}: {label:48s} {value:.2e}{second}")
    best = best_per_nfe(rows)
    print("Most accurate per problem / schedule / NFE:")
    for (problem, schedule, budget), row in best.items():
        if row is not None:
            print(f"  {problem:8s} {schedule:9s} NFE {budget:4d} (true {row['nfe']:3d}): {row['solver']:48s} {row['rms_error']:.2e}")


def _wins(table, family, rival):
    wins = total = 0
    ratios = []
    for cell, best in table.items():
        if best.get(family) and best.get(rival):
            total += 1
            wins += best[family]["rms_error"] < best[rival]["rms_error"]
            ratios.append(best[family]["rms_error"] / best[rival]["rms_error"])
    return wins, total, ratios


def write_markdown(rows, info, grid: Grid, path: pathlib.Path):
    table = family_comparison(rows)
    ranking = overall_ranking(rows)
    problems = info["problems"]
    schedules = info["schedules"]
    budgets = info["nfes"]
    lines = [
        "# Accuracy atlas",
        "",
        "Generated by `python benchmarks/accuracy.py" + ("" if grid.name == "default" else f" --{grid.name}") +
        "` (see `benchmarks/README.md`). RMS error of `x(t_end)` against the exact probability-flow ODE solution, "
        f"float64, {info['batch']} fixed prior samples (seed {info['seed']}), `t: 1 -> 1e-3`, `steps` = NFE budget "
        "(the table's `nfe` column is the true NFE of `sj.plan(...).nfe`).",
        "",
        "* problems: " + "; ".join(f"{p} ({PROBLEM_TEXT.get(p, p)})" for p in problems),
        "* schedules: " + "; ".join(f"{s} ({SCHEDULE_TEXT.get(s, s)})" for s in schedules),
        f"* NFE budgets: {', '.join(map(str, budgets))}",
        f"* {info['num_plans']} solver plans x {len(problems)} problems = {len(rows)} errors; {info['num_groups']} compiled "
        f"groups; runtime {info['runtime_s']:.0f} s on 2 shared CPU cores",
        f"* ground truth: closed form (Gaussians), diffrax Dopri8 rtol = atol = {info['reference_tol']:g} (mixtures)"
        + (f"; the diffrax reference matches the closed form to RMS {info['reference_check_rms']:.1e} on gauss16"
           if "reference_check_rms" in info else ""),
        f"* executor cross-check: {info['crosscheck_solves']} solves re-run with the public `sj.solve` + "
        f"`analytic.model_fn` agree to max |diff| = {info['crosscheck_max_abs_diff']:.1e}",
    ]
    if info["missing_families"]:
        lines.append(f"* not available when this ran (skipped): {', '.join(info['missing_families'])}")
    if info["skipped"]:
        lines.append(f"* {len(info['skipped'])} plans raised ValueError and were skipped")
    lines += ["", "Full data: `accuracy_table.csv` (one row per problem, schedule, NFE budget and configuration).", ""]

    # Headline numbers.
    lines += ["## Where SciRE wins and loses", ""]
    lines.append("Best-of-family comparisons (each family at its best configuration for the cell; SciRE has many more "
                 "configurations -- 4 skip types x 4 phi x methods -- so its best-of is a generous upper bound on what a "
                 "user who does not tune gets):")
    lines.append("")
    lines.append("| SciRE (best) vs | cells won | median error ratio SciRE / rival | NFE <= 10: won | NFE > 10: won |")
    lines.append("|---|---|---|---|---|")
    for rival in ("DPM-Solver++", "DPM-Solver", "UniPC", "DDIM"):
        wins, total, ratios = _wins(table, "SciRE", rival)
        if not total:
            continue
        low = {c: b for c, b in table.items() if c[2] <= 10}
        high = {c: b for c, b in table.items() if c[2] > 10}
        lw, lt, _ = _wins(low, "SciRE", rival)
        hw, ht, _ = _wins(high, "SciRE", rival)
        lines.append(f"| {rival} | {wins}/{total} | {np.median(ratios):.2f} | {lw}/{lt} | {hw}/{ht} |")
    lines.append("")
    default_rows = {label: [r for r in rows if r["solver"] == label] for label in DEFAULTS.values()}
    if sum(bool(v) for v in default_rows.values()) >= 2:
        lines.append("Default configurations head to head (geometric mean of the RMS error over every problem and schedule):")
        lines.append("")
        present = [(family, label) for family, label in DEFAULTS.items() if default_rows[label]]
        lines.append("| NFE | " + " | ".join(f"{family}: `{label}`" for family, label in present) + " |")
        lines.append("|---|" + "---|" * len(present))
        for budget in budgets:
            values = []
            for _, label in present:
                errors = [r["rms_error"] for r in default_rows[label] if r["budget"] == budget]
                values.append(float(np.exp(np.mean(np.log(errors)))) if errors and all(e > 0 and math.isfinite(e) for e in errors) else float("nan"))
            best_value = np.nanmin(values) if np.any(np.isfinite(values)) else None
            cells = [(f"**{_fmt(v)}**" if best_value is not None and v == best_value else _fmt(v)) for v in values]
            lines.append(f"| {budget} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _auto_findings(rows, table, ranking)
    lines += ["", "Caveats:", "",
              "* Best-of-family favours SciRE: per cell it picks the best of up to "
              f"{len({r['solver'] for r in rows if r['family'] == 'SciRE'})} SciRE configurations against "
              f"{len({r['solver'] for r in rows if r['family'] == 'DPM-Solver++'})} DPM-Solver++ and "
              f"{len({r['solver'] for r in rows if r['family'] == 'UniPC'})} UniPC ones. The geo-mean ranking below picks one "
              "configuration per NFE for all cells, which is less optimistic; the head-to-head table is untuned.",
              "* Configurations with phi != 1 are not monotone in NFE (their first-order term cancels other errors at some "
              "step counts), so a win at one NFE need not carry over to a neighbouring NFE or another model.",
              "* The models are exact (no network error) and the data are low-dimensional Gaussians / mixtures; the error is "
              "measured at t_end = 1e-3 without a final denoising step. Sample quality of trained networks (FID) can rank "
              "solvers differently.",
              ]

    lines += ["", "## Most accurate configuration at each NFE (all problems and schedules)", "",
              "Ranked by the geometric mean of the RMS error over every (problem, schedule) cell.", "",
              "| NFE | best | error (geo-mean) | 2nd | 3rd | best SciRE | error |", "|---|---|---|---|---|---|---|"]
    for budget, scored in ranking.items():
        if not scored:
            continue
        sci = next(((l, v) for l, v in scored if l.startswith("SciRE")), None)
        second = f"`{scored[1][0]}` {scored[1][1]:.2e}" if len(scored) > 1 else ""
        third = f"`{scored[2][0]}` {scored[2][1]:.2e}" if len(scored) > 2 else ""
        sci_text = f"`{sci[0]}` | {sci[1]:.2e}" if sci else "n/a | "
        lines.append(f"| {budget} | `{scored[0][0]}` | {scored[0][1]:.2e} | {second} | {third} | {sci_text} |")

    lines += _order_table(rows)
    lines += ["", "## Per problem and schedule", "",
              "Best configuration of each family per NFE budget (error, configuration); **bold** = best overall.", ""]
    for problem in problems:
        for schedule in schedules:
            lines.append(f"### {problem} / {schedule}")
            lines.append("")
            lines.append("| NFE | best overall | SciRE | DPM-Solver++ | DPM-Solver | UniPC | DDIM |")
            lines.append("|---|---|---|---|---|---|---|")
            for budget in budgets:
                best = table.get((problem, schedule, budget))
                if not best:
                    continue
                overall = min((b for b in best.values() if b), key=lambda r: r["rms_error"], default=None)
                cells = []
                for family in ("SciRE", "DPM-Solver++", "DPM-Solver", "UniPC", "DDIM"):
                    row = best.get(family)
                    if row is None:
                        cells.append("n/a")
                        continue
                    text = f"{row['rms_error']:.2e} `{row['solver'].split(' ', 1)[1] if ' ' in row['solver'] else row['solver']}`"
                    if row["nfe"] != budget:
                        text += f" (NFE {row['nfe']})"
                    cells.append(f"**{text}**" if overall is row else text)
                lines.append(f"| {budget} | {overall['solver']} | " + " | ".join(cells) + " |")
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def empirical_orders(rows, labels=None):
    """Per configuration: slope of log(error) vs log(true NFE) between the two largest budgets (median over cells)."""
    budgets = sorted({r["budget"] for r in rows})
    if len(budgets) < 2:
        return {}, None
    low_budget, high_budget = budgets[-2], budgets[-1]
    pairs = collections.defaultdict(dict)
    for r in rows:
        if r["budget"] in (low_budget, high_budget) and (labels is None or r["solver"] in labels):
            pairs[(r["solver"], r["problem"], r["schedule"])][r["budget"]] = r
    slopes = collections.defaultdict(list)
    for (label, _, _), pair in pairs.items():
        if len(pair) == 2:
            a, b = pair[low_budget], pair[high_budget]
            if a["rms_error"] > 0 and b["rms_error"] > 0 and b["nfe"] != a["nfe"]:
                slopes[label].append(math.log(a["rms_error"] / b["rms_error"]) / math.log(b["nfe"] / a["nfe"]))
    return {label: float(np.median(v)) for label, v in slopes.items()}, (low_budget, high_budget)


def _order_table(rows):
    labels = [label for label in PLOT_SOLVERS if any(r["solver"] == label for r in rows)]
    orders, budgets = empirical_orders(rows, set(labels))
    if not orders:
        return []
    low, high = budgets
    lines = ["", f"## Empirical order (slope of the error between NFE {low} and {high}, median over cells)", "",
             "| configuration | nominal order | empirical order |", "|---|---|---|"]
    nominal = {r["solver"]: r["order"] for r in rows}
    for label in labels:
        if label in orders:
            extra = "+1 (corrector)" if label.startswith("UniPC") else ""
            lines.append(f"| `{label}` | {nominal[label]}{extra} | {orders[label]:.2f} |")
    return lines


def _auto_findings(rows, table, ranking):
    """Data-driven statements (regenerated with the numbers)."""
    lines = ["Findings (computed from this run):", ""]
    # Which family wins the most cells overall.
    winners = collections.Counter()
    for cell, best in table.items():
        present = [b for b in best.values() if b]
        if present:
            winners[min(present, key=lambda r: r["rms_error"])["family"]] += 1
    total = sum(winners.values())
    if total:
        lines.append("* Cells won (best single configuration of the cell): " +
                     ", ".join(f"{family} {count}/{total}" for family, count in winners.most_common()) + ".")
    for rival in ("DPM-Solver++", "UniPC"):
        by_budget = collections.defaultdict(list)
        for (problem, schedule, budget), best in table.items():
            if best.get("SciRE") and best.get(rival):
                by_budget[budget].append(best["SciRE"]["rms_error"] / best[rival]["rms_error"])
        if by_budget:
            won = [b for b, r in sorted(by_budget.items()) if np.median(r) < 1]
            lost = [b for b, r in sorted(by_budget.items()) if np.median(r) >= 1]
            lines.append(f"* Best SciRE vs best {rival}: median error ratio below 1 (SciRE better) at NFE "
                         f"{', '.join(map(str, won)) or 'none'}; at or above 1 (SciRE worse or equal) at NFE "
                         f"{', '.join(map(str, lost)) or 'none'}.")
    # Which SciRE settings win within SciRE.
    sci_best = collections.Counter()
    for best in table.values():
        if best.get("SciRE"):
            row = best["SciRE"]
            sci_best[(row["algorithm"], row["method"], row["skip_type"], row["phi"])] += 1
    if sci_best:
        lines.append("* Most frequent best SciRE setting (algorithm, method, skip type, phi): " +
                     "; ".join(f"{' '.join(map(str, k))} ({v} cells)" for k, v in sci_best.most_common(3)) + ".")
    # The SciRE default across NFE, and phi = 1.
    def geo(label, budget):
        errors = [r["rms_error"] for r in rows if r["solver"] == label and r["budget"] == budget]
        return float(np.exp(np.mean(np.log(errors)))) if errors and all(e > 0 and math.isfinite(e) for e in errors) else None

    budgets = sorted({r["budget"] for r in rows})
    default, phi_one = DEFAULTS["SciRE"], DEFAULTS["SciRE (phi=1)"]
    series = [(b, geo(default, b)) for b in budgets]
    series = [(b, v) for b, v in series if v is not None]
    if len(series) >= 3:
        mid_budget = 10 if any(b == 10 for b, _ in series) else series[len(series) // 2][0]
        mid_value = dict(series)[mid_budget]
        last_budget, last_value = series[-1]
        if last_budget > mid_budget:
            expected = last_budget / mid_budget
            lines.append(f"* The default SciRE configuration (`{default}`) leads at low NFE but hardly converges: its "
                         f"error (geo-mean) goes from {mid_value:.2e} at NFE {mid_budget} to {last_value:.2e} at NFE "
                         f"{last_budget}, a factor {mid_value / last_value:.1f} for {expected:.0f}x the NFE (a first-order "
                         f"method gives ~{expected:.0f}x, a third-order one ~{expected ** 3:.0f}x). With the official phi "
                         "(about 0.63-0.67 instead of 1) the weight of the derivative-estimate term differs from its Taylor "
                         "value, so a first-order error term remains (the same order ~1 is asserted by "
                         "`tests/test_convergence.py`): it helps at low NFE, where it partly cancels other errors, and "
                         "costs convergence at high NFE.")
        one = [(b, geo(phi_one, b)) for b in budgets]
        one = [(b, v) for b, v in one if v is not None]
        if one:
            lines.append(f"* With phi = 1 (plain finite differences, `{phi_one}`) the same solver converges: "
                         + ", ".join(f"NFE {b}: {v:.2e}" for b, v in one if b in (budgets[0], 10, budgets[-1])) +
                         " (official phi: " + ", ".join(f"NFE {b}: {v:.2e}" for b, v in series
                                                        if b in (budgets[0], 10, budgets[-1])) + ").")
    phi_counts = collections.Counter()
    for cell, cell_rows in _cells(rows).items():
        sci = [r for r in cell_rows if r["family"] == "SciRE" and math.isfinite(r["rms_error"])]
        if sci:
            phi_counts[min(sci, key=lambda r: r["rms_error"])["phi"]] += 1
    if phi_counts:
        lines.append("* phi of the best SciRE configuration per cell: " +
                     ", ".join(f"{phi} {count}" for phi, count in phi_counts.most_common()) + ".")
    return lines


def plot(rows, path: pathlib.Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    schedules = list(dict.fromkeys(r["schedule"] for r in rows))
    labels = [label for label in PLOT_SOLVERS if any(r["solver"] == label for r in rows)]
    if not labels:
        labels = list(dict.fromkeys(r["solver"] for r in rows))[:8]
    fig, axes = plt.subplots(len(problems), len(schedules), figsize=(5.2 * len(schedules), 3.6 * len(problems)),
                             squeeze=False, sharex=True)
    styles = ["-", "--", "-.", ":"]
    for i, problem in enumerate(problems):
        for j, schedule in enumerate(schedules):
            ax = axes[i][j]
            for k, label in enumerate(labels):
                points = sorted((r["nfe"], r["rms_error"]) for r in rows
                                if r["problem"] == problem and r["schedule"] == schedule and r["solver"] == label
                                and math.isfinite(r["rms_error"]) and r["rms_error"] > 0)
                if points:
                    ax.loglog(*zip(*points), styles[k % len(styles)], marker="o", markersize=3, label=label)
            ax.set_title(f"{problem} / {schedule}", fontsize=10)
            budgets = sorted({r["budget"] for r in rows})
            ax.set_xticks(budgets)
            ax.set_xticklabels([str(b) for b in budgets], fontsize=7)
            ax.minorticks_off()
            ax.grid(True, which="both", alpha=0.3)
            if i == len(problems) - 1:
                ax.set_xlabel("NFE")
            if j == 0:
                ax.set_ylabel("RMS error of x(t_end)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 3) / max(1, len(problems)), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_outputs(rows, info, grid: Grid, out: pathlib.Path, verbose: bool = True):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "accuracy_table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "rms_error": f"{row['rms_error']:.4e}"})
    best = best_per_nfe(rows)
    summary = {**info, "best_per_nfe": [{"problem": p, "schedule": s, "budget": b, "solver": r["solver"],
                                         "nfe": r["nfe"], "rms_error": r["rms_error"]}
                                        for (p, s, b), r in best.items() if r is not None],
               "ranking": {str(b): v[:10] for b, v in overall_ranking(rows).items()}}
    (out / "accuracy.json").write_text(json.dumps(summary, indent=1, default=str))
    write_markdown(rows, info, grid, out / "accuracy.md")
    plotted = plot(rows, out / "accuracy_error_vs_nfe.png")
    if verbose:
        print(f"wrote {out / 'accuracy_table.csv'}, {out / 'accuracy.json'}, {out / 'accuracy.md'}"
              + (f", {out / 'accuracy_error_vs_nfe.png'}" if plotted else " (no matplotlib: no plot)"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI grid (< 60 s)")
    size.add_argument("--full", action="store_true", help="everything (default grid + extra grids and schedules)")
    parser.add_argument("--out", default=str(HERE.parent / "docs"), help="output folder (default: docs/)")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "default"
    run_atlas(GRIDS[name], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
