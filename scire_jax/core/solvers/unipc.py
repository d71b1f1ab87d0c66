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

from scire_jax.core.plans import Combination, Step, build_plan_from_arrays
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

    def multistep_arrays(self, schedule, grid, orders):
        """Predictor and corrector coefficients of every step at once (numpy; see :meth:`multistep_step`).

        Returns a dict: ``state (n,)``, ``predictor (n, 3)`` (history by age), ``corrector_history (n, 3)``,
        ``corrector_stage (n,)`` (the weight of the model at the predicted point), ``alpha``,
        ``sigma`` at the new times; the last step is not corrected.
        """
        n = self.steps
        grid = np.asarray(grid, dtype=np.float64)
        lam = np.asarray(schedule.log_snr(grid), dtype=np.float64)
        log_alpha = np.asarray(schedule.log_alpha(grid), dtype=np.float64)
        alpha = np.asarray(schedule.alpha(grid), dtype=np.float64)
        sigma = np.asarray(schedule.sigma(grid), dtype=np.float64)
        data = self.prediction == "data"
        i = np.arange(1, n + 1)
        h = lam[i] - lam[i - 1]
        hh = -h if data else h
        ratio = sigma[i] / sigma[i - 1] if data else np.exp(log_alpha[i] - log_alpha[i - 1])
        scale = alpha[i] if data else sigma[i]
        h_phi_1 = np.expm1(hh)
        b_h = hh if self.variant == "bh1" else np.expm1(hh)
        rhs = np.zeros((n, 3))
        h_phi_k = h_phi_1 / hh - 1.0
        factorial = 1.0
        for index in range(1, 4):
            rhs[:, index - 1] = h_phi_k * factorial / b_h
            factorial *= index + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        with np.errstate(divide="ignore", invalid="ignore"):  # entries of lower-order steps are discarded
            r1 = (lam[np.maximum(i - 2, 0)] - lam[i - 1]) / h
            r2 = (lam[np.maximum(i - 3, 0)] - lam[i - 1]) / h
        rks = np.stack([r1, r2, np.ones(n)], axis=1)  # r_k of the ages 2, 3, then 1 for the new point

        def solve(columns, count, mask):
            """rho of ``R rho = rhs[:count]`` with ``R[row, col] = columns[col] ** row`` on the masked steps."""
            rho = np.zeros((n, count))
            if np.any(mask):
                powers = np.stack([columns[mask] ** row for row in range(count)], axis=1)  # (m, count, count)
                rho[mask] = np.linalg.solve(powers, rhs[mask, :count, None])[..., 0]
            return rho

        def with_differences(rhos, count):
            terms = np.zeros((n, 3))
            terms[:, 0] = -scale * h_phi_1
            for k in range(count):  # D_k = (F_{age k+2} - F_0) / r_k
                with np.errstate(divide="ignore", invalid="ignore"):
                    coef = np.where(rhos[:, k] != 0, -scale * b_h * rhos[:, k] / rks[:, k], 0.0)
                terms[:, k + 1] += coef
                terms[:, 0] -= coef
            return terms

        predictor_rho = np.zeros((n, 2))
        predictor_rho[orders == 2, 0] = 0.5
        three = orders == 3
        predictor_rho[three] = solve(np.stack([r1, r2], axis=1), 2, three)[three]
        corrector_rho = np.zeros((n, 3))
        corrector_rho[orders == 1, 0] = 0.5
        two = orders == 2
        corrector_rho[two, :2] = solve(np.stack([r1, np.ones(n)], axis=1), 2, two)[two]
        corrector_rho[three] = solve(rks, 3, three)[three]
        predictor = with_differences(predictor_rho, 2)
        last_index = np.clip(orders - 1, 0, 2)  # the corrector's rho of the new point
        last_rho = corrector_rho[np.arange(n), last_index]
        earlier = corrector_rho.copy()
        earlier[np.arange(n), last_index] = 0.0
        corrector = with_differences(earlier, 2)
        last = -scale * b_h * last_rho
        corrector[:, 0] -= last
        return {"state": ratio, "predictor": predictor, "corrector_history": corrector, "corrector_stage": last,
                "alpha": alpha[i], "sigma": sigma[i]}

    def _vectorised_multistep_plan(self, schedule, t_start, t_end):
        grid = self.grid(schedule, t_start, t_end, self.steps)
        orders = self.multistep_orders()
        c = self.multistep_arrays(schedule, grid, orders)
        n = self.steps
        size = int(max(int(orders.max()), 1))

        def by_slot(weights):  # history slot H - age holds the output of that age
            out = np.zeros((n, size))
            for age in range(1, size + 1):
                out[:, size - age] = weights[:, age - 1]
            return out

        rows = {
            "stage_time": np.asarray(grid[1:], dtype=np.float64)[:, None], "stage_alpha": c["alpha"][:, None],
            "stage_sigma": c["sigma"][:, None], "stage_state": c["state"][:, None],
            "stage_stage": np.zeros((n, 1, 1)), "stage_history": by_slot(c["predictor"])[:, None, :],
            "out_state": c["state"], "out_stage": c["corrector_stage"][:, None],
            "out_history": by_slot(c["corrector_history"]), "time": np.asarray(grid[1:], dtype=np.float64),
            "post_alpha": np.ones(n), "post_sigma": np.ones(n), "step_index": np.arange(1, n + 1, dtype=np.int32),
            "order": orders.astype(np.float64), "phi": np.full(n, np.nan),
        }
        # the last step is the predictor alone (no stage)
        last = {"out_state": c["state"][-1:], "out_history": by_slot(c["predictor"])[-1:]}
        extra = [base.denoise_step(schedule, t_end)] if self.denoise_to_zero else []
        return build_plan_from_arrays(base.initial_step(schedule, grid[0], self.model_kind), rows,
                                      self.model_kind, size, extra, t_start, t_end, self, bulk_push="stage0",
                                      last_step=last)

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

