"""The solver contract: :class:`Solver`, its shared fields, validation and the step drivers.

A solver is a frozen, hashable dataclass (usable as a static ``jit`` argument) that writes the
host-side steps of a plan (:mod:`scire_jax.core.plans`).  Everything shared lives here:

* the fields every solver has (``method``, ``order``, ``steps``, ``skip_type``, ``times``,
  ``t_start``, ``t_end``, ``lower_order_final``, ``denoise_to_zero``, ``thresholding``,
  ``correct_xt``) and their validation, run when the solver is constructed;
* the time range and the main time grid (``times=`` or ``skip_type``);
* :meth:`Solver.build_plan`, the one entry point :func:`scire_jax.plan` calls;
* two drivers for :meth:`Solver.write_steps`: :meth:`Solver.multistep_steps` (start-up with an
  initial evaluation, order ramp-up, lower final orders) and :meth:`Solver.singlestep_steps`
  (the "agile" order mix or fixed orders over an outer grid).

A concrete solver states ``model_kind`` (the quantity it integrates: ``"noise"`` or ``"data"``)
and the pieces the driver asks for: :meth:`Solver.multistep_combination` for multistep methods,
:meth:`Solver.singlestep_interval` for singlestep methods -- or overrides ``write_steps`` itself.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

from scire_jax.core.plans import Combination, Plan, Step, build_plan_from_arrays, build_plan_from_steps
from scire_jax.core.timesteps import SKIP_TYPES, time_grid

__all__ = ["Solver", "ORDERS", "check_choice", "check_int", "agile_orders", "ScaledSpace", "coefficients",
           "initial_step", "denoise_step"]

ORDERS = (1, 2, 3)
AGILE_METHODS = ("singlestep", "singlestep_agile")


def check_choice(name: str, value, allowed: Sequence) -> None:
    if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {tuple(allowed)}")
    if value not in allowed or type(value) is float:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {tuple(allowed)}")


def check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an integer >= {minimum}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r} is not allowed: it must be True or False")


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


def explicit_times(value) -> Tuple[float, ...]:
    """``times=`` as a tuple of floats: finite, > 0, strictly decreasing, at least two entries."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"times={value!r} is not allowed: it must be a 1-D array of floats") from None
    if array.ndim != 1 or array.shape[0] < 2:
        raise ValueError(f"times with shape {array.shape} is not allowed: it must be 1-D with at least 2 entries "
                         "(t_start ... t_end)")
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"times={array.tolist()!r} is not allowed: every time must be finite and > 0")
    if np.any(np.diff(array) >= 0):
        raise ValueError(f"times={array.tolist()!r} is not allowed: times must be strictly decreasing "
                         "(noisy t_start first, t_end last)")
    return tuple(float(t) for t in array)


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


def coefficients(schedule, t: float) -> Tuple[float, float]:
    """``(alpha_t, sigma_t)`` on the host in float64."""
    t = np.float64(t)
    return float(schedule.alpha(t)), float(schedule.sigma(t))


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

    def combination(self, t_from: float, t_to: float, stages: Optional[Dict[int, float]] = None,
                    history: Optional[Dict[int, float]] = None) -> Combination:
        scale_to = self.scale_at(t_to)
        return Combination(
            state=scale_to / self.scale_at(t_from),
            stages={k: scale_to * v for k, v in (stages or {}).items()},
            history={k: scale_to * v for k, v in (history or {}).items()},
        )


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Solver(abc.ABC):
    """Abstract base of every solver configuration (frozen, hashable, keyword-only fields).

    Args:
      method: ``"multistep"`` or one of the subclass's singlestep methods (``methods``).
      order: 1, 2 or 3.
      steps: number of steps N (the NFE budget), ``>= order``.  With ``times`` it is set to
        ``len(times) - 1``.
      skip_type: the time grid rule (:func:`scire_jax.timesteps.time_grid`), one of ``skip_types``.
      times: an explicit, strictly decreasing grid ``t_start = times[0] > ... > times[-1] = t_end``
        replacing ``skip_type`` (e.g. diffusers' timesteps; see the README).  For
        ``singlestep_fixed`` it is the outer grid (NFE = ``(len(times) - 1) * order``).
      t_start, t_end: integration range (default: the schedule's ``t_max`` and ``t_min``).
      lower_order_final: lower the order of the final multistep steps.
      denoise_to_zero: finish with one data prediction at ``t_end`` (+1 NFE).
      thresholding: ``None``, ``"dynamic"``, :class:`scire_jax.DynamicThresholding` or a callable
        ``(x0, t) -> x0`` applied to every data prediction.
      correct_xt: optional ``(x_t, t, step) -> x_t`` applied after every step.
    """

    #: singlestep method names besides ``"multistep"`` (empty: multistep only)
    methods: ClassVar[Tuple[str, ...]] = ("multistep",)
    #: time grids this solver accepts
    skip_types: ClassVar[Tuple[str, ...]] = SKIP_TYPES
    #: ``lower_order_final`` only acts for fewer than this many steps (None: always)
    lower_order_final_below: ClassVar[Optional[int]] = None

    method: str = "multistep"
    order: int = 2
    steps: int = 20
    skip_type: str = "logSNR"
    times: Optional[Tuple[float, ...]] = None
    t_start: Optional[float] = None
    t_end: Optional[float] = None
    lower_order_final: bool = True
    denoise_to_zero: bool = False
    thresholding: Any = None
    correct_xt: Optional[Callable] = None

    def __post_init__(self):
        check_choice("method", self.method, self.methods)
        check_choice("order", self.order, ORDERS)
        check_choice("skip_type", self.skip_type, self.skip_types)
        if self.times is not None:
            times = explicit_times(self.times)
            object.__setattr__(self, "times", times)
            for name, value in (("t_start", times[0]), ("t_end", times[-1])):
                given = getattr(self, name)
                if given is not None and float(given) != value:
                    raise ValueError(f"{name}={given!r} contradicts times (which give {name}={value!r}): "
                                     f"pass one of them")
            intervals = len(times) - 1
            object.__setattr__(self, "steps", intervals * self.order if self.method == "singlestep_fixed" else intervals)
        check_int("steps", self.steps, 1)
        if self.steps < self.order:
            raise ValueError(f"steps={self.steps!r} is not allowed with order={self.order}: steps must be >= order")
        check_optional_time("t_start", self.t_start)
        check_optional_time("t_end", self.t_end)
        if self.t_start is not None and self.t_end is not None and self.t_end >= self.t_start:
            raise ValueError(f"t_end={self.t_end!r} is not allowed: it must be smaller than t_start={self.t_start!r}")
        check_bool("lower_order_final", self.lower_order_final)
        check_bool("denoise_to_zero", self.denoise_to_zero)
        check_thresholding(self.thresholding)
        if self.correct_xt is not None and not callable(self.correct_xt):
            raise ValueError(f"correct_xt={self.correct_xt!r} is not allowed: it must be None or a callable")

    # -- what a solver states --------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def model_kind(self) -> str:
        """The model quantity the solver integrates: ``"noise"`` or ``"data"``."""

    def label(self) -> str:
        """A short human label (``SciRE-v1 3M``, ``DPM++ 2M``, ...)."""
        return f"{type(self).__name__}-{self.order}"

    def write_steps(self, schedule, t_start: float, t_end: float) -> List[Step]:
        """The host-side steps from ``t_start`` to ``t_end`` (``denoise_to_zero`` is added by the caller)."""
        if self.method == "multistep":
            return self.multistep_steps(schedule, t_start, t_end)
        return self.singlestep_steps(schedule, t_start, t_end)

    # -- the plan ----------------------------------------------------------------------------------
    def build_plan(self, schedule) -> Plan:
        """The validated host-side plan of this solver on ``schedule`` (see :mod:`scire_jax.core.plans`)."""
        t_start, t_end = self.time_range(schedule)
        if self.method == "multistep":
            fast = self._vectorised_multistep_plan(schedule, t_start, t_end)
            if fast is not None:
                return fast
        steps = list(self.write_steps(schedule, t_start, t_end))
        if self.denoise_to_zero:
            steps.append(denoise_step(schedule, t_end))
        return build_plan_from_steps(steps, t_start, t_end, self)

    def time_range(self, schedule) -> Tuple[float, float]:
        """``(t_start, t_end)``: explicit times, the fields, or the schedule's ``t_max`` / ``t_min``."""
        if self.times is not None:
            t_start, t_end = self.times[0], self.times[-1]
        else:
            t_start = schedule.t_max if self.t_start is None else float(self.t_start)
            t_end = schedule.t_min if self.t_end is None else float(self.t_end)
        schedule.check_time_range(t_start, t_end)
        return t_start, t_end

    def grid_options(self) -> Dict[str, Any]:
        """Extra keyword arguments of :func:`scire_jax.timesteps.time_grid` (e.g. SciRE's ``nsr_shift``)."""
        return {}

    def grid(self, schedule, t_start: float, t_end: float, intervals: int) -> np.ndarray:
        """The main grid of ``intervals`` intervals: ``times`` when given, else the ``skip_type`` rule."""
        if self.times is not None:
            if len(self.times) != intervals + 1:  # pragma: no cover - the drivers ask for the right size
                raise ValueError(f"times has {len(self.times)} entries, the solver needs {intervals + 1}")
            return np.asarray(self.times, dtype=np.float64)
        return time_grid(schedule, self.skip_type, t_start, t_end, intervals, **self.grid_options())

    # -- multistep driver ------------------------------------------------------------------------
    def multistep_order(self, i: int) -> int:
        """Order of multistep step ``i = 1..steps``: ramp up from 1, lower at the end if asked."""
        n, p = self.steps, self.order
        if i < p:
            return i
        lower = self.lower_order_final and (self.lower_order_final_below is None or n < self.lower_order_final_below)
        return min(p, n + 1 - i) if lower else p

    def multistep_steps(self, schedule, t_start: float, t_end: float) -> List[Step]:
        """Initial evaluation at ``t_start``, then one :meth:`multistep_step` per grid interval."""
        grid = self.grid(schedule, t_start, t_end, self.steps)
        steps = [initial_step(schedule, grid[0], self.model_kind)]
        for i in range(1, self.steps + 1):
            steps.append(self.multistep_step(schedule, grid, i, self.multistep_order(i)))
        return steps

    def multistep_step(self, schedule, grid: np.ndarray, i: int, order: int) -> Step:
        """Step ``i`` to ``grid[i]``: the update, then (except at the end) a model evaluation pushed as history."""
        last = i == self.steps
        return Step([], [], [], [], self.multistep_combination(schedule, grid, i, order), time=float(grid[i]),
                    post_evaluation=None if last else coefficients(schedule, grid[i]),
                    push=None if last else "post", kind=self.model_kind, order=order,
                    phi=self.step_phi(i, order))

    def multistep_orders(self) -> np.ndarray:
        """:meth:`multistep_order` of every step ``i = 1..steps`` as an int array."""
        n, p = self.steps, self.order
        i = np.arange(1, n + 1)
        lower = self.lower_order_final and (self.lower_order_final_below is None or n < self.lower_order_final_below)
        return np.where(i < p, i, np.minimum(p, n + 1 - i) if lower else p)

    def multistep_arrays(self, schedule, grid: np.ndarray, orders: np.ndarray
                         ) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Vectorised multistep coefficients, or None (then the steps are written one by one).

        Returns ``(state, history, phi)``: for every step ``i = 1..steps`` the coefficient of ``x``
        (shape ``(steps,)``), of the history outputs by age 1, 2, 3 (shape ``(steps, 3)``) and the phi
        shown by :meth:`scire_jax.core.plans.Plan.summary` (NaN where none).  Equal to
        :meth:`multistep_combination` step by step; lets a 100,000-step plan build in well under a second.
        """
        return None

    def _vectorised_multistep_plan(self, schedule, t_start: float, t_end: float) -> Optional[Plan]:
        grid = self.grid(schedule, t_start, t_end, self.steps)
        orders = self.multistep_orders()
        arrays = self.multistep_arrays(schedule, grid, orders)
        if arrays is None:
            return None
        state, history, phi = arrays
        n = self.steps
        size = int(max(int(orders.max()), 1))
        alpha = np.asarray(schedule.alpha(grid), dtype=np.float64)
        sigma = np.asarray(schedule.sigma(grid), dtype=np.float64)
        rows = {
            "out_state": np.asarray(state, dtype=np.float64),
            "out_history": np.zeros((n, size)),
            "time": np.asarray(grid[1:], dtype=np.float64),
            "post_alpha": np.append(alpha[1:n], 1.0),
            "post_sigma": np.append(sigma[1:n], 1.0),
            "step_index": np.arange(1, n + 1, dtype=np.int32),
            "order": orders.astype(np.float64),
            "phi": np.asarray(phi, dtype=np.float64),
        }
        for age in range(1, size + 1):  # history slot H - age holds the output of that age
            rows["out_history"][:, size - age] = history[:, age - 1]
        extra = [denoise_step(schedule, t_end)] if self.denoise_to_zero else []
        return build_plan_from_arrays(initial_step(schedule, grid[0], self.model_kind), rows, self.model_kind,
                                      size, extra, t_start, t_end, self)

    def multistep_combination(self, schedule, grid: np.ndarray, i: int, order: int) -> Combination:
        """The x-space update of multistep step ``i`` from the history at ``grid[i - order .. i - 1]``."""
        raise NotImplementedError(f"{type(self).__name__} has no multistep method")

    def step_phi(self, i: int, order: int) -> float:
        """The phi of a step, for display (NaN where the method has none)."""
        return float("nan")

    # -- singlestep driver -----------------------------------------------------------------------
    def singlestep_orders(self) -> List[int]:
        """Orders of the outer singlestep steps: the agile mix (NFE = steps) or ``steps // order`` x order."""
        if self.method in AGILE_METHODS:
            return agile_orders(self.steps, self.order)
        return [self.order] * (self.steps // self.order)

    def singlestep_outer_grid(self, schedule, t_start: float, t_end: float, orders: List[int]) -> np.ndarray:
        """The outer grid: ``grid(steps)`` at the cumulative orders (agile) or ``grid(steps // order)``."""
        if self.method in AGILE_METHODS:
            return self.grid(schedule, t_start, t_end, self.steps)[np.cumsum([0] + orders)]
        return self.grid(schedule, t_start, t_end, len(orders))

    def singlestep_steps(self, schedule, t_start: float, t_end: float) -> List[Step]:
        """One :meth:`singlestep_interval` per outer interval."""
        orders = self.singlestep_orders()
        outer = self.singlestep_outer_grid(schedule, t_start, t_end, orders)
        return [self.singlestep_interval(schedule, float(outer[j]), float(outer[j + 1]), order, j, len(orders))
                for j, order in enumerate(orders)]

    def singlestep_interval(self, schedule, s: float, t: float, order: int, j: int, count: int) -> Step:
        """Outer singlestep step ``j`` (of ``count``) from ``s`` to ``t`` with ``order`` stages."""
        raise NotImplementedError(f"{type(self).__name__} has no singlestep method")
