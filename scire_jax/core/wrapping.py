"""Model wrapping: prediction conversions, guidance, network time, dynamic thresholding.

:func:`wrap_model` turns any network ``apply_fn(params, x, t_input, *cond)`` into the noise
predictor ``noise_fn(params, x, t)`` every solver consumes (``t``: continuous time, shape
``(batch,)``).  Conversions to noise, with ``alpha``, ``sigma`` broadcast *per sample*:

=============  ==========================================
prediction     noise prediction ``eps``
=============  ==========================================
``noise``      ``out``
``x_start``    ``(x - alpha out) / sigma``
``v``          ``alpha out + sigma x``
``score``      ``-sigma out``
=============  ==========================================

Guidance: :class:`ClassifierFree` makes ONE network call on the doubled batch (unconditional half
first, as the official code) and returns ``eps_u + s (eps_c - eps_u)``; :class:`Classifier`
returns ``eps - s sigma grad_x sum_b log p(c_b | x_t)`` with the gradient from ``jax.grad``.

Example:
    >>> import jax.numpy as jnp, scire_jax as sj
    >>> schedule = sj.schedules.linear()
    >>> noise_fn = sj.wrap_model(lambda p, x, t: 0.1 * x, schedule, prediction="noise")
    >>> noise_fn(None, jnp.ones((2, 3)), jnp.full((2,), 0.5)).shape
    (2, 3)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

__all__ = [
    "PREDICTIONS",
    "ClassifierFree",
    "Classifier",
    "DynamicThresholding",
    "dynamic_thresholding",
    "WrappedModel",
    "wrap_model",
]

PREDICTIONS = ("noise", "x_start", "v", "score")


def _per_sample(value, x):
    """Broadcast a scalar or a (batch,) vector against x of shape (batch, ...)."""
    value = jnp.asarray(value, dtype=x.dtype)
    if value.ndim == 0:
        return value
    return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def dynamic_thresholding(x0, ratio: float = 0.995, max_value: float = 1.0):
    """Dynamic thresholding of Imagen, per sample.

    ``q_b = max(quantile_ratio(|x0_b|), max_value)``; ``x0_b <- clip(x0_b, -q_b, q_b) / q_b``
    (quantile with linear interpolation, as ``torch.quantile``).

    Args:
      x0: data predictions, shape ``(batch, ...)``.
      ratio: quantile level in (0, 1].
      max_value: lower bound of the threshold.

    Returns:
      The thresholded ``x0``.
    """
    flat = jnp.abs(x0).reshape(x0.shape[0], -1)
    threshold = jnp.quantile(flat, ratio, axis=1, method="linear")
    threshold = jnp.maximum(threshold, jnp.asarray(max_value, x0.dtype))
    threshold = _per_sample(threshold, x0)
    return jnp.clip(x0, -threshold, threshold) / threshold


@dataclasses.dataclass(frozen=True)
class DynamicThresholding:
    """Data-prediction corrector ``x0 -> dynamic_thresholding(x0, ratio, max_value)``.

    Pass as ``thresholding=`` to a solver: it acts wherever the solver forms a data prediction
    (every model call of data-prediction solvers such as SciRE v2 / DPM-Solver++, and the
    ``denoise_to_zero`` step).
    """

    ratio: float = 0.995
    max_value: float = 1.0

    def __post_init__(self):
        if not (0.0 < self.ratio <= 1.0):
            raise ValueError(f"DynamicThresholding ratio={self.ratio!r} is not allowed: it must be in (0, 1]")
        if not (self.max_value > 0.0):
            raise ValueError(f"DynamicThresholding max_value={self.max_value!r} is not allowed: it must be > 0")

    def __call__(self, x0, t=None):
        return dynamic_thresholding(x0, self.ratio, self.max_value)


@dataclasses.dataclass(frozen=True, eq=False)
class ClassifierFree:
    """Classifier-free guidance: ``eps = eps_u + scale (eps_c - eps_u)``.

    Args:
      scale: guidance scale ``s``. With ``s == 1`` or no unconditional condition, one
        conditional call on the plain batch is made.
      condition: conditioning passed to ``apply_fn`` as its 4th argument (batch-leading array or
        pytree of arrays).
      unconditional_condition: the "null" conditioning (same structure).
    """

    scale: float
    condition: Any = None
    unconditional_condition: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class Classifier:
    """Classifier guidance: ``eps = eps - scale sigma grad_x sum_b classifier_fn(x, t_input, condition)_b``.

    Args:
      classifier_fn: ``classifier_fn(x, t_input, condition) -> (batch,)`` log-probabilities of
        ``condition`` given the noisy ``x`` (close over the classifier's parameters).
      scale: guidance scale ``s``.
      condition: class labels (batch-leading).
    """

    classifier_fn: Callable
    scale: float = 1.0
    condition: Any = None


class WrappedModel:
    """A network turned into a noise predictor; call as ``noise_fn(params, x, t)``.

    ``noise(params, x, t, alpha, sigma)`` is the same with the schedule coefficients supplied by
    the caller (the solvers' plans hold them, so no schedule math runs inside the sampling loop).
    """

    def __init__(self, apply_fn, schedule, prediction, time_input, time_input_scale, guidance, network_dtype):
        self.apply_fn = apply_fn
        self.schedule = schedule
        self.prediction = prediction
        self.time_input = time_input
        self.time_input_scale = time_input_scale
        self.guidance = guidance
        self.network_dtype = network_dtype

    def network_time(self, t):
        return self.schedule.time_input(t, self.time_input, self.time_input_scale)

    def _call_network(self, params, x, t_input, *cond):
        if self.network_dtype is not None:
            x_net = x.astype(self.network_dtype)
        else:
            x_net = x
        out = self.apply_fn(params, x_net, t_input, *cond)
        out = jnp.asarray(out)
        if out.shape != x.shape:
            raise ValueError(
                f"apply_fn output has shape {out.shape}, but the model input x has shape {x.shape}: "
                f"the network must return a prediction of x's shape")
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"apply_fn output has dtype {out.dtype}; a floating dtype is required")
        return out.astype(x.dtype)

    def _to_noise(self, out, x, alpha, sigma):
        if self.prediction == "noise":
            return out
        alpha = _per_sample(alpha, x)
        sigma = _per_sample(sigma, x)
        if self.prediction == "x_start":
            return (x - alpha * out) / sigma
        if self.prediction == "v":
            return alpha * out + sigma * x
        return -sigma * out  # score

    def noise(self, params, x, t, alpha, sigma):
        """Noise prediction with known ``alpha_t``, ``sigma_t`` (scalars or (batch,) vectors)."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        t_input = self.network_time(t)
        guidance = self.guidance
        if isinstance(guidance, ClassifierFree):
            # a Python 1.0 needs no unconditional half; a traced scale always takes the batched call
            scale_is_one = isinstance(guidance.scale, (int, float)) and guidance.scale == 1.0
            if scale_is_one or guidance.unconditional_condition is None:
                return self._to_noise(self._call_network(params, x, t_input, guidance.condition), x, alpha, sigma)
            x_in = jnp.concatenate([x, x], axis=0)
            t_in = jnp.concatenate([t_input, t_input], axis=0)
            c_in = jax.tree_util.tree_map(lambda u, c: jnp.concatenate([jnp.asarray(u), jnp.asarray(c)], axis=0),
                                          guidance.unconditional_condition, guidance.condition)
            alpha2 = alpha if jnp.ndim(alpha) == 0 else jnp.concatenate([alpha, alpha])
            sigma2 = sigma if jnp.ndim(sigma) == 0 else jnp.concatenate([sigma, sigma])
            eps = self._to_noise(self._call_network(params, x_in, t_in, c_in), x_in, alpha2, sigma2)
            eps_uncond, eps_cond = jnp.split(eps, 2, axis=0)
            return eps_uncond + guidance.scale * (eps_cond - eps_uncond)
        eps = self._to_noise(self._call_network(params, x, t_input), x, alpha, sigma)
        if isinstance(guidance, Classifier):
            def total_log_prob(x_):
                return jnp.sum(guidance.classifier_fn(x_, t_input, guidance.condition))
            gradient = jax.grad(total_log_prob)(x)
            eps = eps - guidance.scale * _per_sample(sigma, x) * gradient.astype(x.dtype)
        return eps

    def __call__(self, params, x, t):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        return self.noise(params, x, t, self.schedule.alpha(t), self.schedule.sigma(t))

    def __repr__(self):
        return (f"WrappedModel(prediction={self.prediction!r}, time_input={self.time_input!r}, "
                f"guidance={type(self.guidance).__name__ if self.guidance else None})")


def wrap_model(apply_fn: Callable, schedule, prediction: str = "noise", time_input: Optional[str] = None,
               guidance=None, *, time_input_scale: float = 1000.0, network_dtype=None) -> WrappedModel:
    """Wrap a network into the noise predictor ``noise_fn(params, x, t)`` the solvers use.

    Args:
      apply_fn: ``apply_fn(params, x, t_input, *cond) -> prediction`` of x's shape.
      schedule: the noise schedule (supplies alpha, sigma and the network time convention).
      prediction: what the network predicts: ``"noise"``, ``"x_start"``, ``"v"`` or ``"score"``.
      time_input: network time convention: ``"discrete"`` (``1000 max(t - 1/N, 0)``),
        ``"continuous"`` (``t``), ``"scaled"`` (``time_input_scale * t``); ``None`` = the
        schedule's default (matches the official SciRE wrapper).
      guidance: ``None``, :class:`ClassifierFree` or :class:`Classifier`.
      time_input_scale: factor of the ``"scaled"`` convention.
      network_dtype: optional dtype the network input is cast to (e.g. ``jnp.bfloat16``); the
        output is cast back, so the solver arithmetic keeps the state dtype.

    Returns:
      A :class:`WrappedModel`.
    """
    from scire_jax.core.schedules import TIME_INPUTS, NoiseSchedule

    if not callable(apply_fn):
        raise ValueError(f"apply_fn={apply_fn!r} is not callable")
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule={schedule!r} is not a scire_jax.core.schedules schedule")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction={prediction!r} is not supported; allowed: {PREDICTIONS}")
    if time_input is not None and time_input not in TIME_INPUTS:
        raise ValueError(f"time_input={time_input!r} is not supported; allowed: None or {TIME_INPUTS}")
    if guidance is not None and not isinstance(guidance, (ClassifierFree, Classifier)):
        raise ValueError(f"guidance={guidance!r} is not supported; allowed: None, sj.ClassifierFree(...), sj.Classifier(...)")
    if isinstance(guidance, Classifier) and not callable(guidance.classifier_fn):
        raise ValueError("guidance=Classifier(classifier_fn=...) needs a callable classifier_fn")
    return WrappedModel(apply_fn, schedule, prediction, time_input, time_input_scale, guidance, network_dtype)
