"""Smoke tests of benchmarks/accuracy.py (quick grid) and benchmarks/speed.py (tiny sizes).

No timing thresholds: only that the benchmarks run, write their outputs and return sane numbers.
"""

import csv
import importlib.util
import math
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    path = BENCHMARKS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scire_jax_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    # Deliberately NOT registered in sys.modules: `scire-jax bench accuracy` loads the file this way.
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_atlas(tmp_path_factory):
    accuracy = _load("accuracy")
    out = tmp_path_factory.mktemp("atlas")
    assert accuracy.main(["--quick", "--out", str(out)]) == 0
    with open(out / "accuracy_table.csv") as handle:
        rows = list(csv.DictReader(handle))
    return accuracy, out, rows


def test_quick_atlas_writes_outputs(quick_atlas):
    _, out, rows = quick_atlas
    for name in ("accuracy_table.csv", "accuracy.md", "accuracy.json"):
        assert (out / name).stat().st_size > 0, name
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (out / "accuracy_error_vs_nfe.png").stat().st_size > 0
    assert rows
    text = (out / "accuracy.md").read_text()
    assert "Most accurate configuration at each NFE" in text and "Where SciRE wins and loses" in text


def test_quick_atlas_errors_finite_and_nfe_recorded(quick_atlas):
    _, _, rows = quick_atlas
    for row in rows:
        error = float(row["rms_error"])
        assert math.isfinite(error) and error >= 0, row
        assert 1 <= int(row["nfe"]) <= int(row["budget"]), row


def test_quick_atlas_ddim_converges(quick_atlas):
    _, _, rows = quick_atlas
    cells = {}
    for row in rows:
        if row["solver"] == "DDIM time_uniform":
            cells.setdefault((row["problem"], row["schedule"]), {})[int(row["budget"])] = float(row["rms_error"])
    assert cells, "the quick grid must contain DDIM"
    for cell, errors in cells.items():
        budgets = sorted(errors)
        assert errors[budgets[-1]] < errors[budgets[0]], (cell, errors)
        # monotone-ish: never more than 10% worse with more NFE
        for low, high in zip(budgets, budgets[1:]):
            assert errors[high] < 1.1 * errors[low], (cell, errors)


def test_quick_atlas_best_solver_is_a_row(quick_atlas):
    accuracy, _, rows = quick_atlas
    typed = [{**row, "budget": int(row["budget"]), "nfe": int(row["nfe"]), "order": int(row["order"]),
              "rms_error": float(row["rms_error"])} for row in rows]
    best = accuracy.best_per_nfe(typed)
    assert best
    keys = {(r["problem"], r["schedule"], r["budget"], r["solver"]) for r in typed}
    for (problem, schedule, budget), row in best.items():
        assert (problem, schedule, budget, row["solver"]) in keys
        cell = [r["rms_error"] for r in typed if (r["problem"], r["schedule"], r["budget"]) == (problem, schedule, budget)]
        assert row["rms_error"] == min(cell)
    for budget, ranked in accuracy.overall_ranking(typed).items():
        assert ranked and ranked[0][0] in {r["solver"] for r in typed if r["budget"] == budget}


def test_grouped_executor_matches_solve():
    """The atlas' vmapped, padded executor reproduces sj.solve (multistep, singlestep, UniPC, short and padded)."""
    import jax
    import numpy as np
    import scire_jax as sj
    from scire_jax.models import analytic

    accuracy = _load("accuracy")
    with jax.enable_x64(True):
        model = accuracy.make_problem("gmm5")
        schedule = accuracy.make_schedule("ddpm")
        noise_fn, _ = accuracy._block_noise_fn([model])
        evaluate = accuracy._evaluator(noise_fn)
        x = analytic.prior_sample(jax.random.key(3), (4, 5), jax.numpy.float64)
        solvers = [sj.SciRE(algorithm="v1", method="multistep", order=3, steps=5),
                   sj.SciRE(algorithm="v1", method="multistep", order=2, steps=9, skip_type="logSNR")]
        if hasattr(sj, "UniPC"):
            solvers += [sj.UniPC(variant="bh2", order=3, steps=5), sj.UniPC(variant="bh1", order=2, steps=8)]
        singlesteps = [sj.SciRE(algorithm="v2", method="singlestep_fixed", order=3, steps=6),
                       sj.SciRE(algorithm="v2", method="singlestep_fixed", order=3, steps=12, phi=1.0)]
        for group in (solvers[:2], solvers[2:], singlesteps):
            if not group:
                continue
            plans = [sj.plan(solver, schedule) for solver in group]
            keys = {accuracy._group_key(plan) for plan in plans}
            assert len(keys) == 1, keys  # different lengths share one padded group
            coefficients = [accuracy._start_coefficients(plan, schedule) for plan in plans]
            grouped = np.asarray(accuracy.solve_group(plans, evaluate, x, coefficients))
            for solver, result in zip(group, grouped):
                expected = sj.solve(solver, schedule, analytic.model_fn(model, schedule), None, x)
                np.testing.assert_allclose(result, np.asarray(expected), rtol=1e-11, atol=1e-11)


def test_speed_functions_smoke():
    speed = _load("speed")
    import scire_jax as sj

    compile_rows = speed.compile_times((3,), repeats=1, batch=1, size=4, channels=4, verbose=False)
    assert len(compile_rows) == 1
    for key in ("trace_s", "compile_s", "total_s", "plan_s"):
        assert math.isfinite(compile_rows[0][key]) and compile_rows[0][key] > 0
    rows = speed.overhead([("DDIM 3", sj.DDIM(steps=3, skip_type="time_uniform"))], repeats=2, batch=1, size=4,
                          channels=4, trajectory=(False, True), verbose=False)
    assert [row["trajectory"] for row in rows] == [False, True]
    for row in rows:
        assert row["nfe"] == 3
        for key in ("network_s", "solve_s", "overhead_ratio"):
            assert math.isfinite(row[key]) and row[key] > 0
    assert speed.machine()["cpu_count"] >= 1
