"""Noise schedules of diffusion models.

A schedule maps continuous time ``t`` to the coefficients of the forward process
``x_t = alpha_t * x_0 + sigma_t * eps``.  Everything a solver needs derives from ``log alpha``:

* ``alpha(t)``, ``sigma(t)`` (VP: ``sigma = sqrt(1 - alpha^2)``, computed as
  ``sqrt(-expm1(2 log alpha))`` so that it stays accurate as ``sigma -> 0``),
* ``nsr(t) = sigma_t / alpha_t``, the noise-to-signal ratio SciRE-Solver integrates in,
  and its inverse ``inverse_nsr``,
* ``log_snr(t) = log(alpha_t / sigma_t)`` (the half log-SNR ``lambda`` of DPM-Solver) and its
  inverse ``inverse_log_snr``.

Every method accepts numpy inputs (then it computes in numpy float64, which is what the host-side
plans use) or JAX arrays (then it computes in ``jnp`` in the input's dtype).

Schedules are frozen, hashable and registered as pytrees without leaves, so they can be closed over,
passed through ``jax.jit`` as ordinary arguments, or used as static arguments.

Example:
    >>> import scire_jax as sj
    >>> schedule = sj.schedules.linear()
    >>> float(schedule.nsr(0.5))  # doctest: +ELLIPSIS
    3.41291830...
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "NoiseSchedule",
    "DiscreteSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "EDMSchedule",
    "discrete",
    "linear",
    "cosine",
    "edm",
    "interpolate",
]

# Network time conventions (docs/design.md, section 4).
TIME_INPUTS = ("discrete", "continuous", "scaled")


def _array_module(*values: Any):
    """numpy (float64 host math) unless any input is a JAX array or tracer."""
    for value in values:
        if isinstance(value, jax.Array):  # tracers are jax.Array instances too
            return jnp
    return np


def _as_array(xp, value):
    if xp is np:
        return np.asarray(value, dtype=np.float64)
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    return value


def interpolate(x, xp_keys, fp_keys):
    """Piecewise-linear interpolation with *linear extrapolation* outside the key points.

    Unlike ``jnp.interp`` (which clamps), values left of ``xp_keys[0]`` or right of
    ``xp_keys[-1]`` continue the first / last segment, as the official ``interpolate_fn`` does.

    Args:
      x: query points, any shape.
      xp_keys: ascending key abscissae, shape ``(K,)`` with ``K >= 2``.
      fp_keys: key ordinates, shape ``(K,)``.

    Returns:
      ``f(x)`` with the shape of ``x``.
    """
    xp = _array_module(x)
    xp_keys = xp.asarray(xp_keys, dtype=None if xp is np else None)
    fp_keys = xp.asarray(fp_keys)
    if xp is jnp:
        x = _as_array(jnp, x)
        xp_keys = xp_keys.astype(x.dtype)
        fp_keys = fp_keys.astype(x.dtype)
    else:
        x = np.asarray(x, dtype=np.float64)
    count = xp_keys.shape[0]
    if xp is np and x.ndim == 0:  # host scalars (plan building): skip clip's dispatch overhead
        index = min(max(int(np.searchsorted(xp_keys, x, side="right")) - 1, 0), count - 2)
    else:
        index = xp.clip(xp.searchsorted(xp_keys, x, side="right") - 1, 0, count - 2)
    x_left = xp_keys[index]
    x_right = xp_keys[index + 1]
    f_left = fp_keys[index]
    f_right = fp_keys[index + 1]
    return f_left + (x - x_left) * (f_right - f_left) / (x_right - x_left)


class NoiseSchedule:
    """Common interface of the noise schedules; subclasses define ``log_alpha`` and its inverse.

    Attributes:
      t_max: the largest time (``T``; sampling starts here by default).
      t_min: the default end time of sampling (``1 / total_N`` for VP schedules).
      total_n: number of training time steps used by the network-time convention.
      default_time_input: network time convention used by :func:`scire_jax.wrap_model` by default.
      name: short name of the schedule family.
    """

    name: str = "abstract"
    total_n: int
    default_time_input: str

    @property
    def t_max(self) -> float:
        return 1.0

    @property
    def t_min(self) -> float:
        return 1.0 / self.total_n

    # -- subclasses ---------------------------------------------------------------------------
    def log_alpha(self, t):
        """``log alpha_t``."""
        raise NotImplementedError

    def _time_from_log_alpha(self, log_alpha):
        raise NotImplementedError

    # -- derived quantities ------------------------------------------------------------------
    def alpha(self, t):
        """Signal coefficient ``alpha_t = exp(log alpha_t)``."""
        xp = _array_module(t)
        return xp.exp(self.log_alpha(t))

    def sigma(self, t):
        """Noise coefficient ``sigma_t = sqrt(1 - alpha_t^2)`` (stable form ``sqrt(-expm1(2 log alpha))``)."""
        xp = _array_module(t)
        return xp.sqrt(-xp.expm1(2.0 * self.log_alpha(t)))

    def log_sigma(self, t):
        """``log sigma_t``."""
        xp = _array_module(t)
        return 0.5 * xp.log(-xp.expm1(2.0 * self.log_alpha(t)))

    def nsr(self, t):
        """Noise-to-signal ratio ``nu(t) = sigma_t / alpha_t`` (a ratio of standard deviations)."""
        return self.sigma(t) / self.alpha(t)

    def log_snr(self, t):
        """Half log-SNR ``lambda(t) = log(alpha_t / sigma_t) = -log nu(t)``."""
        return self.log_alpha(t) - self.log_sigma(t)

    def inverse_nsr(self, nsr):
        """Time ``t`` with ``nu(t) = nsr``: ``log alpha = -log1p(nsr^2) / 2``, then invert ``log alpha``."""
        xp = _array_module(nsr)
        nsr = _as_array(xp, nsr)
        return self._time_from_log_alpha(-0.5 * xp.log1p(nsr * nsr))

    def inverse_log_snr(self, log_snr):
        """Time ``t`` with ``lambda(t) = log_snr``: ``log alpha = -logaddexp(-2 lambda, 0) / 2``."""
        xp = _array_module(log_snr)
        log_snr = _as_array(xp, log_snr)
        return self._time_from_log_alpha(-0.5 * xp.logaddexp(-2.0 * log_snr, 0.0))

    def time_input(self, t, convention: Optional[str] = None, scale: float = 1000.0):
        """Time fed to the network for continuous time ``t``.

        Args:
          t: continuous time.
          convention: ``"discrete"`` -> ``1000 * max(t - 1/total_n, 0)`` (DDPM-trained networks),
            ``"continuous"`` -> ``t``, ``"scaled"`` -> ``scale * t`` (e.g. 999 t for ScoreSDE).
            ``None`` uses ``default_time_input``.
          scale: factor of the ``"scaled"`` convention.
        """
        convention = self.default_time_input if convention is None else convention
        xp = _array_module(t)
        t = _as_array(xp, t)
        if convention == "discrete":
            return 1000.0 * xp.maximum(t - 1.0 / self.total_n, 0.0)
        if convention == "continuous":
            return t
        if convention == "scaled":
            return scale * t
        raise ValueError(f"time_input={convention!r} is not a network time convention; allowed: {TIME_INPUTS}")

    # -- validation ---------------------------------------------------------------------------
    def check_time_range(self, t_start: float, t_end: float) -> None:
        """Raise ``ValueError`` unless ``t_min <= t_end < t_start <= t_max`` hold where they must."""
        if not (isinstance(t_end, (int, float)) and math.isfinite(t_end) and t_end > 0):
            raise ValueError(f"t_end={t_end!r} is not allowed: it must be a finite time > 0")
        if not (isinstance(t_start, (int, float)) and math.isfinite(t_start) and t_start > 0):
            raise ValueError(f"t_start={t_start!r} is not allowed: it must be a finite time > 0")
        if t_end >= t_start:
            raise ValueError(f"t_end={t_end!r} is not allowed: it must be smaller than t_start={t_start!r}")
        if t_start > self.t_max * (1 + 1e-12):
            raise ValueError(f"t_start={t_start!r} is not allowed: it must be <= t_max={self.t_max!r}")

    # -- pytree / hashing ---------------------------------------------------------------------
    def _key(self):
        raise NotImplementedError

    def __hash__(self):
        return hash((type(self).__name__, self._key()))

    def __eq__(self, other):
        return type(self) is type(other) and self._key() == other._key()


def _register(cls):
    jax.tree_util.register_pytree_node(cls, lambda s: ((), s), lambda s, _: s)
    return cls


@_register
@dataclasses.dataclass(frozen=True, eq=False)
class DiscreteSchedule(NoiseSchedule):
    """Schedule of a DDPM-type model trained on ``total_n`` discrete steps.

    ``log alpha`` is piecewise linear through the key points ``(n / N, log alpha_n)``,
    ``n = 1..N``, with linear extrapolation (as the official code).  Times below ``1/N`` can push
    ``alpha`` above 1, so ``t_min = 1/N`` is enforced when a solver is built.
    """

    log_alpha_table: np.ndarray
    name: str = "discrete"

    def __post_init__(self):
        table = np.asarray(self.log_alpha_table, dtype=np.float64)
        table.setflags(write=False)
        object.__setattr__(self, "log_alpha_table", table)

    @property
    def total_n(self) -> int:
        return int(self.log_alpha_table.shape[0])

    @property
    def default_time_input(self) -> str:
        return "discrete"

    @functools.cached_property
    def time_table(self) -> np.ndarray:
        table = np.linspace(0.0, 1.0, self.total_n + 1)[1:]
        table.setflags(write=False)
        return table

    @functools.cached_property
    def _reversed_tables(self):
        # the inverse interpolates over ascending log alpha: the tables reversed, built once
        return np.ascontiguousarray(self.log_alpha_table[::-1]), np.ascontiguousarray(self.time_table[::-1])

    def log_alpha(self, t):
        return interpolate(t, self.time_table, self.log_alpha_table)

    def _time_from_log_alpha(self, log_alpha):
        return interpolate(log_alpha, *self._reversed_tables)

    def check_time_range(self, t_start, t_end):
        super().check_time_range(t_start, t_end)
        if t_end < self.t_min * (1 - 1e-12):
            raise ValueError(
                f"t_end={t_end!r} is not allowed for a discrete schedule of {self.total_n} steps: it must be "
                f">= 1/{self.total_n} = {self.t_min!r} (below the first table time alpha is extrapolated above 1)")

    def _key(self):
        return (self.log_alpha_table.tobytes(), self.name)

    def __repr__(self):
        return f"DiscreteSchedule(total_n={self.total_n})"


@_register
@dataclasses.dataclass(frozen=True, eq=False)
class LinearSchedule(NoiseSchedule):
    """Continuous VP schedule with ``beta(t) = beta_0 + t (beta_1 - beta_0)``.

    ``log alpha_t = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2``; the inverse is the positive root
    ``t = 2 L / (sqrt(beta_0^2 + 2 (beta_1 - beta_0) L) + beta_0)`` with ``L = -2 log alpha``.
    """

    beta_0: float = 0.1
    beta_1: float = 20.0
    total_n: int = 1000
    name: str = "linear"

    @property
    def default_time_input(self) -> str:
        # The official SciRE wrapper feeds 1000 * max(t - 1/N, 0) for the linear schedule.
        return "discrete"

    def log_alpha(self, t):
        xp = _array_module(t)
        t = _as_array(xp, t)
        return -0.25 * t * t * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def _time_from_log_alpha(self, log_alpha):
        xp = _array_module(log_alpha)
        big_l = -2.0 * log_alpha
        return 2.0 * big_l / (xp.sqrt(self.beta_0 ** 2 + 2.0 * (self.beta_1 - self.beta_0) * big_l) + self.beta_0)

    def _key(self):
        return (float(self.beta_0), float(self.beta_1), int(self.total_n))


@_register
@dataclasses.dataclass(frozen=True, eq=False)
class CosineSchedule(NoiseSchedule):
    """Continuous cosine VP schedule (improved DDPM), ``T = 0.9946``.

    ``alpha_t = cos(((t + s) / (1 + s)) pi / 2) / cos((s / (1 + s)) pi / 2)``.  Unlike the
    official code, the inverse works: ``t = (2 (1 + s) / pi) arccos(alpha cos(s pi / (2 (1 + s)))) - s``.
    """

    s: float = 0.008
    t_max: float = 0.9946
    total_n: int = 1000
    name: str = "cosine"

    @property
    def default_time_input(self) -> str:
        return "continuous"

    def _log_alpha_zero(self, xp):
        return xp.log(xp.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def log_alpha(self, t):
        xp = _array_module(t)
        t = _as_array(xp, t)
        return xp.log(xp.cos((t + self.s) / (1.0 + self.s) * math.pi / 2.0)) - self._log_alpha_zero(xp)

    def _time_from_log_alpha(self, log_alpha):
        xp = _array_module(log_alpha)
        return 2.0 * (1.0 + self.s) / math.pi * xp.arccos(xp.exp(log_alpha + self._log_alpha_zero(xp))) - self.s

    def _key(self):
        return (float(self.s), float(self.t_max), int(self.total_n))


@_register
@dataclasses.dataclass(frozen=True, eq=False)
class EDMSchedule(NoiseSchedule):
    """Variance-exploding schedule of EDM (Karras et al. 2022): ``alpha = 1``, ``sigma = t``.

    Here ``nu(t) = t`` and ``inverse_nsr`` is the identity; time is the noise level ``sigma``.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name: str = "edm"
    total_n: int = 1000

    @property
    def t_max(self) -> float:
        return float(self.sigma_max)

    @property
    def t_min(self) -> float:
        return float(self.sigma_min)

    @property
    def default_time_input(self) -> str:
        return "continuous"

    def log_alpha(self, t):
        xp = _array_module(t)
        return xp.zeros_like(_as_array(xp, t))

    def alpha(self, t):
        xp = _array_module(t)
        return xp.ones_like(_as_array(xp, t))

    def sigma(self, t):
        xp = _array_module(t)
        return _as_array(xp, t)

    def log_sigma(self, t):
        xp = _array_module(t)
        return xp.log(_as_array(xp, t))

    def nsr(self, t):
        return self.sigma(t)

    def inverse_nsr(self, nsr):
        xp = _array_module(nsr)
        return _as_array(xp, nsr)

    def inverse_log_snr(self, log_snr):
        xp = _array_module(log_snr)
        return xp.exp(-_as_array(xp, log_snr))

    def _time_from_log_alpha(self, log_alpha):
        raise ValueError("the EDM schedule has alpha = 1 everywhere: time cannot be recovered from alpha")

    def _key(self):
        return (float(self.sigma_min), float(self.sigma_max))


# -- constructors -------------------------------------------------------------------------------------------


def _check_table(name, values, low, high):
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 values, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array <= low) or np.any(array > high):
        raise ValueError(f"{name} must hold finite values in ({low}, {high}]; got min {array.min()!r}, max {array.max()!r}")
    return array


def discrete(betas=None, alphas_cumprod=None, clip_log_snr: Optional[float] = None) -> DiscreteSchedule:
    """Schedule of a discrete-time DDPM from ``betas`` or ``alphas_cumprod`` (exactly one).

    Args:
      betas: ``beta_1 .. beta_N`` in (0, 1).
      alphas_cumprod: ``prod_{i<=n} (1 - beta_i)`` in (0, 1].
      clip_log_snr: if set (DPM-Solver uses -5.1), drop the tail of the table where the half log-SNR
        falls below this value; time is then rescaled to the shorter table (as ``dpm_solver_pytorch``).

    Returns:
      A :class:`DiscreteSchedule` with ``log alpha_n = log(sqrt(alphas_cumprod_n))``.

    Example:
      >>> import numpy as np
      >>> schedule = discrete(betas=np.linspace(1e-4, 0.02, 1000))
      >>> round(float(schedule.nsr(1.0)), 3)
      157.407
    """
    if (betas is None) == (alphas_cumprod is None):
        raise ValueError("discrete(): pass exactly one of betas= or alphas_cumprod=")
    if betas is not None:
        betas = _check_table("betas", betas, 0.0, 1.0 - 1e-300)
        log_alphas = 0.5 * np.cumsum(np.log1p(-betas))
    else:
        alphas_cumprod = _check_table("alphas_cumprod", alphas_cumprod, 0.0, 1.0)
        steps = np.diff(alphas_cumprod)
        if np.any(steps >= 0):
            first = int(np.argmax(steps >= 0))
            raise ValueError(f"alphas_cumprod must be strictly decreasing (noise grows with time), but "
                             f"alphas_cumprod[{first + 1}]={float(alphas_cumprod[first + 1])!r} >= alphas_cumprod[{first}]="
                             f"{float(alphas_cumprod[first])!r}; pass the table in training order (t = 1 .. N)")
        log_alphas = 0.5 * np.log(alphas_cumprod)
    if clip_log_snr is not None and (isinstance(clip_log_snr, bool) or not isinstance(clip_log_snr, (int, float))
                                     or not math.isfinite(clip_log_snr)):
        raise ValueError(f"clip_log_snr={clip_log_snr!r} is not allowed: it must be a finite number (DPM-Solver: -5.1)")
    if clip_log_snr is not None:
        log_sigmas = 0.5 * np.log(-np.expm1(2.0 * log_alphas))
        log_snrs = log_alphas - log_sigmas
        drop = int(np.searchsorted(log_snrs[::-1], clip_log_snr))
        if drop > 0:
            log_alphas = log_alphas[:-drop]
    return DiscreteSchedule(log_alphas)


def linear(beta_0: float = 0.1, beta_1: float = 20.0) -> LinearSchedule:
    """Continuous linear VP schedule (ScoreSDE / DDPM limit). Requires ``0 <= beta_0 < beta_1``."""
    if not (0.0 <= beta_0 < beta_1) or not math.isfinite(beta_1):
        raise ValueError(f"linear(): need 0 <= beta_0 < beta_1 < inf, got beta_0={beta_0!r}, beta_1={beta_1!r}")
    return LinearSchedule(float(beta_0), float(beta_1))


def cosine(s: float = 0.008, t_max: float = 0.9946) -> CosineSchedule:
    """Continuous cosine VP schedule of improved DDPM (``T = 0.9946`` as in the official code)."""
    if not (s > 0 and 0 < t_max < 1):
        raise ValueError(f"cosine(): need s > 0 and 0 < t_max < 1, got s={s!r}, t_max={t_max!r}")
    return CosineSchedule(float(s), float(t_max))


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0) -> EDMSchedule:
    """EDM / VE schedule: ``alpha = 1``, ``sigma = t`` on ``[sigma_min, sigma_max]``."""
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"edm(): need 0 < sigma_min < sigma_max < inf, got {sigma_min!r}, {sigma_max!r}")
    return EDMSchedule(float(sigma_min), float(sigma_max))
