"""The accuracy atlas (issue 3): RMS error of every registered solver against the exact ODE solution.

    python benchmarks/accuracy.py             # default grid (the whole grid of issue 3), ~3-4 min on 2 CPU cores
    python benchmarks/accuracy.py --quick     # CI grid: 2 problems, 1 schedule, 3 NFE, every family's default (< 60 s)
    python benchmarks/accuracy.py --full      # default + karras, singlestep_fixed DPM, taylor, UniPC noise, cosine
    python benchmarks/accuracy.py --out DIR   # where the outputs go (default: the current directory)

Needs ``diffrax`` (the mixtures' ground truth) and uses ``matplotlib`` for the plot if present:
``pip install -e ".[bench]"``.

Solvers: every family of the solver registry (``scire_jax.core.solvers.registry.REGISTRY``; registry
names that build the same default solver, like ``dpm`` and ``dpmsolver++``, are one family).  A
family's configurations are its sweep in :data:`SWEEPS` (axes of field values and a label format,
keyed by registry name); a registered solver without a sweep gets :func:`default_sweep`: its
registry defaults at every order it accepts.  A newly registered solver therefore appears in the
atlas, its plot and its tables without editing this file.

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

How it stays fast (thousands of solves; one XLA compile costs ~0.5-2 s on these CPUs), using only the
library's public pieces:

* The plans are built by the library (``sj.plan``) on the host.  Plans are grouped by
  ``scire_jax.core.plans.stacking_key``, stacked by ``stack_plans`` (exact history / length padding,
  union of the masks) and every group runs as ONE compiled call
  ``jax.jit(jax.vmap(lambda p: sj.execute(p, noise_fn, None, x_start)))(stacked)`` -- the public
  executor ``sj.solve`` runs.
* The four problems are solved at once as one :class:`scire_jax.models.analytic.Product` (their
  states concatenated; each block's noise is its own model's formula): every solver is linear in
  the state with x-independent coefficients, so each block evolves as if solved alone.  The model
  is ``analytic.coefficient_model_fn``: it takes ``alpha``, ``sigma`` from the plan
  (``noise_fn.noise``), so one compile serves every schedule too.
* A cross-check re-solves a few configurations with the public ``sj.solve`` + ``analytic.model_fn``
  per problem and reports the largest difference (float64 round-off expected).

Python API: ``run_atlas(grid, out_dir) -> rows`` (``grid``: a name of :data:`GRIDS` or a :class:`Grid`),
``solver_configs(grid, steps)``, ``solve_plans(plans, noise_fn, x_start)``, ``best_per_nfe(rows)``,
``overall_ranking(rows)``; ``main(argv)`` is the command line.
"""

import argparse
import collections
import csv
import dataclasses
import itertools
import json
import math
import pathlib
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

PHIS = {"official": "official", "2/3": 2.0 / 3.0, "1-1/e": 1.0 - math.exp(-1.0), "1": 1.0}
CSV_FIELDS = ("problem", "schedule", "budget", "nfe", "family", "solver", "algorithm", "method", "order",
              "skip_type", "phi", "rms_error")
MISSING_DIFFRAX = 'benchmarks/accuracy.py needs diffrax for the ground truth: pip install -e ".[bench]"'

PROBLEM_TEXT = {"gauss2": "Gaussian 2-D", "gauss16": "Gaussian 16-D, stds 0.05..2",
                "gmm5": "5-D diagonal mixture, K=4, stds 0.1..0.5", "img_gmm": "3x8x8 image-shaped mixture, K=2, std 0.1"}
SCHEDULE_TEXT = {"ddpm": "discrete, betas linspace(1e-4, 0.02, 1000)", "linear_vp": "continuous linear VP, beta 0.1..20",
                 "cosine": "cosine, s = 0.008"}

#: registry name of the solver the atlas is about (the tables compare it with every other family)
FOCUS = "scire"

# -- the solver grid, from the registry --------------------------------------------------------------
#
# A *selector* names configurations without spelling labels: "default" (every family's registry
# default), a registry name (that family's default) or ``(name, {field: value})`` (the registry
# default with those fields).  It resolves to the label of the configuration with an equal solver.

Selector = Union[str, Tuple[str, Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The configurations of one registered solver.

    Attributes:
      axes: ``(field, names)`` pairs in loop order (outermost first); every combination is one
        configuration, built with the registry (``entry.make(steps, **fields)``; ``ValueError`` skips it).
      label: format of a configuration's label: ``{family}`` (the registry label), the axes' names
        and any field of the solver (``{method}``, ``{order}``, ``{skip_type}``, ...).
      values: ``field -> {name: value}`` where a name is not the field value itself (phi "2/3").
      display: ``field -> {name: text}`` where the label shows a name differently ("" hides it).
      exclude: ``exclude(names) -> bool`` drops redundant combinations.
      order_note: appended to the nominal order in the empirical-order table.
    """

    axes: Tuple[Tuple[str, Tuple[Any, ...]], ...]
    label: str = "{family} {method} o{order} {skip_type}"
    values: Mapping[str, Mapping[Any, Any]] = dataclasses.field(default_factory=dict)
    display: Mapping[str, Mapping[Any, str]] = dataclasses.field(default_factory=dict)
    exclude: Optional[Callable[[Dict[str, Any]], bool]] = None
    order_note: str = ""

    def replace_axes(self, **axes) -> "Sweep":
        """The sweep with some axes' names replaced (order of the axes kept)."""
        unknown = set(axes) - {field for field, _ in self.axes}
        if unknown:
            raise ValueError(f"unknown axes {sorted(unknown)}")
        return dataclasses.replace(self, axes=tuple((field, tuple(axes.get(field, names))) for field, names in self.axes))


def _dpm_redundant(names) -> bool:
    # order 1 once (multistep: = DDIM in the family's variables); solver_type only matters from order 2
    return names["order"] == 1 and (names["method"] != "multistep" or names["solver_type"] != "dpmsolver")


_DPM = Sweep(axes=(("method", ("multistep", "singlestep")), ("order", (1, 2, 3)), ("skip_type", ("logSNR", "time_uniform")),
                   ("solver_type", ("dpmsolver",))),
             label="{family} {method} o{order} {skip_type}{solver_type}",
             display={"solver_type": {"dpmsolver": "", "taylor": " taylor"}}, exclude=_dpm_redundant)

#: per registry name (in table order); registered solvers not listed get :func:`default_sweep`
SWEEPS: Dict[str, Sweep] = {
    "scire": Sweep(  # order 1 of every method is DDIM (the DDIM rows)
        axes=(("algorithm", ("v1", "v2")), ("method", ("multistep", "singlestep_agile", "singlestep_fixed")),
              ("order", (2, 3)), ("skip_type", ("NSR", "time_uniform", "time_quadratic", "logSNR")),
              ("phi", ("official", "2/3", "1-1/e", "1"))),
        label="{family}-{algorithm} {method} o{order} {skip_type} phi={phi}", values={"phi": PHIS}),
    "ddim": Sweep(axes=(("skip_type", ("time_uniform", "NSR", "time_quadratic", "logSNR")),), label="{family} {skip_type}"),
    "dpmsolver": _DPM,
    "dpmsolver++": _DPM,
    "unipc": Sweep(axes=(("variant", ("bh1", "bh2")), ("order", (1, 2, 3)), ("skip_type", ("logSNR", "time_uniform")),
                         ("prediction", ("data",))),
                   label="{family}-{variant} o{order} {skip_type}{prediction}",
                   display={"prediction": {"data": "", "noise": " noise"}}, order_note="+1 (corrector)"),
}

_FULL_SWEEPS = {
    "scire": SWEEPS["scire"].replace_axes(skip_type=("NSR", "time_uniform", "time_quadratic", "logSNR", "karras")),
    "ddim": SWEEPS["ddim"].replace_axes(skip_type=("time_uniform", "NSR", "time_quadratic", "logSNR", "karras")),
    **{name: _DPM.replace_axes(method=("multistep", "singlestep", "singlestep_fixed"),
                               skip_type=("logSNR", "time_uniform", "time_quadratic"), solver_type=("dpmsolver", "taylor"))
       for name in ("dpmsolver", "dpmsolver++")},
    "unipc": SWEEPS["unipc"].replace_axes(skip_type=("logSNR", "time_uniform", "time_quadratic", "NSR"),
                                          prediction=("data", "noise")),
}

#: drawn in the error-vs-NFE plot and the empirical-order table (when present in the grid)
PLOT: Tuple[Selector, ...] = (
    "default", (FOCUS, {"phi": 1.0}), (FOCUS, {"algorithm": "v2"}), (FOCUS, {"method": "singlestep_agile"}),
    ("dpmsolver++", {"order": 2}), ("dpmsolver", {"method": "singlestep"}), ("unipc", {"variant": "bh1"}),
)
#: the focus' variant compared head to head with the families' defaults (besides its default)
FOCUS_VARIANT = ("phi=1", {"phi": 1.0})
_PROBE_STEPS = 20  # steps of the solvers compared to find a family's configurations by equality


def default_sweep(entry) -> Sweep:
    """A registered solver without a sweep: its registry defaults at every order it accepts."""
    from scire_jax.core.solvers import base

    orders = (entry.fixed["order"],) if "order" in entry.fixed else tuple(getattr(entry.cls, "orders", base.ORDERS))
    return Sweep(axes=(("order", orders),))


def registry_families(names: Optional[Sequence[str]] = None, sweeps: Mapping[str, Sweep] = SWEEPS) -> List[Tuple[str, Any]]:
    """``[(registry name, entry)]`` of the families: :data:`SWEEPS` order, then the registry's.

    Registry names whose default solvers are equal (``dpm`` = ``dpmsolver++``) are one family: the
    one with a sweep, else the most specific (most fixed fields), is kept.  ``names`` limits the
    families (None: all registered).
    """
    from scire_jax.core.solvers.registry import REGISTRY

    chosen: Dict[Any, str] = {}
    for name, entry in REGISTRY.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                key = entry.make(_PROBE_STEPS)
        except (TypeError, ValueError):
            key = name
        if key in chosen:
            other = REGISTRY[chosen[key]]
            if (name in sweeps, len(entry.fixed)) <= (chosen[key] in sweeps, len(other.fixed)):
                continue
        chosen[key] = name
    kept = set(chosen.values())
    order = [name for name in sweeps if name in kept] + [name for name in REGISTRY if name in kept and name not in sweeps]
    return [(name, REGISTRY[name]) for name in order if names is None or name in names]


@dataclasses.dataclass(frozen=True)
class Grid:
    """What the atlas covers.  ``--quick``, the default and ``--full`` are :data:`GRIDS`.

    ``families``: registry names to run (None: every registered family); ``sweeps``: per registry
    name, its configurations (others: :func:`default_sweep`); ``only``: keep only these selectors
    (see ``Selector``) or labels; ``crosscheck``: selectors re-solved with ``sj.solve`` at
    ``crosscheck_nfe`` (the first on every schedule, the others on the first schedule).
    """

    name: str
    problems: Tuple[str, ...] = ("gauss2", "gauss16", "gmm5", "img_gmm")
    schedules: Tuple[str, ...] = ("ddpm", "linear_vp")
    nfes: Tuple[int, ...] = (5, 6, 8, 10, 12, 15, 20, 25, 50, 100)
    families: Optional[Tuple[str, ...]] = None
    sweeps: Mapping[str, Sweep] = dataclasses.field(default_factory=lambda: dict(SWEEPS))
    only: Optional[Tuple[Selector, ...]] = None
    batch: int = 16
    seed: int = 0
    reference_tol: float = 1e-12
    crosscheck: Tuple[Selector, ...] = ()
    crosscheck_nfe: int = 10
    check_reference: bool = True  # diffrax reference vs the closed form on gauss16 (validates the ground truth)


_CROSSCHECK = ("default", (FOCUS, {"algorithm": "v2", "method": "singlestep_agile", "skip_type": "time_quadratic",
                                   "phi": PHIS["2/3"]}))

GRIDS: Dict[str, Grid] = {
    "quick": Grid(
        name="quick", problems=("gauss16", "gmm5"), schedules=("ddpm",), nfes=(5, 10, 20),
        only=("default", (FOCUS, {"algorithm": "v2", "method": "singlestep_agile", "order": 2})),
        reference_tol=1e-10, crosscheck=(FOCUS,), check_reference=False),
    "default": Grid(name="default", crosscheck=_CROSSCHECK),
    "full": Grid(name="full", schedules=("ddpm", "linear_vp", "cosine"), sweeps={**SWEEPS, **_FULL_SWEEPS},
                 crosscheck=_CROSSCHECK),
}


@dataclasses.dataclass(frozen=True)
class Config:
    family: str  # the registry label (CSV column "family")
    label: str
    solver: object
    algorithm: str
    method: str
    order: int
    skip_type: str
    phi: str = ""
    name: str = ""  # the registry name


def _fit_budget(entry, budget: int, fields):
    """The solver with the most steps whose NFE fits the budget (EDM's Heun: 2 N - 1 evaluations for N steps)."""
    import scire_jax as sj

    reference = sj.schedules.linear()  # the NFE depends on the configuration only, not on the schedule
    steps = budget
    solver = entry.make(steps, **fields)
    while sj.plan(solver, reference).nfe > budget and steps > 1:
        steps -= 1
        solver = entry.make(steps, **fields)
    return solver


def _configs(grid: Grid, steps: int) -> List[Config]:
    out: List[Config] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singlestep_fixed with steps % order != 0 warns (true NFE is recorded)
        for name, entry in registry_families(grid.families, grid.sweeps):
            sweep = grid.sweeps.get(name) or default_sweep(entry)
            fields_order = [field for field, _ in sweep.axes]
            for combination in itertools.product(*(names for _, names in sweep.axes)):
                names = dict(zip(fields_order, combination))
                if sweep.exclude is not None and sweep.exclude(names):
                    continue
                fields = {field: sweep.values.get(field, {}).get(value, value) for field, value in names.items()}
                try:
                    solver = _fit_budget(entry, steps, fields)
                except (TypeError, ValueError):
                    continue
                text = {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)}
                text.update({field: sweep.display.get(field, {}).get(value, value) for field, value in names.items()})
                label = sweep.label.format(family=entry.label, **text)
                algorithm = names.get("algorithm", names.get("variant", name))
                out.append(Config(entry.label, label, solver, str(algorithm), str(solver.method), int(solver.order),
                                  str(solver.skip_type), str(names.get("phi", "")), name))
    return out


def resolve(grid: Grid, selectors: Sequence[Selector], configs: Optional[List[Config]] = None) -> List[Tuple[str, str]]:
    """``[(display name, label)]`` of the configurations the selectors name (absent ones are left out).

    Display names: the family's registry label for a default, ``"label (field=value, ...)"`` otherwise.
    """
    from scire_jax.core.solvers.registry import REGISTRY

    steps = max(grid.nfes)
    configs = _configs(grid, steps) if configs is None else configs
    by_solver = {}
    for config in configs:
        by_solver.setdefault((config.name, config.solver), config.label)
    labels = {config.label for config in configs}
    families = [name for name, _ in registry_families(grid.families, grid.sweeps)]
    out: List[Tuple[str, str]] = []
    for selector in selectors:
        if isinstance(selector, str) and selector in labels:
            out.append((selector, selector))
            continue
        if selector == "default":
            wanted = [(name, {}) for name in families]
        elif isinstance(selector, str):
            wanted = [(selector, {})]
        else:
            wanted = [selector]
        for name, fields in wanted:
            if name not in REGISTRY:
                continue
            entry = REGISTRY[name]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    solver = _fit_budget(entry, steps, fields)
            except (TypeError, ValueError):
                continue
            label = by_solver.get((name, solver))
            if label is not None:
                settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
                display = f"{entry.label} ({settings})" if settings else entry.label
                if (display, label) not in out:
                    out.append((display, label))
    return out


def solver_configs(grid: Grid, steps: int, verbose: bool = False) -> List[Config]:
    """Every configuration of ``grid`` at ``steps``: the registered families' sweeps (``grid.only`` applied)."""
    out = _configs(grid, steps)
    if verbose:
        for name in missing_families(grid):
            print(f"note: {name} is not registered in this scire_jax (skipped)", flush=True)
    if grid.only is not None:
        keep = {label for _, label in resolve(grid, grid.only)}
        out = [config for config in out if config.label in keep]
    return out


def missing_families(grid: Grid) -> List[str]:
    """Names of the grid's sweeps (and ``families``) that the registry does not hold."""
    from scire_jax.core.solvers.registry import REGISTRY

    names = list(grid.sweeps) + [name for name in (grid.families or ()) if name not in grid.sweeps]
    return [name for name in names if name not in REGISTRY and (grid.families is None or name in grid.families)]


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


# -- solving many plans: the public executor, vmapped over stacked plans ------------------------------


def solve_stacked(plans: Sequence, noise_fn, x_start):
    """Plans of one :func:`~scire_jax.core.plans.stacking_key` in one compiled, vmapped call of ``sj.execute``.

    Returns ``x`` at ``t_end`` of every plan, shape ``(len(plans), *x_start.shape)``.
    """
    import jax

    import scire_jax as sj
    from scire_jax.core.plans import stack_plans

    return jax.jit(jax.vmap(lambda plan: sj.execute(plan, noise_fn, None, x_start)))(stack_plans(plans))


def solve_plans(plans: Sequence, noise_fn, x_start, progress: Optional[Callable[[int, int], None]] = None) -> List:
    """Every plan, grouped by ``stacking_key`` (one compile per group): ``[x at t_end]`` in the plans' order."""
    from scire_jax.core.plans import stacking_key

    groups = collections.defaultdict(list)
    for index, plan in enumerate(plans):
        groups[stacking_key(plan)].append(index)
    outputs = [None] * len(plans)
    for number, indices in enumerate(groups.values()):
        result = np.asarray(solve_stacked([plans[i] for i in indices], noise_fn, x_start))
        for row, i in enumerate(indices):
            outputs[i] = result[row]
        if progress is not None:
            progress(number + 1, len(groups))
    return outputs


# -- the atlas -------------------------------------------------------------------------------------------


def _x64():
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX
    return enable_x64()


def require_diffrax() -> None:
    """Raise ``ModuleNotFoundError`` (one line naming the ``bench`` extra) if diffrax is missing."""
    try:
        import diffrax  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(MISSING_DIFFRAX, name="diffrax") from None


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

    Raises:
      ModuleNotFoundError: diffrax is not installed (``pip install -e ".[bench]"``).
    """
    if isinstance(grid, str):
        grid = GRIDS[grid]
    require_diffrax()
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
    product = analytic.Product(models)
    noise_fn = analytic.coefficient_model_fn(product)  # alpha, sigma from the plan

    # The fixed batch: x_T of each problem from its own key, flattened and concatenated.
    keys = jax.random.split(jax.random.key(grid.seed), len(models))
    x_blocks = [analytic.prior_sample(key, (grid.batch,) + tuple(model.shape), jnp.float64) for key, model in zip(keys, models)]
    x_start = product.join(x_blocks)
    blocks = list(zip(product.offsets, product.sizes))

    # Ground truth, once per problem and schedule.
    truth = {}
    for schedule_name, schedule in schedules.items():
        t_start, t_end = schedule.t_max, schedule.t_min
        truth[schedule_name] = np.concatenate(
            [_ground_truth(model, schedule, x, t_start, t_end, grid.reference_tol).reshape(grid.batch, -1)
             for model, x in zip(models, x_blocks)], axis=1)
    timings["ground_truth_s"] = time.perf_counter() - clock
    log(f"ground truth: {timings['ground_truth_s']:.1f} s")

    # The families and the named configurations (plot, head to head), from the registry.
    families = registry_families(grid.families, grid.sweeps)
    reference_configs = _configs(grid, max(grid.nfes))
    focus = dict(families)[FOCUS].label if FOCUS in dict(families) else None
    head_to_head = dict(resolve(grid, ("default",), reference_configs))
    if focus is not None:
        variant = resolve(grid, ((FOCUS, FOCUS_VARIANT[1]),), reference_configs)
        if variant:
            head_to_head[f"{focus} ({FOCUS_VARIANT[0]})"] = variant[0][1]
    info = {"grid": grid.name, "problems": list(grid.problems), "schedules": list(grid.schedules), "nfes": list(grid.nfes),
            "batch": grid.batch, "seed": grid.seed, "reference_tol": grid.reference_tol, "timings": timings,
            "families": {entry.label: name for name, entry in families}, "focus": focus,
            "focus_variant": f"{focus} ({FOCUS_VARIANT[0]})",
            "head_to_head": head_to_head, "plot": [label for _, label in resolve(grid, PLOT, reference_configs)],
            "order_notes": {entry.label: (grid.sweeps.get(name) or default_sweep(entry)).order_note
                            for name, entry in families},
            "missing_families": missing_families(grid)}
    for name in info["missing_families"]:
        log(f"note: {name} is not registered in this scire_jax: skipped")
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

    # Plans (host), over every NFE, configuration and schedule.
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
    timings["plans_s"] = time.perf_counter() - clock
    from scire_jax.core.plans import stacking_key

    num_groups = len({stacking_key(entry[3]) for entry in entries})
    log(f"{len(entries)} plans ({len(skipped)} skipped) in {timings['plans_s']:.1f} s; {num_groups} compiled groups")
    info["num_solves"] = len(entries) * len(models)
    info["num_plans"] = len(entries)
    info["num_groups"] = num_groups
    info["skipped"] = skipped

    # Solve every group of stackable plans with the public executor.
    clock = time.perf_counter()

    def progress(done, total):
        if done % 25 == 0:
            log(f"  {done}/{total} groups, {time.perf_counter() - clock:.0f} s")

    outputs = solve_plans([entry[3] for entry in entries], noise_fn, x_start, progress)
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
    for number, (_, label) in enumerate(resolve(grid, grid.crosscheck, reference_configs)):
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
            print(f"WARNING: the stacked executor differs from sj.solve by {worst:.2e}", file=sys.stderr)
    return rows, info


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


def families_of(rows) -> List[str]:
    """The families present in ``rows``, in order of appearance (the registry-derived atlas order)."""
    return list(dict.fromkeys(row["family"] for row in rows))


def focus_family(rows=None, info=None) -> str:
    """The display name of :data:`FOCUS` (from the run's info, else the registry)."""
    if info and info.get("focus"):
        return info["focus"]
    from scire_jax.core.solvers.registry import REGISTRY

    return REGISTRY[FOCUS].label if FOCUS in REGISTRY else FOCUS


def family_comparison(rows):
    """Per cell: the best row of each family (families as they appear in ``rows``)."""
    families = families_of(rows)
    table = {}
    for cell, cell_rows in sorted(_cells(rows).items()):
        table[cell] = {family: _best(cell_rows, family=family) for family in families}
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
    for best in table.values():
        if best.get(family) and best.get(rival):
            total += 1
            wins += best[family]["rms_error"] < best[rival]["rms_error"]
            ratios.append(best[family]["rms_error"] / best[rival]["rms_error"])
    return wins, total, ratios


def write_markdown(rows, info, grid: Grid, path: pathlib.Path):
    table = family_comparison(rows)
    ranking = overall_ranking(rows)
    focus = focus_family(rows, info)
    rivals = [family for family in families_of(rows) if family != focus]
    family_of = {row["solver"]: row["family"] for row in rows}
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
    lines += [f"## Where {focus} wins and loses", ""]
    lines.append(f"Best-of-family comparisons (each family at its best configuration for the cell; {focus} has many more "
                 "configurations -- 4 skip types x 4 phi x methods -- so its best-of is a generous upper bound on what a "
                 "user who does not tune gets):")
    lines.append("")
    lines.append(f"| {focus} (best) vs | cells won | median error ratio {focus} / rival | NFE <= 10: won | NFE > 10: won |")
    lines.append("|---|---|---|---|---|")
    for rival in rivals:
        wins, total, ratios = _wins(table, focus, rival)
        if not total:
            continue
        low = {c: b for c, b in table.items() if c[2] <= 10}
        high = {c: b for c, b in table.items() if c[2] > 10}
        lw, lt, _ = _wins(low, focus, rival)
        hw, ht, _ = _wins(high, focus, rival)
        lines.append(f"| {rival} | {wins}/{total} | {np.median(ratios):.2f} | {lw}/{lt} | {hw}/{ht} |")
    lines.append("")
    head_to_head = info.get("head_to_head", {})
    default_rows = {label: [r for r in rows if r["solver"] == label] for label in head_to_head.values()}
    if sum(bool(v) for v in default_rows.values()) >= 2:
        lines.append("Default configurations head to head (geometric mean of the RMS error over every problem and schedule):")
        lines.append("")
        present = [(family, label) for family, label in head_to_head.items() if default_rows[label]]
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
    lines += _auto_findings(rows, table, ranking, info)
    counts = ", ".join(f"{len({r['solver'] for r in rows if r['family'] == rival})} {rival}" for rival in rivals)
    lines += ["", "Caveats:", "",
              f"* Best-of-family favours {focus}: per cell it picks the best of up to "
              f"{len({r['solver'] for r in rows if r['family'] == focus})} {focus} configurations against "
              f"{counts} ones. The geo-mean ranking below picks one "
              "configuration per NFE for all cells, which is less optimistic; the head-to-head table is untuned.",
              "* Configurations with phi != 1 are not monotone in NFE (their first-order term cancels other errors at some "
              "step counts), so a win at one NFE need not carry over to a neighbouring NFE or another model.",
              "* The models are exact (no network error) and the data are low-dimensional Gaussians / mixtures; the error is "
              "measured at t_end = 1e-3 without a final denoising step. Sample quality of trained networks (FID) can rank "
              "solvers differently.",
              ]

    lines += ["", "## Most accurate configuration at each NFE (all problems and schedules)", "",
              "Ranked by the geometric mean of the RMS error over every (problem, schedule) cell.", "",
              f"| NFE | best | error (geo-mean) | 2nd | 3rd | best {focus} | error |", "|---|---|---|---|---|---|---|"]
    for budget, scored in ranking.items():
        if not scored:
            continue
        sci = next(((l, v) for l, v in scored if family_of.get(l) == focus), None)
        second = f"`{scored[1][0]}` {scored[1][1]:.2e}" if len(scored) > 1 else ""
        third = f"`{scored[2][0]}` {scored[2][1]:.2e}" if len(scored) > 2 else ""
        sci_text = f"`{sci[0]}` | {sci[1]:.2e}" if sci else "n/a | "
        lines.append(f"| {budget} | `{scored[0][0]}` | {scored[0][1]:.2e} | {second} | {third} | {sci_text} |")

    lines += _order_table(rows, info)
    lines += ["", "## Per problem and schedule", "",
              "Best configuration of each family per NFE budget (error, configuration); **bold** = best overall.", ""]
    for problem in problems:
        for schedule in schedules:
            lines.append(f"### {problem} / {schedule}")
            lines.append("")
            columns = [focus] + rivals
            lines.append("| NFE | best overall | " + " | ".join(columns) + " |")
            lines.append("|---|---|" + "---|" * len(columns))
            for budget in budgets:
                best = table.get((problem, schedule, budget))
                if not best:
                    continue
                overall = min((b for b in best.values() if b), key=lambda r: r["rms_error"], default=None)
                cells = []
                for family in columns:
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


def _order_table(rows, info):
    labels = [label for label in info.get("plot", ()) if any(r["solver"] == label for r in rows)]
    orders, budgets = empirical_orders(rows, set(labels))
    if not orders:
        return []
    low, high = budgets
    lines = ["", f"## Empirical order (slope of the error between NFE {low} and {high}, median over cells)", "",
             "| configuration | nominal order | empirical order |", "|---|---|---|"]
    nominal = {r["solver"]: r["order"] for r in rows}
    family_of = {r["solver"]: r["family"] for r in rows}
    notes = info.get("order_notes", {})
    for label in labels:
        if label in orders:
            extra = notes.get(family_of[label], "")
            lines.append(f"| `{label}` | {nominal[label]}{extra} | {orders[label]:.2f} |")
    return lines


def _auto_findings(rows, table, ranking, info):
    """Data-driven statements (regenerated with the numbers)."""
    focus = focus_family(rows, info)
    rivals = [family for family in families_of(rows) if family != focus]
    lines = ["Findings (computed from this run):", ""]
    # Which family wins the most cells overall.
    winners = collections.Counter()
    for best in table.values():
        present = [b for b in best.values() if b]
        if present:
            winners[min(present, key=lambda r: r["rms_error"])["family"]] += 1
    total = sum(winners.values())
    if total:
        lines.append("* Cells won (best single configuration of the cell): " +
                     ", ".join(f"{family} {count}/{total}" for family, count in winners.most_common()) + ".")
    for rival in rivals:
        by_budget = collections.defaultdict(list)
        for (_, _, budget), best in table.items():
            if best.get(focus) and best.get(rival):
                by_budget[budget].append(best[focus]["rms_error"] / best[rival]["rms_error"])
        if by_budget:
            won = [b for b, r in sorted(by_budget.items()) if np.median(r) < 1]
            lost = [b for b, r in sorted(by_budget.items()) if np.median(r) >= 1]
            lines.append(f"* Best {focus} vs best {rival}: median error ratio below 1 ({focus} better) at NFE "
                         f"{', '.join(map(str, won)) or 'none'}; at or above 1 ({focus} worse or equal) at NFE "
                         f"{', '.join(map(str, lost)) or 'none'}.")
    # Which SciRE settings win within SciRE.
    sci_best = collections.Counter()
    for best in table.values():
        if best.get(focus):
            row = best[focus]
            sci_best[(row["algorithm"], row["method"], row["skip_type"], row["phi"])] += 1
    if sci_best:
        lines.append(f"* Most frequent best {focus} setting (algorithm, method, skip type, phi): " +
                     "; ".join(f"{' '.join(map(str, k))} ({v} cells)" for k, v in sci_best.most_common(3)) + ".")
    # The SciRE default across NFE, and phi = 1.
    def geo(label, budget):
        errors = [r["rms_error"] for r in rows if r["solver"] == label and r["budget"] == budget]
        return float(np.exp(np.mean(np.log(errors)))) if errors and all(e > 0 and math.isfinite(e) for e in errors) else None

    budgets = sorted({r["budget"] for r in rows})
    head_to_head = info.get("head_to_head", {})
    default, phi_one = head_to_head.get(focus), head_to_head.get(info.get("focus_variant"))
    series = [(b, geo(default, b)) for b in budgets]
    series = [(b, v) for b, v in series if v is not None]
    if len(series) >= 3:
        mid_budget = 10 if any(b == 10 for b, _ in series) else series[len(series) // 2][0]
        mid_value = dict(series)[mid_budget]
        last_budget, last_value = series[-1]
        if last_budget > mid_budget:
            expected = last_budget / mid_budget
            lines.append(f"* The default {focus} configuration (`{default}`) leads at low NFE but hardly converges: its "
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
    for cell_rows in _cells(rows).values():
        sci = [r for r in cell_rows if r["family"] == focus and math.isfinite(r["rms_error"])]
        if sci:
            phi_counts[min(sci, key=lambda r: r["rms_error"])["phi"]] += 1
    if phi_counts:
        lines.append(f"* phi of the best {focus} configuration per cell: " +
                     ", ".join(f"{phi} {count}" for phi, count in phi_counts.most_common()) + ".")
    return lines


def plot(rows, path: pathlib.Path, labels: Optional[Sequence[str]] = None) -> bool:
    """Log-log error vs NFE of ``labels`` (default: the first 8 configurations) per problem and schedule."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    schedules = list(dict.fromkeys(r["schedule"] for r in rows))
    labels = [label for label in (labels or ()) if any(r["solver"] == label for r in rows)]
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
    plotted = plot(rows, out / "accuracy_error_vs_nfe.png", info.get("plot"))
    if verbose:
        print(f"wrote {out / 'accuracy_table.csv'}, {out / 'accuracy.json'}, {out / 'accuracy.md'}"
              + (f", {out / 'accuracy_error_vs_nfe.png'}" if plotted else " (no matplotlib: no plot)"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI grid (< 60 s)")
    size.add_argument("--full", action="store_true", help="everything (default grid + extra grids and schedules)")
    parser.add_argument("--out", default=".", help="output folder (default: the current directory)")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "default"
    try:
        run_atlas(GRIDS[name], args.out)
    except ModuleNotFoundError as error:
        if error.name != "diffrax":
            raise
        print(MISSING_DIFFRAX, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
