"""Solver specs, chunked sampling from an offset, labelled grids and the solver comparison."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scire_jax as sj
from scire_jax.apps import comparison, images


@pytest.mark.parametrize("spec,expected", [
    ("scire", sj.SciRE(algorithm="v1", method="multistep", order=3, steps=12, skip_type="NSR")),
    ("scire:order=2,phi=1,method=singlestep_fixed",
     sj.SciRE(algorithm="v1", method="singlestep_fixed", order=2, steps=12, skip_type="NSR", phi=1)),
    ("ddim", sj.DDIM(steps=12)),
    ("dpm", sj.DPMSolver(algorithm="dpmsolver++", method="multistep", order=3, steps=12, skip_type="logSNR")),
    ("dpm:algorithm=dpmsolver,method=singlestep_agile,order=2",
     sj.DPMSolver(algorithm="dpmsolver", method="singlestep", order=2, steps=12, skip_type="logSNR")),
    ("unipc:variant=bh2,order=2", sj.UniPC(variant="bh2", order=2, steps=12, skip_type="logSNR")),
    ("SciRE : skip_type=karras , lower_order_final=false",
     sj.SciRE(order=3, steps=12, skip_type="karras", lower_order_final=False)),
])
def test_solver_from_spec_builds_the_same_plan(spec, expected):
    schedule = sj.schedules.linear()
    built = comparison.solver_from_spec(spec, 12)
    assert built == expected
    assert sj.plan(built, schedule).nfe == sj.plan(expected, schedule).nfe


@pytest.mark.parametrize("spec,message", [
    ("euler", "solver 'euler' is not allowed"),
    ("scire:steps=4", "field 'steps' is not allowed"),
    ("scire:order", "write FIELD=VALUE"),
    ("dpmsolver++:algorithm=dpmsolver", "contradicts the name"),
    ("ddim:order=2", "field 'order' is not allowed for ddim"),
])
def test_solver_from_spec_errors_name_the_field(spec, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        comparison.solver_from_spec(spec, 10)


def test_first_index_offsets_the_noise_and_chunks_reassemble(x64):
    schedule = sj.schedules.linear()
    noise_fn = sj.analytic.model_fn(sj.analytic.Gaussian(jnp.full(3, 0.5), jnp.full(3, 0.3)), schedule)
    sample_fn = sj.make_sampler(sj.SciRE(steps=6), schedule, noise_fn)
    key = jax.random.key(5)
    whole = jax.jit(sample_fn, static_argnums=2)(None, key, (10, 3))
    np.testing.assert_array_equal(sj.initial_noise(key, (4, 3), first_index=6), sj.initial_noise(key, (10, 3))[6:])
    for batch in (1, 3, 4, 10, 16):
        chunked = comparison.sample_in_chunks(sample_fn, None, key, (10, 3), batch)
        np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12)


def test_sample_in_chunks_traces_once_for_a_ragged_batch():
    schedule = sj.schedules.linear()
    noise_fn = sj.analytic.model_fn(sj.analytic.Gaussian(jnp.zeros(2), jnp.ones(2)), schedule)
    inner = sj.make_sampler(sj.DDIM(steps=3), schedule, noise_fn)
    shapes = []

    def sample_fn(params, key, shape, first_index=0):
        shapes.append(shape)  # runs only while tracing
        return inner(params, key, shape, first_index)

    out = comparison.sample_in_chunks(sample_fn, None, jax.random.key(0), (11, 2), 4)
    assert out.shape == (11, 2)
    assert shapes == [(4, 2)]  # 3 chunks, the last one padded: one trace


def test_labelled_grid_layout():
    tile = np.full((6, 8, 1), 100, np.uint8)
    image = images.labelled_grid([[tile, tile, tile], [tile, tile, tile]], ["A", "LONGER"], ["1", "2", "3"],
                                 scale=2, gap=2)
    line = images.text_size("", 2)[1]
    left = images.text_size("LONGER", 2)[0] + 2 * 4
    top = line + 2 * 4
    row, column = max(12, line) + 4, max(16, images.text_size("3", 2)[0]) + 4
    assert image.shape == (top + 2 * row, left + 3 * column, 1) and image.dtype == np.uint8
    y, x = top + (row - 4 - 12) // 2, left + (column - 4 - 16) // 2
    assert (image[y:y + 12, x:x + 16] == 100).all()  # the first tile, upscaled 2x
    assert image[:top].max() > 200 and image[top:, :left].max() > 200  # column and row labels drawn
    assert images.text_size("LONGER")[0] > images.text_size("A")[0] > 0  # real text, proportional
    with pytest.raises(ValueError, match="expected 2 rows x 3 columns"):
        images.labelled_grid([[tile, tile]], ["A", "B"], ["1", "2", "3"])


def test_labelled_grid_columns_fit_their_labels_and_keep_rgb():
    tile = np.zeros((4, 4, 3), np.uint8)
    image = images.labelled_grid([[tile, tile]], ["row"], ["A LONG COLUMN LABEL", "B"])
    assert image.shape[-1] == 3
    label = images.text_size("A LONG COLUMN LABEL")[0]
    assert image.shape[1] >= images.text_size("row")[0] + 6 + label + 3 + 4 + 3
    np.testing.assert_array_equal(image[..., 0], image[..., 2])  # white on black: grey labels


def test_progress_bar_is_hidden_off_a_terminal_unless_forced(monkeypatch):
    import io

    from scire_jax.apps import progress

    monkeypatch.delenv(progress.ENVIRONMENT_VARIABLE, raising=False)
    stream = io.StringIO()
    with progress.progress(3, "hidden", "chunk", file=stream) as bar:
        bar.update(3)
    assert stream.getvalue() == ""
    with progress.progress(3, "forced", "chunk", disable=False, file=stream) as bar:
        bar.update(3)
    assert "forced" in stream.getvalue() and "3/3" in stream.getvalue()
    monkeypatch.setenv(progress.ENVIRONMENT_VARIABLE, "1")
    forced = io.StringIO()
    with progress.progress(2, "by environment", file=forced) as bar:
        bar.update(2)
    assert "2/2" in forced.getvalue()
    monkeypatch.setenv(progress.ENVIRONMENT_VARIABLE, "0")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    with progress.progress(2, "off", file=terminal) as bar:
        bar.update(2)
    assert terminal.getvalue() == ""
    monkeypatch.delenv(progress.ENVIRONMENT_VARIABLE)
    with progress.progress(2, "on a terminal", file=terminal) as bar:
        bar.update(2)
    assert "2/2" in terminal.getvalue()


def test_sample_in_chunks_progress_counts_samples(monkeypatch):
    import io

    from scire_jax.apps import progress

    monkeypatch.setenv(progress.ENVIRONMENT_VARIABLE, "1")
    schedule = sj.schedules.linear()
    noise_fn = sj.analytic.model_fn(sj.analytic.Gaussian(jnp.zeros(2), jnp.ones(2)), schedule)
    sample_fn = sj.make_sampler(sj.DDIM(steps=3), schedule, noise_fn)
    stream = io.StringIO()
    comparison.sample_in_chunks(sample_fn, None, jax.random.key(0), (7, 2), 3, progress="chunks", stream=stream)
    assert "chunks" in stream.getvalue() and "7/7" in stream.getvalue()
    quiet = io.StringIO()
    comparison.sample_in_chunks(sample_fn, None, jax.random.key(0), (7, 2), 3, stream=quiet)
    assert quiet.getvalue() == ""


def test_step_callback_advances_a_bar_once_per_solver_step():
    import io

    from scire_jax.apps import progress

    schedule = sj.schedules.linear()
    noise_fn = sj.analytic.model_fn(sj.analytic.Gaussian(jnp.zeros(2), jnp.ones(2)), schedule)
    solver = sj.SciRE(steps=6)
    steps = sj.plan(solver, schedule).num_steps
    stream = io.StringIO()
    with progress.progress(2 * steps, "reference", "step", disable=False, file=stream) as bar:
        sample_fn = sj.make_sampler(solver, schedule, noise_fn, callback=progress.step_callback(bar))
        comparison.sample_in_chunks(sample_fn, None, jax.random.key(1), (4, 2), 2)
        assert bar.n == 2 * steps  # two chunks
    assert f"{2 * steps}/{2 * steps}" in stream.getvalue()


def test_compare_solvers_shows_the_reference_solve_step_by_step(monkeypatch):
    import io

    from scire_jax.apps import progress

    monkeypatch.setenv(progress.ENVIRONMENT_VARIABLE, "1")
    schedule = sj.schedules.linear()
    noise_fn = sj.analytic.model_fn(sj.analytic.Gaussian(jnp.zeros(2), jnp.ones(2)), schedule)
    stream = io.StringIO()
    comparison.compare_solvers(noise_fn, None, schedule, ["ddim"], [4], num=3, shape=(2,), reference_steps=20,
                               with_metrics=False, progress=True, stream=stream)
    text = stream.getvalue()
    steps = sj.plan(comparison.solver_from_spec("dpm:order=3", 20), schedule).num_steps
    assert f"{steps}/{steps} [" in text and "step" in text  # the reference: solver steps
    assert "DDIM NFE 4" in text and "3/3" in text  # the runs: samples


def test_compare_solvers_on_an_analytic_model_orders_and_reference():
    schedule = sj.schedules.linear()
    mixture = sj.analytic.GaussianMixture(weights=np.array([0.4, 0.6]), means=np.array([[-1.0, 0.5], [0.8, -0.4]]),
                                          stds=np.array([[0.2, 0.3], [0.25, 0.2]]))
    noise_fn = sj.analytic.model_fn(mixture, schedule)
    result = comparison.compare_solvers(noise_fn, None, schedule, ["scire:phi=1,order=2", "ddim"], [8, 32],
                                        num=16, shape=(2,), reference_steps=400, with_metrics=False)
    assert result.reference.shape == (16, 2)
    for spec in result.specs:
        assert result.errors[(spec, 32)]["rmse"] < result.errors[(spec, 8)]["rmse"] / 3
        assert result.errors[(spec, 32)]["rmse"] > 10 * result.reference_self_error["rmse"]
    assert result.errors[("scire:phi=1,order=2", 32)]["rmse"] < result.errors[("ddim", 32)]["rmse"]
    table = comparison.format_tables(result)
    assert "SciRE-v1 2M phi=1" in table and "| DDIM (`ddim`) |" in table
