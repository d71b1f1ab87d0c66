"""DPM-Solver and DPM-Solver++ (Lu et al.) as plans for the shared executor.

Exponential integrators in the half log-SNR ``lambda = log(alpha / sigma)``, ``h = lambda_t - lambda_s``:

* DPM-Solver (noise prediction), first order: ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_s``;
* DPM-Solver++ (data prediction), first order: ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s``;

and their singlestep (2/3 stages) and multistep (2/3 history terms) higher orders with the
``"dpmsolver"`` or ``"taylor"`` correction terms, exactly as the official ``dpm_solver_pytorch.py``,
including its rule that ``lower_order_final`` only acts for fewer than 10 steps.  The adaptive
method is not provided.

Example:
    >>> import scire_jax as sj
    >>> sj.plan(sj.DPMSolver(algorithm="dpmsolver++", order=2, steps=10), sj.schedules.linear()).nfe
    10
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Dict, Optional, Tuple

import numpy as np

from scire_jax.core.plans import Combination, Step
from scire_jax.core.solvers import base
from scire_jax.core.timesteps import time_grid

__all__ = ["DPMSolver"]

ALGORITHMS = ("dpmsolver", "dpmsolver++")
METHODS = ("multistep", "singlestep", "singlestep_fixed")
SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")
SOLVER_TYPES = ("dpmsolver", "taylor")


def _scaled(terms: Dict[int, float], factor: float) -> Dict[int, float]:
    return {key: factor * value for key, value in terms.items()}


def _add(*terms: Dict[int, float]) -> Dict[int, float]:
    total: Dict[int, float] = {}
    for term in terms:
        for key, value in term.items():
            total[key] = total.get(key, 0.0) + value
    return total


def _difference(a: int, b: int, divisor: float = 1.0) -> Dict[int, float]:
    """``(F_a - F_b) / divisor`` as a coefficient map."""
    return {a: 1.0 / divisor, b: -1.0 / divisor}


@dataclasses.dataclass(frozen=True)
class _Exponential:
    """Per-interval exponential-integrator quantities of one of the two algorithms."""

    data: bool  # dpmsolver++ (data prediction) or dpmsolver (noise prediction)

    def phi_1(self, h):
        return math.expm1(-h) if self.data else math.expm1(h)

    def phi_2(self, h):
        return self.phi_1(h) / h + 1.0 if self.data else self.phi_1(h) / h - 1.0

    def phi_3(self, h):
        return self.phi_2(h) / h - 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolver(base.Solver):
    """DPM-Solver / DPM-Solver++ configuration (frozen, hashable).

    Args:
      algorithm: ``"dpmsolver"`` (noise prediction) or ``"dpmsolver++"`` (data prediction).
      method: ``"multistep"``, ``"singlestep"`` (DPM-Solver's "fast" order mix, NFE = steps) or
        ``"singlestep_fixed"``.
      order: 1, 2 or 3.
      steps: number of steps / NFE budget.
      skip_type: ``"logSNR"`` (default), ``"time_uniform"`` or ``"time_quadratic"``.
      solver_type: ``"dpmsolver"`` or ``"taylor"`` (form of the second-order correction).
      lower_order_final: lower the final orders -- only when ``steps < 10``, as the official code.
      times, t_start, t_end, denoise_to_zero, thresholding, correct_xt: see
        :class:`scire_jax.core.solvers.base.Solver`.

    On discrete schedules the official DPM-Solver clips the half log-SNR at -5.1 (it only bites where
    ``lambda(t_max) < -5.1``, e.g. cosine betas); build the schedule with
    ``sj.schedules.discrete(..., clip_log_snr=-5.1)`` to get the official samples there (see the
    README, "DPM-Solver on discrete schedules").
    """

    methods: ClassVar[Tuple[str, ...]] = METHODS
    skip_types: ClassVar[Tuple[str, ...]] = SKIP_TYPES
    lower_order_final_below: ClassVar[Optional[int]] = 10

    algorithm: str = "dpmsolver++"
    order: int = 2
    skip_type: str = "logSNR"
    solver_type: str = "dpmsolver"

    def __post_init__(self):
        base.check_choice("algorithm", self.algorithm, ALGORITHMS)
        if self.method == "adaptive":
            raise ValueError(f"method='adaptive' is not provided by scire-jax (yet); allowed: {METHODS}")
        super().__post_init__()
        base.check_choice("solver_type", self.solver_type, SOLVER_TYPES)

    @property
    def model_kind(self) -> str:
        return "data" if self.algorithm == "dpmsolver++" else "noise"

    def label(self) -> str:
        kind = {"multistep": "M", "singlestep": "S", "singlestep_fixed": "SF"}[self.method]
        return f"{'DPM++' if self.algorithm == 'dpmsolver++' else 'DPM'} {self.order}{kind}"

    # -- the x-space combination of an update from s to t ------------------------------------------
    def _combination(self, schedule, s, t, terms: Dict[int, float], exponential: _Exponential, first: int):
        """``x_t = ratio x_s + coef_t * (-phi_1 F_first + terms)``, ``coef_t`` = alpha_t (++) or sigma_t."""
        log_alpha_s, log_alpha_t = float(schedule.log_alpha(np.float64(s))), float(schedule.log_alpha(np.float64(t)))
        alpha_t, sigma_t = base.coefficients(schedule, t)
        alpha_s, sigma_s = base.coefficients(schedule, s)
        h = float(schedule.log_snr(np.float64(t))) - float(schedule.log_snr(np.float64(s)))
        if exponential.data:
            ratio, coef = sigma_t / sigma_s, alpha_t
        else:
            ratio, coef = math.exp(log_alpha_t - log_alpha_s), sigma_t
        weights = _add({first: -exponential.phi_1(h)}, terms)
        return ratio, _scaled(weights, coef)

    def multistep_arrays(self, schedule, grid, orders):
        """The multistep updates of :meth:`multistep_terms`, for all steps at once (numpy)."""
        n = self.steps
        grid = np.asarray(grid, dtype=np.float64)
        lam = np.asarray(schedule.log_snr(grid), dtype=np.float64)
        log_alpha = np.asarray(schedule.log_alpha(grid), dtype=np.float64)
        alpha = np.asarray(schedule.alpha(grid), dtype=np.float64)
        sigma = np.asarray(schedule.sigma(grid), dtype=np.float64)
        data = self.model_kind == "data"
        i = np.arange(1, n + 1)
        h = lam[i] - lam[i - 1]
        if data:
            ratio, coef = sigma[i] / sigma[i - 1], alpha[i]
            phi_1 = np.expm1(-h)
            phi_2 = phi_1 / h + 1.0
        else:
            ratio, coef = np.exp(log_alpha[i] - log_alpha[i - 1]), sigma[i]
            phi_1 = np.expm1(h)
            phi_2 = phi_1 / h - 1.0
        phi_3 = phi_2 / h - 0.5
        sign = -1.0 if data else 1.0
        weights = np.zeros((n, 3))
        weights[:, 0] = -phi_1
        with np.errstate(divide="ignore", invalid="ignore"):  # entries of lower-order steps are discarded
            r0 = (lam[i - 1] - lam[np.maximum(i - 2, 0)]) / h
            r1 = (lam[np.maximum(i - 2, 0)] - lam[np.maximum(i - 3, 0)]) / h
            d1_0 = np.stack([1.0 / r0, -1.0 / r0, np.zeros(n)], axis=1)
            two = orders == 2
            factor = -0.5 * phi_1 if self.solver_type == "dpmsolver" else -sign * phi_2
            weights[two] += (d1_0 * factor[:, None])[two]
            d1_1 = np.stack([np.zeros(n), 1.0 / r1, -1.0 / r1], axis=1)
            difference = d1_0 - d1_1
            d1 = d1_0 + difference * (r0 / (r0 + r1))[:, None]
            d2 = difference / (r0 + r1)[:, None]
            three = orders == 3
            weights[three] += (d1 * (-sign * phi_2)[:, None] + d2 * (-phi_3)[:, None])[three]
        return ratio, weights * coef[:, None], np.full(n, np.nan)

    def multistep_combination(self, schedule, grid, i: int, order: int) -> Combination:
        return self.multistep_update(schedule, grid[max(i - 3, 0):i + 1], order)

    def multistep_update(self, schedule, times, order: int) -> Combination:
        """The x-space multistep update to ``times[-1]`` from the history at ``times[:-1]`` (oldest first)."""
        times = [float(t) for t in times]
        lam = [float(schedule.log_snr(np.float64(t))) for t in times]
        exponential = _Exponential(self.model_kind == "data")
        ratio, weights = self._combination(schedule, times[-2], times[-1], self.multistep_terms(lam, order),
                                           exponential, first=1)
        return Combination(state=ratio, history=weights)

    def multistep_terms(self, lam, order: int) -> Dict[int, float]:
        """Correction terms (history age -> coefficient, before the ``alpha_t``/``sigma_t`` factor).

        Args:
          lam: half log-SNR at the previous points and the target, oldest first.
          order: 1, 2 or 3.
        """
        exponential = _Exponential(self.model_kind == "data")
        sign = -1.0 if exponential.data else 1.0  # the ++ corrections enter with the opposite sign
        lam = list(lam)
        h = lam[-1] - lam[-2]
        if order == 1:
            return {}
        r0 = (lam[-2] - lam[-3]) / h
        d1_0 = _difference(1, 2, r0)
        if order == 2:
            if self.solver_type == "dpmsolver":
                return _scaled(d1_0, -0.5 * exponential.phi_1(h))
            return _scaled(d1_0, -sign * exponential.phi_2(h))
        r1 = (lam[-3] - lam[-4]) / h
        d1_1 = _difference(2, 3, r1)
        d1 = _add(d1_0, _scaled(_add(d1_0, _scaled(d1_1, -1.0)), r0 / (r0 + r1)))
        d2 = _scaled(_add(d1_0, _scaled(d1_1, -1.0)), 1.0 / (r0 + r1))
        return _add(_scaled(d1, -sign * exponential.phi_2(h)), _scaled(d2, -exponential.phi_3(h)))

    def singlestep_outer_grid(self, schedule, t_start, t_end, orders):
        if self.method == "singlestep" and self.skip_type == "logSNR" and self.times is None:
            # the official "fast" method spaces the outer steps uniformly in logSNR
            return time_grid(schedule, self.skip_type, t_start, t_end, len(orders))
        return super().singlestep_outer_grid(schedule, t_start, t_end, orders)

    def singlestep_interval(self, schedule, s: float, t: float, order: int, j: int, count: int) -> Step:
        inner = np.asarray(schedule.log_snr(time_grid(schedule, self.skip_type, s, t, order)))
        h = inner[-1] - inner[0]
        r1 = (inner[1] - inner[0]) / h if order > 1 else None
        r2 = (inner[2] - inner[0]) / h if order > 2 else None
        return self.singlestep_step(schedule, s, t, order, r1, r2)

    def singlestep_step(self, schedule, s: float, t: float, order: int, r1: Optional[float] = None,
                        r2: Optional[float] = None) -> Step:
        """One singlestep update from ``s`` to ``t``; ``r1``/``r2`` default to 1/2 or 1/3, 2/3."""
        if r1 is None:
            r1 = 0.5 if order == 2 else 1.0 / 3.0
        if r2 is None:
            r2 = 2.0 / 3.0
        exponential = _Exponential(self.model_kind == "data")
        sign = -1.0 if exponential.data else 1.0
        lam_s = float(schedule.log_snr(np.float64(s)))
        h = float(schedule.log_snr(np.float64(t))) - lam_s
        alpha_s, sigma_s = base.coefficients(schedule, s)
        times, alphas, sigmas = [s], [alpha_s], [sigma_s]
        inputs = [Combination(state=1.0)]

        def stage(ratio_r, extra_terms):
            """A stage at lambda_s + r h: its first-order part plus ``extra_terms``."""
            time = float(schedule.inverse_log_snr(lam_s + ratio_r * h))
            ratio, weights = self._combination(schedule, s, time, extra_terms, exponential, first=0)
            times.append(time)
            a, b = base.coefficients(schedule, time)
            alphas.append(a)
            sigmas.append(b)
            inputs.append(Combination(state=ratio, stages=weights))

        if order == 1:
            terms: Dict[int, float] = {}
        elif order == 2:
            stage(r1, {})
            if self.solver_type == "dpmsolver":
                terms = _scaled(_difference(1, 0), -(0.5 / r1) * exponential.phi_1(h))
            else:
                terms = _scaled(_difference(1, 0), -sign * (1.0 / r1) * exponential.phi_2(h))
        else:
            stage(r1, {})
            stage(r2, _scaled(_difference(1, 0), -sign * (r2 / r1) * exponential.phi_2(r2 * h)))
            if self.solver_type == "dpmsolver":
                terms = _scaled(_difference(2, 0), -sign * (1.0 / r2) * exponential.phi_2(h))
            else:
                d1_0 = _difference(1, 0, r1)
                d1_1 = _difference(2, 0, r2)
                d1 = _scaled(_add(_scaled(d1_0, r2), _scaled(d1_1, -r1)), 1.0 / (r2 - r1))
                d2 = _scaled(_add(d1_1, _scaled(d1_0, -1.0)), 2.0 / (r2 - r1))
                terms = _add(_scaled(d1, -sign * exponential.phi_2(h)), _scaled(d2, -exponential.phi_3(h)))
        ratio, weights = self._combination(schedule, s, t, terms, exponential, first=0)
        return Step(times, alphas, sigmas, inputs, Combination(state=ratio, stages=weights), time=t,
                    kind=self.model_kind, order=order)
