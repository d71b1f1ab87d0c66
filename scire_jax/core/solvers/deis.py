"""DEIS (Zhang & Chen 2023), multistep "logrho" variant, as diffusers' ``DEISMultistepScheduler``.

DEIS integrates the probability-flow ODE in the noise-to-signal ratio ``rho = sigma / alpha``
with the scaled state ``y = x / alpha``::

    dy / drho = eps(x, t)

Multistep DEIS of order ``p`` replaces ``eps`` on ``[rho_0, rho_t]`` by its Lagrange polynomial in
``log rho`` through the last ``p`` model outputs ``eps_0`` (newest, at ``rho_0``), ``eps_1``,
``eps_2`` and integrates it exactly in ``rho``::

    y_t = y_0 + sum_j c_j eps_j,    c_j = int_{rho_0}^{rho_t} L_j(log rho) d rho,
    L_j(u) = prod_{m != j} (u - u_m) / (u_j - u_m),   u_m = log rho_m.

With ``v = log(rho / rho_0)`` and ``P_j(v) = L_j(log rho_0 + v)`` the integral is
``c_j = rho_t Q_j(v_t) - rho_0 Q_j(0)`` where ``Q_j = P_j - P_j' + P_j'' - ...``
(``d/drho [rho Q(v)] = Q + Q' = P``).  Written out:

* order 1 (= DDIM):  ``c_0 = rho_t - rho_0``;
* order 2, with ``w = log(rho_1 / rho_0)``:
  ``c_0 = [rho (v - w - 1)]_0^{v_t} / (-w)``, ``c_1 = [rho (v - 1)]_0^{v_t} / w``;
* order 3, with ``w_1 = log(rho_1 / rho_0)``, ``w_2 = log(rho_2 / rho_0)``:
  ``c_0 = [rho ((v - w_1)(v - w_2) - (2 v - w_1 - w_2) + 2)]_0^{v_t} / (w_1 w_2)``,
  ``c_1 = [rho (v (v - w_2) - (2 v - w_2) + 2)]_0^{v_t} / (w_1 (w_1 - w_2))``,
  ``c_2 = [rho (v (v - w_1) - (2 v - w_1) + 2)]_0^{v_t} / (w_2 (w_2 - w_1))``,

where ``[rho F(v)]_0^{v_t} = rho_t F(v_t) - rho_0 F(0)``.  In ``x``:
``x_t = (alpha_t / alpha_0) x + alpha_t sum_j c_j eps_j`` -- exactly diffusers' ``ind_fn``
differences, in shifted logarithms.  diffusers converts every model output to a noise prediction
(``algorithm_type="deis"``), so DEIS integrates ``"noise"``.  The order ramps up from 1 and, as in
diffusers, ``lower_order_final`` lowers the final two steps only for fewer than 15 steps.

Example:
    >>> import scire_jax as sj
    >>> sj.plan(sj.DEIS(order=3, steps=10), sj.schedules.linear()).nfe
    10
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict, Optional

import numpy as np
from numpy.polynomial import polynomial as P

from scire_jax.core.plans import Combination
from scire_jax.core.solvers import base

__all__ = ["DEIS", "deis_coefficients"]


def deis_coefficients(rhos) -> Dict[int, float]:
    """The DEIS "logrho" weights ``c_j`` of ``y_t = y_0 + sum_j c_j eps_j`` (host, float64).

    Args:
      rhos: sequence of ``rho = sigma / alpha`` at the history points, oldest first, then the target:
        ``[rho_{p-1}, ..., rho_1, rho_0, rho_t]`` (``p = len(rhos) - 1``, the order).

    Returns:
      ``{age: c}`` with age 1 = the newest output ``eps_0`` (at ``rho_0``), age 2 = ``eps_1``, ...
    """
    values = np.asarray(rhos, dtype=np.float64)
    rho_0, rho_t = float(values[-2]), float(values[-1])
    points = np.log(values[:-1][::-1] / rho_0)  # v_m = log(rho_m / rho_0), newest first (v_0 = 0)
    v_t = float(np.log(rho_t / rho_0))
    weights = {}
    for j, v_j in enumerate(points):
        basis = np.array([1.0])  # coefficients of L_j(v), lowest power first
        for m, v_m in enumerate(points):
            if m != j:
                basis = P.polymul(basis, np.array([-v_m, 1.0]) / (v_j - v_m))
        antiderivative = np.zeros_like(basis)  # Q = P - P' + P'' - ...
        term, sign = basis, 1.0
        while term.size:
            antiderivative[:term.size] += sign * term
            term, sign = P.polyder(term) if term.size > 1 else np.array([]), -sign
        weights[j + 1] = rho_t * float(P.polyval(v_t, antiderivative)) - rho_0 * float(antiderivative[0])
    return weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class DEIS(base.Solver):
    """DEIS multistep configuration, "logrho" variant (frozen, hashable).

    Args:
      order: 1, 2 or 3 (the number of history terms; diffusers' ``solver_order``).
      steps: number of steps = NFE.
      skip_type: time grid (default ``"logSNR"``); or ``times=`` (e.g. diffusers' timesteps through
        :func:`scire_jax.core.diffusers_grid.from_diffusers_timesteps`).
      lower_order_final: lower the orders of the last two steps, only when ``steps < 15`` (diffusers).
      method, times, t_start, t_end, denoise_to_zero, thresholding, correct_xt: see
        :class:`scire_jax.core.solvers.base.Solver` (``method`` is ``"multistep"`` only).
    """

    lower_order_final_below: ClassVar[Optional[int]] = 15

    order: int = 2
    skip_type: str = "logSNR"

    @property
    def model_kind(self) -> str:
        return "noise"

    def label(self) -> str:
        return f"DEIS-{self.order}"

    def multistep_arrays(self, schedule, grid, orders):
        """The closed-form weights of the module docstring for all steps at once (numpy)."""
        n = self.steps
        grid = np.asarray(grid, dtype=np.float64)
        rho = np.asarray(schedule.nsr(grid), dtype=np.float64)
        alpha = np.asarray(schedule.alpha(grid), dtype=np.float64)
        i = np.arange(1, n + 1)
        rho_t, rho_0 = rho[i], rho[i - 1]
        rho_1, rho_2 = rho[np.maximum(i - 2, 0)], rho[np.maximum(i - 3, 0)]
        weights = np.zeros((n, 3))
        weights[:, 0] = rho_t - rho_0
        with np.errstate(divide="ignore", invalid="ignore"):  # entries of lower-order steps are discarded
            v = np.log(rho_t / rho_0)

            def bracket(f):  # [rho F(v)]_0^{v_t}
                return rho_t * f(v) - rho_0 * f(np.zeros(n))

            two = orders == 2
            w = np.log(rho_1 / rho_0)
            weights[two, 0] = (bracket(lambda x: x - w - 1.0) / (-w))[two]
            weights[two, 1] = (bracket(lambda x: x - 1.0) / w)[two]
            three = orders == 3
            w1, w2 = w, np.log(rho_2 / rho_0)
            weights[three, 0] = (bracket(lambda x: (x - w1) * (x - w2) - (2.0 * x - w1 - w2) + 2.0) / (w1 * w2))[three]
            weights[three, 1] = (bracket(lambda x: x * (x - w2) - (2.0 * x - w2) + 2.0) / (w1 * (w1 - w2)))[three]
            weights[three, 2] = (bracket(lambda x: x * (x - w1) - (2.0 * x - w1) + 2.0) / (w2 * (w2 - w1)))[three]
        return alpha[i] / alpha[i - 1], weights * alpha[i][:, None], np.full(n, np.nan)

    def multistep_combination(self, schedule, grid, i: int, order: int) -> Combination:
        times = np.asarray(grid[i - order:i + 1], dtype=np.float64)  # the order's history points, then the target
        rhos = np.asarray(schedule.nsr(times))
        weights = deis_coefficients(rhos)
        return base.ScaledSpace(schedule, "alpha").combination(float(times[-2]), float(times[-1]), history=weights)
