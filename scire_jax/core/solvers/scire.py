"""SciRE-Solver (Li et al.): recursive-difference solvers in the noise-to-signal ratio.

Two variants integrate the probability-flow ODE ``y(t) = y(s) + int_{u(s)}^{u(t)} F du``:

=========  =====================  =====================  ===============================
variant    state ``y``            variable ``u``         model quantity ``F``
=========  =====================  =====================  ===============================
``v1``     ``x / alpha``          ``nu = sigma/alpha``   noise prediction ``eps``
``v2``     ``x / sigma``          ``1 / nu``             data prediction ``x0`` (+thresholding)
=========  =====================  =====================  ===============================

The derivative of ``F`` is estimated by a *recursive difference*: finite differences divided by
``phi``, where ``phi`` comes from the partial sums of the series of ``(1 - e^{-1})``
(:func:`series_phi`).  With ``h = u_t - u_s``:

* order 1 (= DDIM):                ``y_t = y_s + h F_s``
* singlestep order 2:              ``y_t = y_s + h F_s + h / (2 r1 phi) (F_1 - F_s)``
* singlestep order 3:              ``y_t = y_s + h F_s + h / (2 r2 phi) (F_2 - F_s)``
* multistep order 2:               ``y_t = y + h F_0 + h / (2 phi) (F_0 - F_1) / rho^(1/4)``
* multistep order 3:               ``y_t = y + h F_0 + h/(2 a0 phi) D1 + h/(6 a0 phi a1 phi) D2``

(docs/design.md, section 5, has every coefficient.)  The official per-step ``phi`` schedule is
reproduced by ``phi="official"``; a float gives a constant ``phi`` (2/3 as the README's EDM
setting, ``1 - 1/e``, or ``1.0`` = plain finite differences, the variant of nominal order).

Example:
    >>> import scire_jax as sj
    >>> solver = sj.SciRE(algorithm="v1", method="multistep", order=3, steps=10)
    >>> sj.plan(solver, sj.schedules.linear()).nfe
    10
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import warnings
from typing import Any, ClassVar, List, Optional, Tuple, Union

import numpy as np

from scire_jax.core.plans import Combination, Step
from scire_jax.core.schedules import DiscreteSchedule
from scire_jax.core.solvers import base
from scire_jax.core.timesteps import NSR_SHIFT, time_grid

__all__ = ["SciRE", "DDIM", "series_phi", "multistep_phi_schedule", "singlestep_phi_schedule"]

ALGORITHMS = ("v1", "v2")
METHODS = ("multistep", "singlestep_agile", "singlestep_fixed")


def series_phi(x: float, n: int) -> List[float]:
    """The official ``series_phi``: ``[S_3(x), ..., S_{n+2}(x)]``, ``S_m(x) = sum_{j=1}^m (-x)^(j-1) / j!``.

    ``S_m(1) -> 1 - 1/e``; ``series_phi(1, 4) = [2/3, 5/8, 19/30, 91/144]``.

    Args:
      x: the series argument (only ``x = 1`` is used by the solver).
      n: number of terms returned (``n >= 0``).

    Returns:
      A list of ``n`` floats.
    """
    partial_sums = []
    total = 0.0
    term = 1.0
    for j in range(1, n + 3):
        if j > 1:
            term *= -x / j
        total += term
        partial_sums.append(total)
    return partial_sums[2:n + 2]


@functools.lru_cache(maxsize=64)
def multistep_phi_schedule(steps: int, order: int) -> Tuple[float, ...]:
    """phi of multistep steps ``i = 1..steps`` (the official schedule, docs/design.md section 5)."""
    phis = series_phi(1.0, steps + 1)
    half = steps // 2
    values = []
    for i in range(1, steps + 1):
        if i < order:
            index = 2 * i - 1
        elif i < half:
            index = 2 * (i - order) + 1
        elif i == half:
            index = steps
        else:
            index = 2 * (steps - i)
        values.append(phis[index])
    return tuple(values)


@functools.lru_cache(maxsize=64)
def singlestep_phi_schedule(outer_steps: int, k: int) -> Tuple[float, ...]:
    """phi of singlestep outer steps ``j = 0..outer_steps-1`` with ``K = k`` (docs/design.md section 5)."""
    phis = series_phi(1.0, k)
    values = []
    for j in range(outer_steps):
        if j < k // 2:
            index = 2 * j
        elif j == k // 2:
            index = k - 1
        else:
            index = 2 * (k - j) - 1
            if index < 0:  # the agile extra step wraps like Python's phis[-1]
                index += k
        values.append(phis[index])
    return tuple(values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SciRE(base.Solver):
    """SciRE-Solver configuration (frozen and hashable: usable as a static jit argument).

    The default, ``SciRE()``, is the project's one default SciRE configuration: v1, multistep,
    order 3, NSR grid, the official phi schedule (the configuration of the accuracy atlas, the
    command line and ``scire-jax compare``).

    Args:
      algorithm: ``"v1"`` (noise prediction, state ``x/alpha``) or ``"v2"`` (data prediction,
        state ``x/sigma``).
      method: ``"multistep"``, ``"singlestep_agile"`` (orders mixed so that NFE = steps) or
        ``"singlestep_fixed"`` (``steps // order`` steps of ``order``; NFE = ``steps // order * order``).
      order: 1, 2 or 3.
      steps: number of steps N (the NFE budget), ``>= order``.
      skip_type: time grid: ``"NSR"`` (SciRE's, default), ``"time_uniform"``, ``"time_quadratic"``,
        ``"logSNR"`` or ``"karras"``.
      phi: ``"official"`` (the published per-step schedule) or a positive float constant.
      nsr_shift: ``k`` of the NSR time grid (3.1 as official; any k in [2, 7] per the authors).
      times, t_start, t_end, lower_order_final, denoise_to_zero, thresholding, correct_xt: see
        :class:`scire_jax.core.solvers.base.Solver` (``lower_order_final`` is always applied, as the
        official SciRE code does).
    """

    methods: ClassVar[Tuple[str, ...]] = METHODS

    algorithm: str = "v1"
    method: str = "multistep"
    order: int = 3
    skip_type: str = "NSR"
    phi: Union[str, float] = "official"
    nsr_shift: float = NSR_SHIFT

    def __post_init__(self):
        base.check_choice("algorithm", self.algorithm, ALGORITHMS)
        super().__post_init__()
        if not isinstance(self.phi, str):
            if isinstance(self.phi, bool) or not isinstance(self.phi, numbers.Real) or not (
                    math.isfinite(self.phi) and self.phi > 0):
                raise ValueError(f"phi={self.phi!r} is not allowed: use 'official' or a finite float > 0")
        elif self.phi != "official":
            raise ValueError(f"phi={self.phi!r} is not allowed: use 'official' or a finite float > 0")
        if isinstance(self.nsr_shift, bool) or not (isinstance(self.nsr_shift, numbers.Real) and self.nsr_shift > 0):
            raise ValueError(f"nsr_shift={self.nsr_shift!r} is not allowed: it must be > 0")
        if self.method == "singlestep_fixed" and self.steps % self.order:
            warnings.warn(f"SciRE singlestep_fixed with steps={self.steps}, order={self.order} makes "
                          f"{self.steps // self.order * self.order} network calls (steps % order is dropped, "
                          f"as the official code does); see plan(...).nfe", stacklevel=3)

    def label(self) -> str:
        if self.order == 1 and self.method == "multistep" and self.algorithm == "v1":
            return "DDIM"
        kind = {"multistep": "M", "singlestep_agile": "S", "singlestep_fixed": "SF"}[self.method]
        phi = "" if self.phi == "official" else f" phi={self.phi:g}"
        return f"SciRE-{self.algorithm} {self.order}{kind}{phi}"

    @property
    def model_kind(self) -> str:
        return "noise" if self.algorithm == "v1" else "data"

    # -- u, its inverse and the scaled space ---------------------------------------------------
    def _u(self, schedule, t):
        nsr = np.asarray(schedule.nsr(np.asarray(t, dtype=np.float64)))
        return nsr if self.algorithm == "v1" else 1.0 / nsr

    def _t_of_u(self, schedule, u):
        u = np.asarray(u, dtype=np.float64)
        return float(schedule.inverse_nsr(u if self.algorithm == "v1" else 1.0 / u))

    def _space(self, schedule) -> base.ScaledSpace:
        return base.ScaledSpace(schedule, "alpha" if self.algorithm == "v1" else "sigma")

    def _phi_values(self, official) -> List[float]:
        return list(official) if self.phi == "official" else [float(self.phi)] * len(official)

    def grid_options(self):
        return {"nsr_shift": self.nsr_shift}

    def _grid(self, schedule, t_start, t_end, n):
        return time_grid(schedule, self.skip_type, t_start, t_end, n, nsr_shift=self.nsr_shift)

    def _multistep_phi(self, i: int) -> float:
        if self.phi != "official":
            return float(self.phi)
        return multistep_phi_schedule(self.steps, self.order)[i - 1]

    def step_phi(self, i: int, order: int) -> float:
        return self._multistep_phi(i) if order > 1 else float("nan")

    def multistep_arrays(self, schedule, grid, orders):
        """The multistep updates of :meth:`multistep_weights`, for all steps at once (numpy)."""
        n = self.steps
        grid = np.asarray(grid, dtype=np.float64)
        nsr = np.asarray(schedule.nsr(grid), dtype=np.float64)
        u = nsr if self.algorithm == "v1" else 1.0 / nsr
        scale = np.asarray(schedule.alpha(grid) if self.algorithm == "v1" else schedule.sigma(grid), dtype=np.float64)
        i = np.arange(1, n + 1)
        h = u[i] - u[i - 1]
        if self.phi == "official":
            phi = np.asarray(multistep_phi_schedule(n, self.order), dtype=np.float64)
        else:
            phi = np.full(n, float(self.phi))
        nsr_t, nsr_p0 = nsr[i], nsr[i - 1]
        nsr_p1, nsr_p2 = nsr[np.maximum(i - 2, 0)], nsr[np.maximum(i - 3, 0)]
        weights = np.zeros((n, 3))
        weights[:, 0] = h
        with np.errstate(divide="ignore", invalid="ignore"):  # entries of lower-order steps are discarded
            two = orders == 2
            rho = np.log(nsr_p1 / nsr_p0) / np.log(nsr_p0 / nsr_t)
            correction = h / (2.0 * phi) / np.power(rho, 0.25)
            weights[two, 0] = (h + correction)[two]
            weights[two, 1] = -correction[two]
            three = orders == 3
            a0 = phi * (nsr_p0 - nsr_p1) / (nsr_t - nsr_p0)
            a1 = (phi / (1.0 + phi)) * (nsr_p1 - nsr_p2) / (nsr_p0 - nsr_p1)
            c1 = h / (2.0 * a0 * phi)
            c2 = h / (6.0 * a0 * phi * a1 * phi)
            weights[three, 0] = (h + c1 + c2)[three]
            weights[three, 1] = (-c1 - 2.0 * c2)[three]
            weights[three, 2] = c2[three]
        scale_to = scale[i]
        shown_phi = np.where(orders > 1, phi, np.nan)
        return scale_to / scale[i - 1], weights * scale_to[:, None], shown_phi

    def multistep_combination(self, schedule, grid, i: int, order: int) -> Combination:
        return self.multistep_update(schedule, grid[max(i - 3, 0):i + 1], order, self._multistep_phi(i))

    def multistep_update(self, schedule, times, order: int, phi: float) -> Combination:
        """The x-space multistep update to ``times[-1]`` from the history at ``times[:-1]`` (oldest first)."""
        times = np.asarray(times, dtype=np.float64)
        nsr = np.asarray(schedule.nsr(times))
        u = self._u(schedule, times)
        space = self._space(schedule)
        weights = self.multistep_weights(nsr, float(u[-1] - u[-2]), order, phi)
        return space.combination(float(times[-2]), float(times[-1]), history=weights)

    @staticmethod
    def multistep_weights(nsr, h: float, order: int, phi: float):
        """History weights (age 1 = newest) of a multistep update (docs/design.md section 5).

        Args:
          nsr: NSR at the previous points and the target, oldest first (the last 2..4 grid points).
          h: ``u_t - u_{p0}``.
          order: 1, 2 or 3.
          phi: the phi of the step.
        """
        nsr = list(nsr)
        if order == 1:
            return {1: h}
        if order == 2:
            nsr_p1, nsr_p0, nsr_t = nsr[-3:]
            rho = math.log(nsr_p1 / nsr_p0) / math.log(nsr_p0 / nsr_t)
            correction = h / (2.0 * phi) / math.pow(rho, 0.25)
            return {1: h + correction, 2: -correction}
        nsr_p2, nsr_p1, nsr_p0, nsr_t = nsr[-4:]
        a0 = phi * (nsr_p0 - nsr_p1) / (nsr_t - nsr_p0)
        a1 = (phi / (1.0 + phi)) * (nsr_p1 - nsr_p2) / (nsr_p0 - nsr_p1)
        c1 = h / (2.0 * a0 * phi)
        c2 = h / (6.0 * a0 * phi * a1 * phi)
        return {1: h + c1 + c2, 2: -c1 - 2.0 * c2, 3: c2}

    def _inner_ratios(self, schedule, s, t, order):
        """Official r1, r2: NSR ratios of the skip rule on [s, t] for discrete schedules, else defaults."""
        if not isinstance(schedule, DiscreteSchedule) or order == 1:
            return (0.5, None) if order == 2 else (1.0 / 3.0, 2.0 / 3.0)
        inner = np.asarray(schedule.nsr(self._grid(schedule, s, t, order)))
        r1 = (inner[1] - inner[0]) / (inner[order] - inner[0])
        r2 = (inner[2] - inner[0]) / (inner[3] - inner[0]) if order == 3 else None
        return float(r1), (None if r2 is None else float(r2))

    def singlestep_interval(self, schedule, s: float, t: float, order: int, j: int, count: int) -> Step:
        k = self.steps // self.order
        phi = singlestep_phi_schedule(count, k)[j] if self.phi == "official" else float(self.phi)
        r1, r2 = self._inner_ratios(schedule, s, t, order)
        return self.singlestep_step(schedule, s, t, order, phi, r1, r2)

    def singlestep_step(self, schedule, s: float, t: float, order: int, phi: float, r1: Optional[float] = None,
                        r2: Optional[float] = None) -> Step:
        """One singlestep update from ``s`` to ``t`` (docs/design.md section 5); ``r1``/``r2`` default to 1/2 or 1/3, 2/3."""
        space = self._space(schedule)
        if r1 is None:
            r1 = 0.5 if order == 2 else 1.0 / 3.0
        if r2 is None:
            r2 = 2.0 / 3.0
        u_s, u_t = float(self._u(schedule, s)), float(self._u(schedule, t))
        h = u_t - u_s
        times = [s]
        inputs = [Combination(state=1.0)]
        if order == 1:
            output = space.combination(s, t, stages={0: h})
        else:
            s1 = self._t_of_u(schedule, u_s + r1 * h)
            times.append(s1)
            inputs.append(space.combination(s, s1, stages={0: r1 * h}))
            if order == 2:
                c = h / (2.0 * r1 * phi)
                output = space.combination(s, t, stages={0: h - c, 1: c})
            else:
                s2 = self._t_of_u(schedule, u_s + r2 * h)
                times.append(s2)
                c_inner = r2 * h / (2.0 * r1 * phi)
                inputs.append(space.combination(s, s2, stages={0: r2 * h - c_inner, 1: c_inner}))
                c = h / (2.0 * r2 * phi)
                output = space.combination(s, t, stages={0: h - c, 2: c})
        coefficients = [base.coefficients(schedule, time) for time in times]
        return Step(times, [a for a, _ in coefficients], [b for _, b in coefficients], inputs, output, time=t,
                    kind=self.model_kind, order=order, phi=phi if order > 1 else float("nan"))

def DDIM(steps: int = 20, skip_type: str = "time_uniform", t_start: Optional[float] = None,
         t_end: Optional[float] = None, denoise_to_zero: bool = False, thresholding: Any = None,
         times=None) -> SciRE:
    """DDIM (eta = 0): first-order SciRE v1, ``x_t = (alpha_t / alpha_s) x_s + alpha_t (nu_t - nu_s) eps_s``.

    Example:
        >>> import scire_jax as sj
        >>> sj.plan(sj.DDIM(steps=10), sj.schedules.linear()).nfe
        10
    """
    return SciRE(algorithm="v1", method="multistep", order=1, steps=steps, skip_type=skip_type, times=times,
                 t_start=t_start, t_end=t_end, denoise_to_zero=denoise_to_zero, thresholding=thresholding)
