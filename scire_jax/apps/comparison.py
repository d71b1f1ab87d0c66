"""Solvers side by side on one network: sample grids, classifier metrics and error vs NFE.

This is what ``scire-jax compare`` runs.  Every solver and NFE starts from the same initial noise
(sample ``i`` from ``fold_in(key, i)``), so the grids show the *same* samples drawn by different
solvers, and the error of each against a many-step reference solution of the same network is the
discretisation error of the sampler alone ("MSE vs ground truth" on a real network).

Solvers are named by the registry's specs, ``NAME[:FIELD=VALUE,...]``
(:func:`scire_jax.core.solvers.registry.solver_from_spec`), e.g. ``scire``,
``scire:method=singlestep_fixed,order=2,phi=1``, ``dpm:algorithm=dpmsolver,order=2``, ``ddim``,
``unipc:order=2,variant=bh2``.

Example:
    >>> import jax.numpy as jnp, scire_jax as sj
    >>> from scire_jax.apps import comparison
    >>> schedule = sj.schedules.linear()
    >>> noise_fn = sj.analytic.model_fn(sj.analytic.Gaussian(jnp.zeros(4), jnp.ones(4)), schedule)
    >>> result = comparison.compare_solvers(noise_fn, None, schedule, ["scire", "ddim"], [5, 10],
    ...                                     num=4, shape=(4,), reference_steps=200, with_metrics=False)
    >>> sorted(result.errors)
    [('ddim', 5), ('ddim', 10), ('scire', 5), ('scire', 10)]
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np

from scire_jax.apps.progress import progress as progress_bar
from scire_jax.apps.progress import step_callback
from scire_jax.core import sampling
from scire_jax.core.solvers.registry import solver_from_spec

__all__ = ["solver_from_spec", "solver_label", "sample_in_chunks", "compare_solvers", "Comparison",
           "format_tables", "comparison_image"]

def solver_label(solver) -> str:
    """A short human label (``SciRE-v1 3M``, ``DPM++ 2S``, ``UniPC-3``, ``DDIM``): ``solver.label()``."""
    return solver.label()


def sample_in_chunks(sample_fn: Callable, params, key, shape: Sequence[int], batch_size: Optional[int] = None,
                     progress: Optional[str] = None, stream=None,
                     chunk_params: Optional[Callable[[int, int], Any]] = None) -> np.ndarray:
    """Draw ``shape[0]`` samples in chunks of ``batch_size`` with one compilation.

    ``sample_fn`` is a :func:`scire_jax.make_sampler` (or sharded) sampler; chunk ``k`` draws samples
    ``k b .. (k+1) b - 1`` (``first_index = k b``), so every sample starts from the same noise as in
    the one-batch result for the same key (the outputs agree up to the network's float rounding,
    which XLA may order differently for different batch sizes).  The last chunk is padded to ``b`` and cut, so every chunk reuses the same executable.

    Args:
      sample_fn: ``sample_fn(params, key, shape, first_index)``.
      params, key: as for ``sample_fn``.
      shape: full output shape ``(n, ...)``.
      batch_size: chunk size (default: ``n``, one chunk).
      progress: a label: show a progress bar (samples, samples/s) on ``stream`` (default stderr;
        shown on a terminal or when forced, see :func:`scire_jax.apps.progress.progress`).
      chunk_params: optional ``chunk_params(first, batch) -> params`` of the chunk starting at sample
        ``first`` (e.g. with that chunk's per-sample class labels; same shapes for every chunk), used
        instead of ``params``.

    Returns:
      numpy array of ``shape``.
    """
    count = int(shape[0])
    batch = count if batch_size is None else min(int(batch_size), count)
    compiled = jax.jit(sample_fn, static_argnums=2)
    chunks = []
    with progress_bar(count, progress, "sample", True if progress is None else None, file=stream) as bar:
        for first in range(0, count, batch):
            chunk_in = params if chunk_params is None else chunk_params(first, batch)
            chunk = np.asarray(compiled(chunk_in, key, (batch,) + tuple(shape[1:]), first))
            chunks.append(chunk[:min(batch, count - first)])
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks, axis=0)


class Comparison(NamedTuple):
    """Results of :func:`compare_solvers`; dictionaries keyed by ``(spec, nfe_budget)``."""

    specs: List[str]                     # solver specs, in order
    labels: Dict[str, str]               # spec -> human label
    budgets: List[int]                   # requested NFE budgets
    nfe: Dict[Tuple[str, int], int]      # actual network evaluations
    samples: Dict[Tuple[str, int], np.ndarray]  # (n, ...) unclipped final samples
    errors: Dict[Tuple[str, int], Dict[str, float]]  # rmse / max_abs against the reference
    metrics: Dict[Tuple[str, int], Dict[str, float]]  # classifier metrics ({} without metrics)
    seconds: Dict[Tuple[str, int], float]  # wall time of the sampling (compilation included)
    reference: np.ndarray                # (error_num, ...) reference solution of the first samples
    reference_label: str
    reference_self_error: Dict[str, float]  # reference vs the same solver at half the steps
    reference_metrics: Dict[str, float]


def _errors(x, reference) -> Dict[str, float]:
    difference = np.asarray(x, np.float64) - np.asarray(reference, np.float64)
    return {"rmse": float(np.sqrt(np.mean(difference ** 2))), "max_abs": float(np.max(np.abs(difference)))}


def compare_solvers(noise_fn: Callable, params, schedule, specs: Sequence[str], budgets: Sequence[int], *,
                    num: int = 64, shape: Sequence[int], seed: int = 0, batch_size: Optional[int] = None,
                    error_num: Optional[int] = None, reference_steps: int = 1000, reference_spec: str = "dpm:order=3",
                    with_metrics: bool = True, metrics_name: str = "mnist16",
                    progress: bool = False, stream=None, mesh=None) -> Comparison:
    """Sample ``num`` images with every solver spec at every NFE budget and score them.

    Args:
      noise_fn, params, schedule: the model, as for :func:`scire_jax.make_sampler`.
      specs: solver specs (:func:`solver_from_spec`).
      budgets: NFE budgets (each solver's ``steps``).
      num: samples per solver and NFE, all from the same initial noise.
      shape: the shape of one sample (e.g. ``(16, 16, 1)``).
      seed: PRNG seed of the initial noise.
      batch_size: chunk size of the sampling (memory bound), default ``num``.
      error_num: the reference solution (the costly part: ``1.5 x reference_steps`` network calls
        per sample) and the errors use the first ``error_num`` samples (default: all ``num``).
      reference_steps: steps of the reference solution (by ``reference_spec``); its own error is
        estimated by the same solver at ``reference_steps // 2`` (``reference_self_error``).
      with_metrics: compute :func:`scire_jax.apps.metrics.sample_metrics` (16x16x1 digit models only).
      progress: show a progress bar per run on ``stream`` (default stderr; on a terminal, or when
        forced by ``SCIRE_JAX_PROGRESS=1``): samples per chunk, and solver steps for the reference
        solves (on one device).
      mesh: optional batch mesh (:func:`scire_jax.batch_mesh`): shard every chunk over its devices
        (``batch_size`` must then be a multiple of the device count).

    Returns:
      A :class:`Comparison`.
    """
    for budget in budgets:
        if int(budget) < 1:
            raise ValueError(f"budgets contains {budget}: every NFE budget must be >= 1")
    if num < 1:
        raise ValueError(f"num={num} is not allowed: it must be >= 1")
    solvers = {spec: {budget: solver_from_spec(spec, budget) for budget in budgets} for spec in specs}
    reference_solver = solver_from_spec(reference_spec, reference_steps)
    check_solver = solver_from_spec(reference_spec, max(1, reference_steps // 2))
    for per_budget in solvers.values():
        for solver in per_budget.values():
            sampling.plan(solver, schedule)  # every plan validated before any sampling
    sampling.plan(reference_solver, schedule)
    score: Optional[Callable[[np.ndarray], Dict[str, float]]] = None
    if with_metrics:
        from scire_jax.apps import metrics as metrics_lib

        def score_metrics(x):
            return metrics_lib.sample_metrics(np.clip(x, -1.0, 1.0), metrics_name)

        score = score_metrics
    if mesh is not None:
        from scire_jax.core.sharding import replicate

        params = replicate(params, mesh)
    key = sampling.seed_key(seed)
    error_num = num if error_num is None else min(int(error_num), num)
    if error_num < 1:
        raise ValueError(f"error_num={error_num} is not allowed: it must be >= 1")

    def run(solver, label, count=num, per_step=False):
        """Sample ``count`` with ``solver``; ``per_step``: the bar counts solver steps (long solves)."""
        started = time.perf_counter()
        batch = count if batch_size is None else min(batch_size, count)
        if mesh is not None:
            batch = -(-batch // mesh.size) * mesh.size
        if per_step and mesh is None:  # ordered per-step host callbacks: one device
            steps = sampling.plan(solver, schedule).num_steps * -(-count // batch)
            with progress_bar(steps, label, "step", None if progress else True, file=stream) as bar:
                callback = None if bar.disable else step_callback(bar)
                sample_fn = sampling.make_sampler(solver, schedule, noise_fn, callback=callback)
                x = sample_in_chunks(sample_fn, params, key, (count,) + tuple(shape), batch)
        else:
            sample_fn = sampling.make_sampler(solver, schedule, noise_fn, mesh=mesh)
            x = sample_in_chunks(sample_fn, params, key, (count,) + tuple(shape), batch,
                                 progress=label if progress else None, stream=stream)
        return x, time.perf_counter() - started

    reference_label = f"{solver_label(reference_solver)} x{sampling.plan(reference_solver, schedule).nfe}"
    reference, _ = run(reference_solver, reference_label, error_num, per_step=True)
    check, _ = run(check_solver, f"{solver_label(check_solver)} x{sampling.plan(check_solver, schedule).nfe}",
                   error_num, per_step=True)
    result = Comparison(list(specs), {}, [int(b) for b in budgets], {}, {}, {}, {}, {}, reference,
                        reference_label, _errors(check, reference),
                        score(reference) if score and error_num == num else {})
    for spec in specs:
        for budget in budgets:
            solver = solvers[spec][budget]
            result.labels[spec] = solver_label(solver)
            nfe = sampling.plan(solver, schedule).nfe
            x, seconds = run(solver, f"{solver_label(solver)} NFE {nfe}")
            result.nfe[(spec, budget)] = nfe
            result.samples[(spec, budget)] = x
            result.seconds[(spec, budget)] = seconds
            result.errors[(spec, budget)] = _errors(x[:error_num], reference)
            result.metrics[(spec, budget)] = score(x) if score else {}
    return result


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_tables(result: Comparison, real_fd: Optional[Dict[str, float]] = None) -> str:
    """Markdown tables: RMSE vs the reference, and (if computed) classifier FD and % confident."""
    header = ["solver"] + [f"NFE {b}" for b in result.budgets]

    def rows(cell):
        return [[f"{result.labels[s]} (`{s}`)"] + [cell(s, b) for b in result.budgets] for s in result.specs]

    def nfe_note(s, b):
        return "" if result.nfe[(s, b)] == b else f" ({result.nfe[(s, b)]})"

    parts = [_table(f"RMSE vs {result.reference_label}, first {len(result.reference)} samples (reference's own "
                    f"RMSE vs half its steps: {result.reference_self_error['rmse']:.1e})", header,
                    rows(lambda s, b: f"{result.errors[(s, b)]['rmse']:.2e}{nfe_note(s, b)}"))]
    if any(result.metrics.values()):
        count = next(iter(result.metrics.values()))["n"]
        notes = [f"reference {result.reference_metrics['fd']:.2f}"] if result.reference_metrics else []
        if real_fd:
            notes.append("real data: " + ", ".join(f"{k} {v:.2f}" for k, v in real_fd.items()))
        note = "; ".join(notes) or "lower is better"
        parts.append(_table(f"classifier FD, {count} samples ({note})", header,
                            rows(lambda s, b: f"{result.metrics[(s, b)]['fd']:.2f}")))
        reference_note = (f"; reference {100 * result.reference_metrics['confident']:.1f} %"
                          if result.reference_metrics else "")
        parts.append(_table(f"confident (top class p > 0.9{reference_note})",
                            header, rows(lambda s, b: f"{100 * result.metrics[(s, b)]['confident']:.1f} %")))
    parts.append(_table("wall time (s, compilation included)", header,
                        rows(lambda s, b: f"{result.seconds[(s, b)]:.1f}")))
    return "\n\n".join(parts) + "\n"


def comparison_image(result: Comparison, per_cell: int = 16, scale: int = 3) -> np.ndarray:
    """One labelled picture: a row per solver, a column per NFE, the reference on the right.

    Each cell is a grid of the first ``per_cell`` samples, the same samples in every cell.
    """
    from scire_jax.apps.images import image_grid, labelled_grid

    count = min(per_cell, len(result.reference))

    def tile(x):
        return image_grid(np.clip(x[:count], -1.0, 1.0), pad=1)

    cells = [[tile(result.samples[(spec, budget)]) for budget in result.budgets] + [tile(result.reference)]
             for spec in result.specs]
    columns = [f"NFE {budget}" for budget in result.budgets] + ["REFERENCE"]
    return labelled_grid(cells, [result.labels[spec] for spec in result.specs], columns, scale=scale)
