"""Multistep plans are built vectorised; they equal the step-by-step plans of the same solver."""

import itertools

import numpy as np
import pytest

import scire_jax as sj
from scire_jax.core.plans import build_plan_from_steps
from scire_jax.core.solvers.base import denoise_step

SCHEDULES = {"linear": sj.schedules.linear(), "discrete": sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000)),
             "cosine": sj.schedules.cosine()}
SOLVERS = (
    [sj.SciRE(order=o, steps=n, algorithm=a, phi=phi, denoise_to_zero=d)
     for o, n, a, phi, d in itertools.product((1, 2, 3), (3, 12), ("v1", "v2"), ("official", 1.0), (False, True))]
    + [sj.DPMSolver(order=o, steps=n, algorithm=a, solver_type=t, lower_order_final=lo)
       for o, n, a, t, lo in itertools.product((2, 3), (3, 12), ("dpmsolver", "dpmsolver++"), ("dpmsolver", "taylor"),
                                               (True, False))]
    + [sj.UniPC(order=o, steps=n, variant=v, prediction=p, denoise_to_zero=d)
       for o, n, v, p, d in itertools.product((1, 2, 3), (3, 12), ("bh1", "bh2"), ("data", "noise"), (False, True))]
    + [sj.DEIS(order=o, steps=n, lower_order_final=lo) for o, n, lo in itertools.product((1, 2, 3), (3, 20),
                                                                                          (True, False))]
)


def _step_by_step(solver, schedule):
    t_start, t_end = solver.time_range(schedule)
    steps = list(solver.write_steps(schedule, t_start, t_end))
    if solver.denoise_to_zero:
        steps.append(denoise_step(schedule, t_end))
    return build_plan_from_steps(steps, t_start, t_end, solver)


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_vectorised_plans_equal_step_by_step_plans(schedule_name):
    schedule = SCHEDULES[schedule_name]
    for solver in SOLVERS:
        fast, slow = sj.plan(solver, schedule), _step_by_step(solver, schedule)
        assert fast.nfe == slow.nfe and fast.history_size >= slow.history_size, solver
        assert [(s.length, s.num_stages, s.post_evaluation, s.push) for s in fast.segments] == \
            [(s.length, s.num_stages, s.post_evaluation, s.push) for s in slow.segments], solver
        for a, b in zip(fast.segments, slow.segments):
            for name, expected in b.arrays.items():
                ours = np.asarray(a.arrays[name], dtype=np.float64)
                expected = np.asarray(expected, dtype=np.float64)
                if ours.shape != expected.shape:  # a wider history: zero slots on the oldest side
                    pad = ours.shape[-1] - expected.shape[-1]
                    expected = np.concatenate([np.zeros(expected.shape[:-1] + (pad,)), expected], axis=-1)
                np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-300, equal_nan=True,
                                           err_msg=f"{solver} {name}")


def test_a_100000_step_multistep_plan_builds_and_is_finite():
    the_plan = sj.plan(sj.SciRE(steps=100_000), SCHEDULES["linear"])
    assert the_plan.nfe == 100_000 and np.all(np.isfinite(the_plan.times))
