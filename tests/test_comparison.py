"""Solver specs, chunked sampling from an offset, labelled grids and the solver comparison."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scire_jax as sj
from scire_jax.apps import comparison
from scire_jax.apps import images


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
    ("heun", "solver 'heun' is not allowed"),
    ("scire:steps=4", "field 'steps' is not allowed"),
    ("scire:order", "write FIELD=VALUE"),
    ("dpmsolver++:algorithm=dpmsolver", "contradicts the name"),
    ("ddim:order=2", "field 'order' is not allowed for ddim"),
])
def test_solver_from_spec_errors_name_the_field(spec, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        comparison.solver_from_spec(spec, 10)


def test_first_index_offsets_the_noise_and_chunks_reassemble():
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
    left = images.text_mask("LONGER").shape[1] + 4
    top = images.GLYPH_HEIGHT + 4
    assert image.shape == (2 * (top + 2 * (6 + 2)), 2 * (left + 3 * (8 + 2)), 1)
    assert (image[2 * top:2 * (top + 6), 2 * left:2 * (left + 8)] == 100).all()
    assert image[:2 * top].max() == 255  # column labels drawn
    with pytest.raises(ValueError, match="expected 2 rows x 3 columns"):
        images.labelled_grid([[tile, tile]], ["A", "B"], ["1", "2", "3"])


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
