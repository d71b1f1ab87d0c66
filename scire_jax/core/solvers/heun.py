"""EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1 with S_churn = 0).

In the scaled variables ``y = x / alpha`` and ``nu = sigma / alpha`` (``nu = sigma`` and ``y = x``
for EDM's own ``alpha = 1`` schedule) the probability-flow ODE is ``dy/dnu = eps``.  On the grid
``nu_0 > nu_1 > ... > nu_{N-1}`` (EDM: ``karras`` with ``rho = 7`` from ``sigma_max`` to
``sigma_min``) each step is Heun's method, ``h = nu_{i+1} - nu_i``:

    y'      = y_i + h eps(y_i, nu_i)                              (Euler predictor)
    y_{i+1} = y_i + h (eps(y_i, nu_i) + eps(y', nu_{i+1})) / 2    (trapezoidal corrector)

and the last step, EDM's Euler step from ``sigma_{N-1}`` to ``sigma_N = 0``, is
``y_N = y_{N-1} - nu_{N-1} eps = x0``: the data prediction (``denoise_to_zero``).  So
``EDMHeun(steps=N)`` makes ``N - 1`` Heun steps and one final evaluation: NFE = 2 N - 1, exactly
EDM's ``edm_sampler(num_steps=N)``.

Example:
    >>> import scire_jax as sj
    >>> sj.plan(sj.EDMHeun(steps=18), sj.schedules.edm()).nfe
    35
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, List, Tuple

from scire_jax.core.plans import Combination, Step
from scire_jax.core.solvers import base

__all__ = ["EDMHeun"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EDMHeun(base.Solver):
    """EDM's deterministic 2nd-order Heun sampler (frozen, hashable).

    Args:
      steps: EDM's ``num_steps`` N (grid points from ``t_start`` to ``t_end``); NFE = 2 N - 1.
      skip_type: the grid, ``"karras"`` (EDM's, rho = 7) by default.
      denoise_to_zero: the final Euler step to sigma = 0 (EDM's; default True). With False the
        solve stops at ``t_end`` after ``N - 1`` Heun steps (NFE = 2 N - 2).
      times, t_start, t_end, thresholding, correct_xt: see :class:`scire_jax.core.solvers.base.Solver`
        (``times`` are the N grid points).
    """

    methods: ClassVar[Tuple[str, ...]] = ("singlestep",)
    skip_types: ClassVar[Tuple[str, ...]] = ("karras", "logSNR", "time_uniform", "NSR")

    method: str = "singlestep"
    order: int = 2
    steps: int = 18
    skip_type: str = "karras"
    denoise_to_zero: bool = True

    def __post_init__(self):
        if self.order != 2:
            raise ValueError(f"order={self.order!r} is not allowed: EDM's Heun sampler has order 2")
        super().__post_init__()
        if self.times is not None:  # N grid points (the base class counted intervals)
            object.__setattr__(self, "steps", len(self.times))

    @property
    def model_kind(self) -> str:
        return "noise"

    def label(self) -> str:
        return "EDM-Heun"

    def write_steps(self, schedule, t_start: float, t_end: float) -> List[Step]:
        grid = self.grid(schedule, t_start, t_end, self.steps - 1)
        space = base.ScaledSpace(schedule, "alpha")
        steps = []
        for s, t in zip(grid[:-1], grid[1:]):
            s, t = float(s), float(t)
            h = float(schedule.nsr(t)) - float(schedule.nsr(s))  # negative: towards less noise
            alpha_s, sigma_s = base.coefficients(schedule, s)
            alpha_t, sigma_t = base.coefficients(schedule, t)
            predictor = space.combination(s, t, stages={0: h})
            output = space.combination(s, t, stages={0: 0.5 * h, 1: 0.5 * h})
            steps.append(Step([s, t], [alpha_s, alpha_t], [sigma_s, sigma_t], [Combination(state=1.0), predictor],
                              output, time=t, kind="noise", order=2))
        return steps
