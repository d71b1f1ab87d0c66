"""Pieces shared by the solver plans: validation, time range, agile orders, scaled-state steps."""

from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Sequence

import numpy as np

from scire_jax.core.plans import Combination, Plan, Step, build_plan_from_steps

ORDERS = (1, 2, 3)


def check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {tuple(allowed)}")


def check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an integer >= {minimum}")


def check_optional_time(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed: it must be None or a finite time > 0")


def check_thresholding(value) -> None:
    if value is None or value == "dynamic" or callable(value):
        return
    raise ValueError(f"thresholding={value!r} is not allowed; allowed: None, 'dynamic', "
                     f"sj.DynamicThresholding(ratio, max_value) or a callable (x0, t) -> x0")


def check_common(config, skip_types: Sequence[str]) -> None:
    """Checks shared by every solver configuration (order, steps, grid, range, correctors)."""
    check_choice("order", config.order, ORDERS)
    check_int("steps", config.steps, 1)
    if config.steps < config.order:
        raise ValueError(f"steps={config.steps!r} is not allowed with order={config.order}: steps must be >= order")
    check_choice("skip_type", config.skip_type, skip_types)
    check_optional_time("t_start", config.t_start)
    check_optional_time("t_end", config.t_end)
    if config.t_start is not None and config.t_end is not None and config.t_end >= config.t_start:
        raise ValueError(f"t_end={config.t_end!r} is not allowed: it must be smaller than t_start={config.t_start!r}")
    check_thresholding(config.thresholding)
    if config.correct_xt is not None and not callable(config.correct_xt):
        raise ValueError(f"correct_xt={config.correct_xt!r} is not allowed: it must be None or a callable")


def resolve_thresholding(value):
    from scire_jax.core.wrapping import DynamicThresholding

    if value == "dynamic":
        return DynamicThresholding()
    return value


def time_range(schedule, t_start: Optional[float], t_end: Optional[float]):
    """Default endpoints (``t_max``, ``t_min`` of the schedule) and range checks."""
    t_start = schedule.t_max if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    schedule.check_time_range(t_start, t_end)
    return t_start, t_end


def agile_orders(steps: int, order: int) -> List[int]:
    """Orders of the singlestep "agile" / DPM-Solver "fast" schedule (they sum to ``steps``)."""
    if order == 3:
        outer = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (outer - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (outer - 1) + [1]
        return [3] * (outer - 1) + [2]
    if order == 2:
        if steps % 2 == 0:
            return [2] * (steps // 2)
        return [2] * (steps // 2) + [1]
    return [1] * steps


class ScaledSpace:
    """Steps written on a scaled state ``y = x / scale(t)`` lifted to the executor's ``x``.

    SciRE v1 uses ``scale = alpha`` (``y = x / alpha``), v2 ``scale = sigma``.  A scaled update
    ``y_target = y + sum_j w_j G_j`` at time ``tau`` becomes
    ``x_target = (scale(tau) / scale(s)) x + scale(tau) sum_j w_j G_j``.
    """

    def __init__(self, schedule, scale: str):
        self.schedule = schedule
        self.scale = scale

    def scale_at(self, t: float) -> float:
        value = self.schedule.alpha(np.float64(t)) if self.scale == "alpha" else self.schedule.sigma(np.float64(t))
        return float(value)

    def combination(self, t_from: float, t_to: float, stages: Dict[int, float] = None,
                    history: Dict[int, float] = None) -> Combination:
        scale_to = self.scale_at(t_to)
        return Combination(
            state=scale_to / self.scale_at(t_from),
            stages={k: scale_to * v for k, v in (stages or {}).items()},
            history={k: scale_to * v for k, v in (history or {}).items()},
        )


def coefficients(schedule, t: float):
    t = np.float64(t)
    return float(schedule.alpha(t)), float(schedule.sigma(t))


def build_method_plan(config, schedule) -> Plan:
    """Plan of a solver with ``_multistep_steps`` / ``_singlestep_steps`` (chosen by ``config.method``),
    plus the optional ``denoise_to_zero`` step."""
    t_start, t_end = time_range(schedule, config.t_start, config.t_end)
    if config.method == "multistep":
        steps = config._multistep_steps(schedule, t_start, t_end)
    else:
        steps = config._singlestep_steps(schedule, t_start, t_end)
    if config.denoise_to_zero:
        steps.append(denoise_step(schedule, t_end))
    return build_plan_from_steps(steps, t_start, t_end, config)


def initial_step(schedule, t_start: float, kind: str) -> Step:
    """Multistep start-up: evaluate the model at ``t_start`` and push it into the history."""
    alpha, sigma = coefficients(schedule, t_start)
    return Step([float(t_start)], [alpha], [sigma], [Combination(state=1.0)], Combination(state=1.0),
                time=float(t_start), push="stage0", kind=kind, order=0, initial=True)


def denoise_step(schedule, t_end: float) -> Step:
    """The final ``denoise_to_zero`` step: one data prediction at ``t_end`` replaces the state."""
    alpha, sigma = coefficients(schedule, t_end)
    return Step(stage_times=[t_end], stage_alphas=[alpha], stage_sigmas=[sigma],
                stage_inputs=[Combination(state=1.0)], output=Combination(stages={0: 1.0}),
                time=t_end, kind="data", order=0)
