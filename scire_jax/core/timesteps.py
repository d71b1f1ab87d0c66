"""Time grids for sampling (host-side, numpy float64).

All grids run *backwards*: ``t[0] = t_start`` (noisy) ... ``t[N] = t_end`` (clean).

* ``"NSR"`` (SciRE): the shifted NSR is geometric,
  ``nu_i + k nu_E = (nu_S + k nu_E)^(1 - i/N) ((1 + k) nu_E)^(i/N)``, ``t_i = inverse_nsr(nu_i)``
  (``k = 3.1`` by default, as the official code; the endpoints are not pinned, the formula is followed).
* ``"time_uniform"``: ``t_i = t_S + (t_E - t_S) i / N``.
* ``"time_quadratic"``: ``t_i = (sqrt(t_S) + (sqrt(t_E) - sqrt(t_S)) i / N)^2``.
* ``"logSNR"``: half log-SNR ``lambda`` uniform, ``t_i = inverse_log_snr(lambda_i)``.
* ``"karras"``: ``nu_i = (nu_S^(1/rho) + (i/N) (nu_E^(1/rho) - nu_S^(1/rho)))^rho`` in NSR
  (= sigma for EDM), ``rho = 7``.

Example:
    >>> import scire_jax as sj
    >>> t = sj.timesteps.time_grid(sj.schedules.linear(), "NSR", 1.0, 1e-3, 10)
    >>> [round(float(v), 6) for v in t[:3]]
    [1.0, 0.914638, 0.820498]
"""

from __future__ import annotations

import numpy as np

__all__ = ["SKIP_TYPES", "NSR_SHIFT", "KARRAS_RHO", "time_grid"]

SKIP_TYPES = ("NSR", "time_uniform", "time_quadratic", "logSNR", "karras")
NSR_SHIFT = 3.1
KARRAS_RHO = 7.0


def time_grid(schedule, skip_type: str, t_start: float, t_end: float, steps: int, *,
              nsr_shift: float = NSR_SHIFT, karras_rho: float = KARRAS_RHO) -> np.ndarray:
    """The ``steps + 1`` times of a sampling grid from ``t_start`` down to ``t_end``.

    Args:
      schedule: a :mod:`scire_jax.core.schedules` schedule.
      skip_type: one of ``SKIP_TYPES``.
      t_start: first (noisiest) time.
      t_end: last time.
      steps: number of intervals ``N >= 1``.
      nsr_shift: ``k`` of the NSR grid.
      karras_rho: ``rho`` of the Karras grid.

    Returns:
      float64 array of shape ``(steps + 1,)``.
    """
    if skip_type not in SKIP_TYPES:
        raise ValueError(f"skip_type={skip_type!r} is not a time grid; allowed: {SKIP_TYPES}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r} is not allowed: it must be an integer >= 1")
    fraction = np.linspace(0.0, 1.0, steps + 1)
    t_start = float(t_start)
    t_end = float(t_end)
    if skip_type == "time_uniform":
        return t_start + (t_end - t_start) * fraction
    if skip_type == "time_quadratic":
        return (np.sqrt(t_start) + (np.sqrt(t_end) - np.sqrt(t_start)) * fraction) ** 2
    if skip_type == "logSNR":
        lam_start = float(schedule.log_snr(np.float64(t_start)))
        lam_end = float(schedule.log_snr(np.float64(t_end)))
        return np.asarray(schedule.inverse_log_snr(lam_start + (lam_end - lam_start) * fraction))
    nsr_start = float(schedule.nsr(np.float64(t_start)))
    nsr_end = float(schedule.nsr(np.float64(t_end)))
    if skip_type == "NSR":
        shift = nsr_shift * nsr_end
        g_start = -np.log(nsr_start + shift)
        g_end = -np.log((1.0 + nsr_shift) * nsr_end)
        nsrs = np.exp(-(g_start + (g_end - g_start) * fraction)) - shift
    else:  # karras
        inv_rho = 1.0 / karras_rho
        nsrs = (nsr_start ** inv_rho + fraction * (nsr_end ** inv_rho - nsr_start ** inv_rho)) ** karras_rho
    return np.asarray(schedule.inverse_nsr(nsrs))
