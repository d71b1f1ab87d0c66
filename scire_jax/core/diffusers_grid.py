"""diffusers' discrete timesteps as an explicit ``times=`` grid (same samples as diffusers' schedulers).

diffusers' schedulers (``DDIMScheduler``, ``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``,
``DEISMultistepScheduler``) step between integer training timesteps ``k in 0..N-1`` of a table
``alphas_cumprod[k]``.  On ``sj.schedules.discrete(alphas_cumprod=...)`` (or ``betas=``) of the same
table, timestep ``k`` is the continuous time

    t = (k + 1) / N,        alpha_t^2 = alphas_cumprod[k],

and the network receives ``1000 (t - 1/N) = 1000 k / N`` (= ``k`` for N = 1000), the ``"discrete"``
time input of :func:`scire_jax.wrap_model`.  The last step of a diffusers sampler goes from the last
timestep to a *final* noise level:

* ``"sigma_min"`` -- ``alphas_cumprod[0]``, i.e. ``t = 1/N`` (``t_min``): DPM/UniPC
  ``final_sigmas_type="sigma_min"``, DEIS (always), DDIM ``set_alpha_to_one=False``.  The grid is the
  timesteps followed by ``1/N`` (a final step of zero length, from ``k = 0``, is a no-op and dropped).
* ``"zero"`` -- ``sigma = 0`` (``alpha = 1``): DPM/UniPC ``final_sigmas_type="zero"`` (diffusers'
  default), DDIM ``set_alpha_to_one=True``.  That step returns the data prediction at the last
  timestep, which is ``denoise_to_zero=True`` on the grid of the timesteps themselves.  diffusers
  always takes it at first order; its other steps match with ``lower_order_final=False`` here when
  diffusers does not lower the second-to-last step (``lower_order_final=False``, or order <= 2, or
  DPM-Solver with >= 15 steps).

``DDIMScheduler`` steps from ``k`` to ``k - N // n`` (not to the next entry of ``timesteps``): pass
``step_ratio=N // n``; the grid is then checked to be consistent (it is for ``"leading"`` spacing and
for ``"trailing"`` when ``n`` divides ``N``; ``"linspace"`` evaluates the model at other times than the
state's and has no ODE-grid equivalent).

Example:
    >>> import numpy as np
    >>> import scire_jax as sj
    >>> from scire_jax.core.diffusers_grid import diffusers_timesteps, from_diffusers_timesteps
    >>> timesteps = diffusers_timesteps(5, spacing="linspace")  # DPMSolverMultistepScheduler's
    >>> timesteps.tolist()
    [999, 799, 599, 400, 200]
    >>> grid = from_diffusers_timesteps(timesteps, 1000, final="sigma_min")
    >>> grid.times
    (1.0, 0.8, 0.6, 0.401, 0.201, 0.001)
    >>> solver = sj.DPMSolver(order=2, **grid._asdict())  # = final_sigmas_type="sigma_min"
    >>> sj.plan(solver, sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))).nfe
    5
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Tuple

import numpy as np

__all__ = ["FINALS", "SPACINGS", "DiffusersGrid", "from_diffusers_timesteps", "diffusers_timesteps"]

FINALS = ("sigma_min", "zero")
SPACINGS = ("linspace", "leading", "trailing")
SCHEDULERS = ("multistep", "ddim")


class DiffusersGrid(NamedTuple):
    """The solver fields that reproduce a diffusers timestep schedule: ``Solver(**grid._asdict())``."""

    times: Tuple[float, ...]
    denoise_to_zero: bool


def _time(k, n: int) -> float:
    return (float(k) + 1.0) / n


def from_diffusers_timesteps(timesteps, num_train_timesteps: int = 1000, final: str = "sigma_min", *,
                             step_ratio: Optional[int] = None) -> DiffusersGrid:
    """The ``times=`` grid (and ``denoise_to_zero``) of a diffusers timestep schedule.

    Args:
      timesteps: diffusers' ``scheduler.timesteps`` (integers in ``0..N-1``, strictly decreasing).
      num_train_timesteps: ``N``, the length of the ``alphas_cumprod`` table.
      final: ``"sigma_min"`` (final noise level ``alphas_cumprod[0]``, i.e. ``t = 1/N``) or ``"zero"``
        (``sigma = 0``: a final data prediction, ``denoise_to_zero=True``); see the module docstring.
      step_ratio: ``DDIMScheduler`` only: its step size ``N // num_inference_steps`` (each step goes
        from ``k`` to ``k - step_ratio``, the final level once that is negative).

    Returns:
      :class:`DiffusersGrid` ``(times, denoise_to_zero)``: ``t = (k + 1) / N`` per timestep, then the
      final time.

    Raises:
      ValueError: timesteps not integers in ``0..N-1`` or not strictly decreasing, an unknown
        ``final``, a DDIM schedule whose steps do not land on its next timestep, or a schedule too
        short for a grid (one timestep with ``final="zero"``).
    """
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, numbers.Integral) \
            or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps={num_train_timesteps!r} is not allowed: it must be an integer >= 2")
    if final not in FINALS:
        raise ValueError(f"final={final!r} is not allowed; allowed: {FINALS}")
    n = int(num_train_timesteps)
    values = np.asarray(timesteps.cpu() if hasattr(timesteps, "cpu") else timesteps)
    if values.ndim != 1 or values.shape[0] < 1:
        raise ValueError(f"timesteps with shape {values.shape} is not allowed: it must be 1-D and not empty")
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise ValueError(f"timesteps={values.tolist()!r} is not allowed: they must be integers")
    ks = values.astype(np.int64)
    if np.any(ks < 0) or np.any(ks >= n):
        raise ValueError(f"timesteps={ks.tolist()!r} is not allowed: they must lie in 0..{n - 1}")
    if np.any(np.diff(ks) >= 0):
        raise ValueError(f"timesteps={ks.tolist()!r} is not allowed: they must be strictly decreasing")
    times = [_time(k, n) for k in ks]
    if step_ratio is not None:
        if isinstance(step_ratio, bool) or not isinstance(step_ratio, numbers.Integral) or step_ratio < 1:
            raise ValueError(f"step_ratio={step_ratio!r} is not allowed: it must be an integer >= 1")
        targets = ks - int(step_ratio)
        if np.any(targets[:-1] != ks[1:]):
            raise ValueError(
                f"DDIM timesteps {ks.tolist()} are not spaced by step_ratio={step_ratio}: DDIMScheduler steps from "
                f"k to k - {step_ratio} but evaluates the model at the next timestep, a time the state is not at "
                f"(e.g. timestep_spacing='linspace', or 'trailing' when num_inference_steps does not divide "
                f"{n}); use 'leading' or 'trailing' spacing")
        if targets[-1] >= 0:  # the last step lands on a table entry, not on the final level
            return DiffusersGrid(tuple(times + [_time(targets[-1], n)]), False)
    if final == "zero":
        if len(times) < 2:
            raise ValueError(f"timesteps={ks.tolist()!r} with final='zero' is a single data prediction: "
                             f"at least 2 timesteps are needed for a grid")
        return DiffusersGrid(tuple(times), True)
    if ks[-1] == 0:  # the final step from k = 0 to alphas_cumprod[0] has zero length: a no-op
        if len(times) < 2:
            raise ValueError("timesteps=[0] with final='sigma_min' is a step of zero length: nothing to integrate")
        return DiffusersGrid(tuple(times), False)
    return DiffusersGrid(tuple(times + [_time(0, n)]), False)


def diffusers_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000, spacing: str = "linspace",
                        steps_offset: int = 0, scheduler: str = "multistep") -> np.ndarray:
    """diffusers' ``set_timesteps`` integer timesteps (no diffusers needed; plain spacings only).

    Args:
      num_inference_steps: ``n``.
      num_train_timesteps: ``N``.
      spacing: ``timestep_spacing``: ``"linspace"``, ``"leading"`` or ``"trailing"``.
      steps_offset: diffusers' ``steps_offset`` (``"leading"`` only).
      scheduler: ``"multistep"`` (DPM-Solver, UniPC, DEIS: ``n`` model evaluations between ``n + 1``
        levels) or ``"ddim"`` (``DDIMScheduler``).

    Returns:
      int64 array of ``n`` strictly decreasing timesteps (for ``"multistep"``; duplicates that
      diffusers' rounding can make for ``n`` close to ``N`` are kept as diffusers keeps them).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r} is not allowed; allowed: {SPACINGS}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler={scheduler!r} is not allowed; allowed: {SCHEDULERS}")
    for name, value, low in (("num_inference_steps", num_inference_steps, 1),
                             ("num_train_timesteps", num_train_timesteps, 2), ("steps_offset", steps_offset, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name}={value!r} is not allowed: it must be an integer >= {low}")
    n, big_n = int(num_inference_steps), int(num_train_timesteps)
    if n > big_n:
        raise ValueError(f"num_inference_steps={n} is not allowed: it must be <= num_train_timesteps={big_n}")
    if scheduler == "ddim":
        if spacing == "linspace":
            return np.linspace(0, big_n - 1, n).round()[::-1].astype(np.int64)
        if spacing == "leading":
            return (np.arange(0, n) * (big_n // n)).round()[::-1].astype(np.int64) + steps_offset
        return np.round(np.arange(big_n, 0, -big_n / n)).astype(np.int64) - 1
    if spacing == "linspace":
        return np.linspace(0, big_n - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n + 1) * (big_n // (n + 1))).round()[::-1][:-1].astype(np.int64) + steps_offset
    return np.arange(big_n, 0, -big_n / n).round().astype(np.int64) - 1
