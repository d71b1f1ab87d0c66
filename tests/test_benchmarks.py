"""Smoke tests of benchmarks/accuracy.py (quick grid) and benchmarks/speed.py (tiny sizes).

No timing thresholds: only that the benchmarks run, write their outputs and return sane numbers,
that their solver lists come from the registry, and that the atlas' stacked, vmapped solve is
``sj.solve``.
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
    pytest.importorskip("diffrax")
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


def test_quick_atlas_covers_every_registered_family(quick_atlas):
    """The quick grid runs every registry family's default (a new registered solver shows up)."""
    accuracy, out, rows = quick_atlas
    families = [entry.label for _, entry in accuracy.registry_families()]
    assert {"SciRE", "DDIM", "DPM-Solver++", "UniPC"} <= set(families)
    assert len(families) == len(set(families))  # dpm = dpmsolver++: one family
    assert {row["family"] for row in rows} == set(families)
    text = (out / "accuracy.md").read_text()
    for family in families:
        assert family in text, family


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


def test_default_grid_configurations_from_registry(monkeypatch):
    """The default grid: the documented 228 configurations of the sweeps, plus defaults of unlisted solvers."""
    from scire_jax.core.solvers import registry
    from scire_jax.core.solvers.unipc import UniPC

    accuracy = _load("accuracy")
    grid = accuracy.GRIDS["default"]
    configs = accuracy.solver_configs(grid, 10)
    swept = [c for c in configs if c.name in accuracy.SWEEPS]
    assert len(swept) == 228
    assert len({c.label for c in configs}) == len(configs)
    labels = {c.label for c in configs}
    for label in ("SciRE-v1 multistep o3 NSR phi=official", "SciRE-v2 singlestep_fixed o2 logSNR phi=1-1/e",
                  "DDIM time_uniform", "DPM-Solver multistep o1 logSNR", "DPM-Solver++ singlestep o3 time_uniform",
                  "UniPC-bh1 o2 logSNR"):
        assert label in labels, label
    # a newly registered solver appears with its registry defaults at every order, without a sweep
    monkeypatch.setitem(registry.REGISTRY, "unipc_bh1_test",
                        registry.SolverEntry("unipc_bh1_test", UniPC, {"skip_type": "time_quadratic"},
                                             {"variant": "bh1"}, "UniPC-bh1-test"))
    added = [c for c in accuracy.solver_configs(grid, 10) if c.name == "unipc_bh1_test"]
    assert [c.order for c in added] == [1, 2, 3]
    assert [c.label for c in added] == [f"UniPC-bh1-test multistep o{k} time_quadratic" for k in (1, 2, 3)]
    assert all(c.family == "UniPC-bh1-test" and c.solver.variant == "bh1" for c in added)
    defaults = dict(accuracy.resolve(grid, ("default",)))
    assert defaults["UniPC-bh1-test"] == "UniPC-bh1-test multistep o2 time_quadratic"  # UniPC's default order
    assert defaults["SciRE"] == "SciRE-v1 multistep o3 NSR phi=official"


def test_stacked_solve_matches_solve():
    """The atlas' grouped (stacking_key), stacked, vmapped sj.execute on the Product model equals sj.solve per
    plan to 1e-12 in float64: multistep of different lengths (padded), UniPC, singlestep, every registry default."""
    import jax
    import numpy as np

    import scire_jax as sj
    from scire_jax.core.plans import stacking_key
    from scire_jax.models import analytic

    accuracy = _load("accuracy")
    with jax.enable_x64(True):
        product = analytic.Product([accuracy.make_problem("gauss2"), accuracy.make_problem("gmm5")])
        x = analytic.prior_sample(jax.random.key(3), (4,) + product.shape, jax.numpy.float64)
        solvers = [sj.SciRE(algorithm="v1", method="multistep", order=3, steps=5),
                   sj.SciRE(algorithm="v1", method="multistep", order=2, steps=9, skip_type="logSNR"),
                   sj.UniPC(variant="bh2", order=3, steps=5), sj.UniPC(variant="bh1", order=2, steps=8),
                   sj.SciRE(algorithm="v2", method="singlestep_fixed", order=3, steps=6),
                   sj.SciRE(algorithm="v2", method="singlestep_fixed", order=3, steps=12, phi=1.0)]
        solvers += [solver for _, solver in _load("speed").registry_defaults(6) if solver not in solvers]
        ddpm, linear = accuracy.make_schedule("ddpm"), accuracy.make_schedule("linear_vp")
        cases = [(solver, ddpm) for solver in solvers] + [(solvers[0], linear), (solvers[2], linear)]
        plans = [sj.plan(solver, schedule) for solver, schedule in cases]
        assert len({stacking_key(plan) for plan in plans}) < len(plans)  # some plans share a padded group
        outputs = accuracy.solve_plans(plans, analytic.coefficient_model_fn(product), x)
        # per plan, the public sj.solve with the schedule's model (one compile for all of them)
        expected = jax.jit(lambda x: [sj.solve(solver, schedule, analytic.model_fn(product, schedule), None, x)
                                      for solver, schedule in cases])(x)
        for (solver, _), output, reference in zip(cases, outputs, expected):
            np.testing.assert_allclose(output, np.asarray(reference), rtol=1e-12, atol=1e-12, err_msg=repr(solver))


def test_product_model_is_its_components():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scire_jax.models import analytic

    accuracy = _load("accuracy")
    with jax.enable_x64(True):
        models = [accuracy.make_problem(name) for name in ("gauss2", "gmm5", "img_gmm")]
        product = analytic.Product(models)
        schedule = accuracy.make_schedule("linear_vp")
        assert product.shape == (2 + 5 + 192,) and product.offsets == (0, 2, 7)
        assert [part.shape for part in product.split(np.zeros((3, 199)))] == [(3, 2), (3, 5), (3, 3, 8, 8)]
        assert hash(product) == hash(analytic.Product(list(models))) and product == analytic.Product(models)
        x = jax.random.normal(jax.random.key(0), (3,) + product.shape, jnp.float64)
        t = jnp.array([0.9, 0.5, 0.01])
        fn = analytic.coefficient_model_fn(product)
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)

        @jax.jit
        def evaluate(x):
            parts = product.split(x)
            return (product.join(parts), product.join([m.noise(p, t, schedule) for m, p in zip(models, parts)]),
                    analytic.model_fn(product, schedule)(None, x, t), fn.noise(None, x, t, alpha, sigma),
                    # scalar coefficients, as the executor passes them
                    fn.noise(None, x, t[1], alpha[1], sigma[1]), analytic.model_fn(product, schedule)(None, x, t[1]))

        joined, expected, plain, given, given_scalar, plain_scalar = (np.asarray(v) for v in evaluate(x))
        np.testing.assert_array_equal(joined, np.asarray(x))
        np.testing.assert_array_equal(plain, expected)  # each block is its component's formula
        np.testing.assert_allclose(given, expected, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(given_scalar, plain_scalar, rtol=1e-13, atol=1e-13)
        with pytest.raises(ValueError, match="no schedule"):
            fn(None, x, t)
        with pytest.raises(ValueError, match="shape"):
            product.noise(x[:, :5], t, schedule)


def test_atlas_without_diffrax_names_the_extra(monkeypatch, capsys, tmp_path):
    accuracy = _load("accuracy")
    monkeypatch.setitem(sys.modules, "diffrax", None)  # `import diffrax` raises ImportError
    assert accuracy.main(["--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install -e ".[bench]"' in err and "diffrax" in err
    assert not list(tmp_path.iterdir())


def test_speed_solvers_from_registry():
    speed = _load("speed")
    from scire_jax.core.solvers import registry

    solvers = speed.default_solvers((5, 7))
    labels = [label for label, _ in solvers]
    assert len(labels) == len(set(labels))
    assert labels[:2] == [f"scire ({registry.make_solver('scire', n).label()}) NFE {n}" for n in (5, 7)]
    measured = [solver for _, solver in solvers]
    for name, entry in registry.REGISTRY.items():  # every registered solver's default is measured
        assert entry.make(5) in measured, name


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
