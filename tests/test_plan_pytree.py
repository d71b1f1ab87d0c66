"""The plan is a pytree: jit takes it as an argument, vmap maps over stacked plans."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scire_jax as sj

pytestmark = pytest.mark.usefixtures("x64")

SCHEDULE = sj.schedules.linear()
NOISE_FN = sj.analytic.model_fn(sj.analytic.Gaussian(np.full(3, 0.4), np.full(3, 0.6)), SCHEDULE)
X_START = np.random.default_rng(0).standard_normal((4, 3))


def test_jit_takes_the_plan_as_an_argument_and_compiles_once_per_structure():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(the_plan, x):
        return sj.execute(the_plan, NOISE_FN, None, x)

    # same structure (segment lengths, stages, masks), different coefficients: one trace
    for t_end in (1e-3, 2e-3, 5e-3):
        solver = sj.SciRE(steps=8, t_end=t_end)
        ours = run(sj.plan(solver, SCHEDULE), X_START)
        chex.assert_trees_all_close(ours, sj.solve(solver, SCHEDULE, NOISE_FN, None, X_START), rtol=1e-12, atol=1e-12)


def test_plan_round_trips_through_flatten_and_keeps_its_numbers():
    the_plan = sj.plan(sj.UniPC(order=3, steps=7), SCHEDULE)
    leaves, treedef = jax.tree_util.tree_flatten(the_plan)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.nfe == the_plan.nfe and rebuilt.history_size == the_plan.history_size
    np.testing.assert_array_equal(rebuilt.times, the_plan.times)
    np.testing.assert_array_equal(rebuilt.evaluation_times, the_plan.evaluation_times)


def test_vmap_over_stacked_plans_equals_each_solve():
    solvers = [sj.SciRE(steps=n, phi=phi) for n in (5, 8) for phi in ("official", 1.0)]
    plans = [sj.plan(solver, SCHEDULE) for solver in solvers]
    stacked = sj.stack_plans(plans)
    out = jax.jit(jax.vmap(lambda p: sj.execute(p, NOISE_FN, None, X_START)))(stacked)
    for k, solver in enumerate(solvers):
        chex.assert_trees_all_close(out[k], sj.solve(solver, SCHEDULE, NOISE_FN, None, X_START), rtol=1e-12,
                                    atol=1e-12)


def test_stack_plans_refuses_different_structures():
    with pytest.raises(ValueError, match="different structures"):
        sj.stack_plans([sj.plan(sj.SciRE(steps=5), SCHEDULE), sj.plan(sj.SciRE(method="singlestep_fixed", order=2,
                                                                                steps=6), SCHEDULE)])


def test_trajectory_times_follow_the_plan():
    x, trajectory = sj.solve(sj.DDIM(steps=4), SCHEDULE, NOISE_FN, None, jnp.asarray(X_START), return_trajectory=True)
    assert trajectory.shape[0] == len(sj.plan(sj.DDIM(steps=4), SCHEDULE).trajectory_times) == 5
    chex.assert_trees_all_close(trajectory[-1], x)
