"""UniPC (Zhao et al. 2023): multistep predictor (UniP) + corrector (UniC), B(h) variants bh1 / bh2.

With ``h = lambda_t - lambda_0``, ``hh = -h`` (data prediction) or ``h`` (noise prediction) and
``r_k = (lambda_{-k} - lambda_0) / h`` of the earlier points, ``D_k = (F_{-k} - F_0) / r_k``:

    x_t^base = ratio x - c_t (e^{hh} - 1) F_0              (c_t = alpha_t or sigma_t)
    x_t^pred = x_t^base - c_t B(h) sum_k rho^p_k D_k
    x_t^corr = x_t^base - c_t B(h) (sum_k rho^c_k D_k + rho^c_last (F(x_t^pred, t) - F_0))

``rho`` solve ``R rho = b`` with ``R_{ik} = r_k^{i-1}`` and ``b_i = i! h phi_{i+1}(hh) / B(h)``,
``B(h) = hh`` (bh1) or ``e^{hh} - 1`` (bh2).  The model output at the *predicted* point is reused as
history, so the corrector costs no extra network call (NFE = steps); the last step is not corrected.
The corrector raises the order by one: UniPC-p converges at order p + 1.

Example:
    >>> import scire_jax as sj
    >>> sj.plan(sj.UniPC(order=2, steps=10), sj.schedules.linear()).nfe
    10
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from scire_jax.core.plans import Combination, Step
from scire_jax.core.solvers import base

__all__ = ["UniPC"]

VARIANTS = ("bh1", "bh2")
PREDICTIONS = ("data", "noise")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniPC(base.Solver):
    """UniPC multistep configuration (frozen, hashable).

    Args:
      variant: ``"bh1"`` or ``"bh2"`` (``B(h)``).
      order: 1, 2 or 3 (predictor order; the corrected scheme is one order higher).
      steps: number of steps = NFE.
      skip_type: time grid (default ``"logSNR"``).
      prediction: ``"data"`` (UniPC with x0 prediction, default) or ``"noise"``.
      times, t_start, t_end, lower_order_final, denoise_to_zero, thresholding, correct_xt: see
        :class:`scire_jax.core.solvers.base.Solver` (``lower_order_final`` applies for every
        ``steps``, as the UniPC code).
    """

    variant: str = "bh2"
    order: int = 2
    skip_type: str = "logSNR"
    prediction: str = "data"

    def __post_init__(self):
        base.check_choice("variant", self.variant, VARIANTS)
        super().__post_init__()
        base.check_choice("prediction", self.prediction, PREDICTIONS)

    @property
    def model_kind(self) -> str:
        return "data" if self.prediction == "data" else "noise"

    def label(self) -> str:
        return f"UniPC-{self.order}"

    def multistep_step(self, schedule, grid, i: int, q: int) -> Step:
        """Predictor to ``grid[i]``; except at the end, corrected with the model at the predicted point."""
        window = np.asarray(grid[max(i - 3, 0):i + 1], dtype=np.float64)
        offset = max(i - 3, 0)
        lam_window = np.asarray(schedule.log_snr(window))
        log_alpha_window = np.asarray(schedule.log_alpha(window))

        def lam_at(index):
            return float(lam_window[index - offset])

        data = self.prediction == "data"
        kind = self.model_kind
        h = lam_at(i) - lam_at(i - 1)
        hh = -h if data else h
        alpha_t, sigma_t = base.coefficients(schedule, grid[i])
        if data:
            ratio = sigma_t / base.coefficients(schedule, grid[i - 1])[1]
        else:
            ratio = math.exp(float(log_alpha_window[i - offset] - log_alpha_window[i - 1 - offset]))
        scale = alpha_t if data else sigma_t
        h_phi_1 = math.expm1(hh)
        b_h = hh if self.variant == "bh1" else math.expm1(hh)
        # r_k of the earlier points (ages 2..q), then 1 for the new point
        rks = [(lam_at(i - 1 - k) - lam_at(i - 1)) / h for k in range(1, q)] + [1.0]
        matrix = np.array([[r ** (row) for r in rks] for row in range(q)])
        rhs = []
        h_phi_k = h_phi_1 / hh - 1.0
        factorial = 1.0
        for index in range(1, q + 1):
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= index + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        rhs = np.array(rhs)
        base_terms = {1: -scale * h_phi_1}  # history age 1 = F_0

        def with_differences(rhos):
            terms = dict(base_terms)
            for k, rho in enumerate(rhos):  # D_k = (F_{age k+2} - F_0) / r_k
                coef = -scale * b_h * rho / rks[k]
                terms[k + 2] = terms.get(k + 2, 0.0) + coef
                terms[1] = terms[1] - coef
            return terms

        if q == 1:
            rhos_predictor = []
        elif q == 2:
            rhos_predictor = [0.5]
        else:
            rhos_predictor = list(np.linalg.solve(matrix[:-1, :-1], rhs[:-1]))
        predictor = Combination(state=ratio, history=with_differences(rhos_predictor))
        if i < self.steps:  # the last step is not corrected
            rhos_corrector = [0.5] if q == 1 else list(np.linalg.solve(matrix, rhs))
            terms = with_differences(rhos_corrector[:-1])
            last = -scale * b_h * rhos_corrector[-1]  # times (F(x_pred, t) - F_0)
            terms[1] = terms[1] - last
            output = Combination(state=ratio, stages={0: last}, history=terms)
            return Step([float(grid[i])], [alpha_t], [sigma_t], [predictor], output,
                        time=float(grid[i]), push="stage0", kind=kind, order=q)
        return Step([], [], [], [], predictor, time=float(grid[i]), kind=kind, order=q)

