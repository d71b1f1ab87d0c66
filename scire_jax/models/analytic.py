"""Analytic diffusion "models" whose noise prediction is exact, and the exact probability-flow ODE.

For data with a known density the optimal noise predictor of the forward process
``x_t = alpha_t x_0 + sigma_t eps`` is ``eps(x, t) = -sigma_t grad_x log p_t(x)`` in closed form.
Such models need no network, so they let tests and benchmarks measure the true error of a sampler:

* :class:`Gaussian` -- diagonal Gaussian data ``x_0 ~ N(m, diag(s^2))`` of any sample shape::

      eps(x, t) = sigma (x - alpha m) / (alpha^2 s^2 + sigma^2)

* :class:`GaussianMixture` -- ``x_0 ~ sum_k w_k N(m_k, diag(s_k^2))``.  With
  ``v_k = alpha^2 s_k^2 + sigma^2``, ``d_k = x - alpha m_k`` (all per element) and the
  responsibilities ``r = softmax_k(logit_k)``,
  ``logit_k = log w_k - 1/2 sum_D (d_k^2 / v_k + log v_k)``::

      eps(x, t) = sigma sum_k r_k d_k / v_k

* :class:`ConditionalGaussians` -- class-conditional Gaussians: condition ``c in 1..C`` selects
  ``N(m_c, diag(s_c^2))``, condition ``0`` the mixture of all of them;
  :meth:`ConditionalGaussians.log_prob_condition` is the exact classifier ``log p(c | x_t)``.

* :class:`Product` -- independent models side by side (block-diagonal): the state is the
  concatenation of the components' flattened states and every block's noise prediction is its
  component's formula, so a linear solver evolves each block as if it were solved alone (up to round-off).

``alpha = schedule.alpha(t)`` and ``sigma = schedule.sigma(t)`` come from any schedule of
:mod:`scire_jax.core.schedules` (per sample when ``t`` has shape ``(batch,)``).  :func:`coefficient_model_fn`
also lets the caller supply ``alpha`` and ``sigma`` (e.g. a plan's host-computed coefficients).  The models are frozen,
hashable, and registered as pytrees *without leaves*: pass them to ``jax.jit`` as ordinary or static
arguments; their parameters become constants of the trace, cast to the dtype of ``x``.

Ground truth of the probability-flow ODE.  In the SciRE variables ``y = x / alpha``,
``nu = sigma / alpha`` the ODE is ``dy/dnu = eps(alpha(t) y, t)`` with ``t = nu^{-1}(nu)``.

* :func:`gaussian_flow` -- closed form for Gaussian data: ``(x - alpha m) / sqrt(alpha^2 s^2 + sigma^2)``
  is constant along the flow.
* :func:`reference_solution` -- adaptive high-order integration with ``diffrax`` (Dopri8, tight
  tolerances, float64) in ``u = log nu``: ``dy/du = nu eps(alpha y, t(nu))``.

Example:
    >>> import jax, numpy as np
    >>> import scire_jax as sj
    >>> from scire_jax.models import analytic
    >>> model = analytic.Gaussian(mean=np.zeros(4), std=np.full(4, 0.5))
    >>> noise_fn = analytic.model_fn(model, sj.schedules.linear())
    >>> x = analytic.prior_sample(jax.random.PRNGKey(0), (2, 4))
    >>> noise_fn(None, x, jax.numpy.ones(2)).shape
    (2, 4)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Gaussian",
    "GaussianMixture",
    "ConditionalGaussians",
    "Product",
    "AnalyticModel",
    "from_manifest",
    "model_fn",
    "coefficient_model_fn",
    "raw_model_fn",
    "classifier_fn",
    "sample_data",
    "prior_sample",
    "gaussian_flow",
    "reference_solution",
    "ode_solution",
    "SOLVERS",
]

#: ``solver=`` names accepted by :func:`reference_solution`.
SOLVERS = ("dopri8", "tsit5", "dopri5")


# -- helpers ------------------------------------------------------------------------------------------


def _frozen_array(value, name: str, min_ndim: int = 0) -> np.ndarray:
    array = np.array(value, dtype=np.float64)
    if array.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    array.setflags(write=False)
    return array


def _positive(array: np.ndarray, name: str) -> None:
    if np.any(array <= 0):
        raise ValueError(f"{name} must be > 0 everywhere, got min {array.min()!r}")


def _as_float(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _coefficients(schedule, x: jax.Array, t) -> tuple[jax.Array, jax.Array]:
    """``alpha_t``, ``sigma_t`` of shape ``(batch, 1, ..., 1)`` in the dtype of ``x``."""
    t = jnp.asarray(t, dtype=x.dtype)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, x.shape[:1])
    if t.shape != x.shape[:1]:
        raise ValueError(f"t must be a scalar or have shape (batch,) = {x.shape[:1]}, got {t.shape}")
    alpha = jnp.asarray(schedule.alpha(t), dtype=x.dtype)
    sigma = jnp.asarray(schedule.sigma(t), dtype=x.dtype)
    expand = (-1,) + (1,) * (x.ndim - 1)
    return alpha.reshape(expand), sigma.reshape(expand)


def _mixture_terms(x, alpha, sigma, log_weights, means, stds):
    """Per-component quantities of a diagonal mixture for a batch ``x`` of shape ``(B, *shape)``.

    Returns ``(logits (B, K), scaled (B, K, D))`` with ``scaled_k = d_k / v_k``.
    """
    dtype = x.dtype
    batch = x.shape[0]
    flat_x = x.reshape(batch, 1, -1)
    count = means.shape[0]
    flat_means = jnp.asarray(means, dtype).reshape(1, count, -1)
    flat_stds = jnp.asarray(stds, dtype).reshape(1, count, -1)
    alpha = alpha.reshape(batch, 1, 1)
    sigma = sigma.reshape(batch, 1, 1)
    variance = (alpha * flat_stds) ** 2 + sigma**2  # v_k, (B, K, D)
    diff = flat_x - alpha * flat_means  # d_k
    logits = jnp.asarray(log_weights, dtype)[None, :] - 0.5 * jnp.sum(diff * diff / variance + jnp.log(variance), axis=-1)
    return logits, diff / variance


def _array_key(*arrays: np.ndarray):
    return tuple((a.shape, a.tobytes()) for a in arrays)


def _register(cls):
    jax.tree_util.register_pytree_node(cls, lambda m: ((), m), lambda m, _: m)
    return cls


class AnalyticModel:
    """Common interface: ``noise(x, t, schedule)`` and ``shape`` (the shape of one sample)."""

    shape: tuple

    def noise(self, x, t, schedule):  # pragma: no cover - interface
        raise NotImplementedError

    def _key(self):  # pragma: no cover - interface
        raise NotImplementedError

    def __hash__(self):
        return hash((type(self).__name__, self._key()))

    def __eq__(self, other):
        return type(self) is type(other) and self._key() == other._key()


# -- models ----------------------------------------------------------------------------------------


@_register
@dataclasses.dataclass(frozen=True, eq=False)
class Gaussian(AnalyticModel):
    """Diagonal Gaussian data ``x_0 ~ N(mean, diag(std^2))`` of any sample shape.

    The marginal at time ``t`` is ``N(alpha m, alpha^2 s^2 + sigma^2)`` per element, so the exact noise
    prediction ``-sigma grad log p_t`` is

    .. math:: \\epsilon(x, t) = \\frac{\\sigma_t (x - \\alpha_t m)}{\\alpha_t^2 s^2 + \\sigma_t^2}.

    Attributes:
      mean: mean of the data, shape = one sample's shape.
      std: standard deviation per element (> 0), broadcast to ``mean``'s shape.
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self):
        mean = _frozen_array(self.mean, "mean")
        std = _frozen_array(np.broadcast_to(np.asarray(self.std, np.float64), mean.shape), "std")
        _positive(std, "std")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def shape(self) -> tuple:
        """Shape of one data sample."""
        return tuple(self.mean.shape)

    def noise(self, x, t, schedule) -> jax.Array:
        """Exact noise prediction.

        Args:
          x: noisy samples, shape ``(batch, *shape)``.
          t: continuous time, scalar or shape ``(batch,)``.
          schedule: a noise schedule of :mod:`scire_jax.core.schedules`.

        Returns:
          ``eps(x, t)`` with the shape and dtype of ``x``.
        """
        x = _as_float(x)
        alpha, sigma = _coefficients(schedule, x, t)
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        return sigma * (x - alpha * mean) / ((alpha * std) ** 2 + sigma**2)

    def _key(self):
        return _array_key(self.mean, self.std)

    def __repr__(self):
        return f"Gaussian(shape={self.shape})"


@_register
@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture(AnalyticModel):
    """Mixture of diagonal Gaussians ``x_0 ~ sum_k w_k N(m_k, diag(s_k^2))``.

    With ``v_k = alpha^2 s_k^2 + sigma^2``, ``d_k = x - alpha m_k`` (per element), the log-responsibility
    logits ``logit_k = log w_k - 1/2 sum_D (d_k^2 / v_k + log v_k)`` and ``r = softmax_k(logit)``
    (computed stably by ``jax.nn.softmax``), the exact noise prediction is

    .. math:: \\epsilon(x, t) = \\sigma_t \\sum_k r_k(x, t) \\, d_k / v_k .

    Attributes:
      weights: mixture weights ``(K,)``, > 0 (normalised internally by the softmax).
      means: component means ``(K, *shape)``.
      stds: component standard deviations ``(K, *shape)`` (broadcast), > 0.
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    def __post_init__(self):
        weights = _frozen_array(self.weights, "weights", 1)
        means = _frozen_array(self.means, "means", 1)
        if weights.ndim != 1 or means.shape[0] != weights.shape[0]:
            raise ValueError(f"weights must have shape (K,) and means (K, *shape); got {weights.shape}, {means.shape}")
        stds = _frozen_array(np.broadcast_to(np.asarray(self.stds, np.float64), means.shape), "stds")
        _positive(weights, "weights")
        _positive(stds, "stds")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)

    @property
    def shape(self) -> tuple:
        """Shape of one data sample."""
        return tuple(self.means.shape[1:])

    @property
    def num_components(self) -> int:
        return int(self.weights.shape[0])

    def component(self, k: int) -> Gaussian:
        """The ``k``-th component (0-based) as a :class:`Gaussian`."""
        return Gaussian(self.means[k], self.stds[k])

    def logits(self, x, t, schedule) -> jax.Array:
        """Unnormalised log-responsibilities ``logit_k(x, t)``, shape ``(batch, K)``.

        ``log p(k | x_t) = log_softmax_k(logit)``.  The constant ``-D/2 log(2 pi)`` is omitted.
        """
        x = _as_float(x)
        alpha, sigma = _coefficients(schedule, x, t)
        logits, _ = _mixture_terms(x, alpha, sigma, np.log(self.weights), self.means, self.stds)
        return logits

    def log_responsibilities(self, x, t, schedule) -> jax.Array:
        """``log p(k | x_t)`` for every component, shape ``(batch, K)``."""
        return jax.nn.log_softmax(self.logits(x, t, schedule), axis=-1)

    def noise(self, x, t, schedule) -> jax.Array:
        """Exact noise prediction (see the class docstring); shape and dtype of ``x``.

        Args:
          x: noisy samples ``(batch, *shape)``.
          t: continuous time, scalar or ``(batch,)``.
          schedule: a noise schedule of :mod:`scire_jax.core.schedules`.
        """
        x = _as_float(x)
        alpha, sigma = _coefficients(schedule, x, t)
        logits, scaled = _mixture_terms(x, alpha, sigma, np.log(self.weights), self.means, self.stds)
        resp = jax.nn.softmax(logits, axis=-1)
        eps = sigma.reshape(-1, 1) * jnp.einsum("bk,bkd->bd", resp, scaled)
        return eps.reshape(x.shape)

    def _key(self):
        return _array_key(self.weights, self.means, self.stds)

    def __repr__(self):
        return f"GaussianMixture(K={self.num_components}, shape={self.shape})"


@_register
@dataclasses.dataclass(frozen=True, eq=False)
class ConditionalGaussians(AnalyticModel):
    """Class-conditional Gaussian data, for guidance tests.

    Condition id ``c in 1..C`` selects ``x_0 | c ~ N(means[c-1], diag(stds[c-1]^2))``; id ``0`` (the
    unconditional / null condition) is the mixture ``sum_c weights[c-1] N(means[c-1], diag(stds[c-1]^2))``.
    The noise prediction is the :class:`Gaussian` or :class:`GaussianMixture` formula of the selected
    distribution, and :meth:`log_prob_condition` is the exact classifier
    ``log p(c | x_t) = log_softmax_c(logit_c)`` of the mixture.

    Attributes:
      weights: class probabilities ``(C,)``, > 0.
      means: class means ``(C, *shape)``.
      stds: class standard deviations ``(C, *shape)`` (broadcast), > 0.
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    def __post_init__(self):
        mixture = GaussianMixture(self.weights, self.means, self.stds)
        object.__setattr__(self, "weights", mixture.weights)
        object.__setattr__(self, "means", mixture.means)
        object.__setattr__(self, "stds", mixture.stds)

    @property
    def shape(self) -> tuple:
        return tuple(self.means.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.weights.shape[0])

    @property
    def mixture(self) -> GaussianMixture:
        """The unconditional distribution (condition id 0)."""
        return GaussianMixture(self.weights, self.means, self.stds)

    def conditional(self, condition: int) -> AnalyticModel:
        """The distribution of condition id ``condition`` (0: the mixture, ``c``: a :class:`Gaussian`)."""
        condition = int(condition)
        if not 0 <= condition <= self.num_classes:
            raise ValueError(f"condition={condition} is not allowed: it must be in 0..{self.num_classes}")
        return self.mixture if condition == 0 else Gaussian(self.means[condition - 1], self.stds[condition - 1])

    def _condition(self, x, condition):
        if condition is None:
            condition = 0
        condition = jnp.asarray(condition, dtype=jnp.int32)
        if condition.ndim == 0:
            condition = jnp.broadcast_to(condition, x.shape[:1])
        if condition.shape != x.shape[:1]:
            raise ValueError(f"condition must be a scalar or have shape (batch,) = {x.shape[:1]}, got {condition.shape}")
        return condition

    def noise(self, x, t, schedule, condition=None) -> jax.Array:
        """Exact noise prediction of the distribution selected by ``condition``.

        Args:
          x: noisy samples ``(batch, *shape)``.
          t: continuous time, scalar or ``(batch,)``.
          schedule: a noise schedule of :mod:`scire_jax.core.schedules`.
          condition: integer ids, scalar or ``(batch,)``: 0 (or None) = the mixture, ``c`` = class ``c``.
            Ids outside ``0..C`` are clipped into range under ``jit``.

        Returns:
          ``eps(x, t | c)`` with the shape and dtype of ``x``.
        """
        x = _as_float(x)
        condition = self._condition(x, condition)
        alpha, sigma = _coefficients(schedule, x, t)
        logits, scaled = _mixture_terms(x, alpha, sigma, np.log(self.weights), self.means, self.stds)
        sigma = sigma.reshape(-1, 1)
        resp = jax.nn.softmax(logits, axis=-1)
        mixture = jnp.einsum("bk,bkd->bd", resp, scaled)
        index = jnp.clip(condition - 1, 0, self.num_classes - 1)
        single = jnp.take_along_axis(scaled, index[:, None, None], axis=1)[:, 0, :]
        eps = sigma * jnp.where((condition == 0)[:, None], mixture, single)
        return eps.reshape(x.shape)

    def log_prob_condition(self, x, t, schedule, condition) -> jax.Array:
        """Exact classifier ``log p(c | x_t)`` per sample, shape ``(batch,)``.

        ``log p(c | x_t) = log_softmax(logit)[c - 1]`` with the mixture logits
        ``logit_c = log w_c - 1/2 sum_D (d_c^2 / v_c + log v_c)``.  Condition id 0 (no class) gives 0.
        """
        x = _as_float(x)
        condition = self._condition(x, condition)
        log_resp = self.mixture.log_responsibilities(x, t, schedule)
        index = jnp.clip(condition - 1, 0, self.num_classes - 1)
        picked = jnp.take_along_axis(log_resp, index[:, None], axis=1)[:, 0]
        return jnp.where(condition == 0, jnp.zeros_like(picked), picked)

    def _key(self):
        return _array_key(self.weights, self.means, self.stds)

    def __repr__(self):
        return f"ConditionalGaussians(C={self.num_classes}, shape={self.shape})"


@_register
@dataclasses.dataclass(frozen=True, eq=False)
class Product(AnalyticModel):
    """Independent analytic models side by side: the block-diagonal (product) distribution.

    ``x_0 = concat(flatten(x_0^1), ..., flatten(x_0^n))`` with the blocks independent,
    ``x_0^i ~ models[i]``.  The state of one sample is flat, ``shape = (sum_i size_i,)``, and the
    exact noise prediction of block ``i`` is ``models[i].noise`` (its own formula) on that block::

        eps(x, t) = concat_i( flatten( models[i].noise(x^i, t) ) )

    Block ``i`` of the prediction only reads block ``i`` of the state, and every solver of
    :mod:`scire_jax.core.solvers` combines states and model outputs with x-independent, elementwise
    coefficients, so solving the product evolves each block as solving its model alone would (the
    same arithmetic per element).  Many problems then run in one solve.

    Attributes:
      models: the component models (:class:`Gaussian`, :class:`GaussianMixture`, ... or a nested
        :class:`Product`); a :class:`ConditionalGaussians` component uses its mixture (condition 0).
    """

    models: tuple

    def __post_init__(self):
        models = tuple(self.models)
        if not models:
            raise ValueError("Product needs at least one model")
        for model in models:
            if not isinstance(model, AnalyticModel):
                raise ValueError(f"Product components must be analytic models, got {type(model).__name__}")
        object.__setattr__(self, "models", models)

    @property
    def sizes(self) -> tuple:
        """Number of elements of one sample of each component."""
        return tuple(int(np.prod(model.shape, dtype=np.int64)) for model in self.models)

    @property
    def offsets(self) -> tuple:
        """Start of each component's block in the flat state."""
        return tuple(int(v) for v in np.cumsum((0,) + self.sizes[:-1]))

    @property
    def shape(self) -> tuple:
        """Shape of one (flat) sample: ``(sum of the components' sizes,)``."""
        return (int(sum(self.sizes)),)

    def split(self, x) -> list:
        """The components' states of a flat batch ``x`` ``(batch, size)``: ``[(batch, *models[i].shape), ...]``."""
        return [x[:, offset:offset + size].reshape((x.shape[0],) + tuple(model.shape))
                for model, offset, size in zip(self.models, self.offsets, self.sizes)]

    def join(self, parts) -> jax.Array:
        """The flat batch ``(batch, size)`` of the components' states (inverse of :meth:`split`)."""
        parts = list(parts)
        if len(parts) != len(self.models):
            raise ValueError(f"Product.join needs {len(self.models)} parts, got {len(parts)}")
        batch = parts[0].shape[0]
        for part, model in zip(parts, self.models):
            if tuple(part.shape) != (batch,) + tuple(model.shape):
                raise ValueError(f"Product.join: a part has shape {tuple(part.shape)}, expected "
                                 f"{(batch,) + tuple(model.shape)}")
        return jnp.concatenate([jnp.reshape(part, (batch, -1)) for part in parts], axis=1)

    def noise(self, x, t, schedule) -> jax.Array:
        """Exact noise prediction: each block by its component's formula; shape and dtype of ``x``.

        Args:
          x: noisy samples ``(batch, size)`` (the flat concatenation, see :meth:`join`).
          t: continuous time, scalar or ``(batch,)``.
          schedule: a noise schedule (or any object with ``alpha(t)`` and ``sigma(t)``).
        """
        x = _as_float(x)
        if x.ndim != 2 or x.shape[1] != self.shape[0]:
            raise ValueError(f"x must have shape (batch, {self.shape[0]}), got {x.shape}")
        parts = [_call_noise(model, part, t, schedule, None) for model, part in zip(self.models, self.split(x))]
        return self.join(parts).astype(x.dtype)

    def _key(self):
        return tuple((type(model).__name__, model._key()) for model in self.models)

    def __repr__(self):
        return f"Product({', '.join(repr(model) for model in self.models)})"


Model = Union[Gaussian, GaussianMixture, ConditionalGaussians, Product]


def from_manifest(model_dict: Mapping[str, Any]) -> Model:
    """Build a model from a ``models`` entry of the reference ``manifest.json``.

    Args:
      model_dict: ``{"kind": "gaussian", "mean", "std"}``, ``{"kind": "gmm", "weights", "means", "stds"}``
        or ``{"kind": "conditional_gaussians", "weights", "means", "stds"}`` (nested lists or arrays);
        other keys (``shape``, ``definition``, ...) are ignored except that ``shape``, when present, is checked.

    Returns:
      A :class:`Gaussian`, :class:`GaussianMixture` or :class:`ConditionalGaussians`.
    """
    kind = model_dict.get("kind")
    if kind == "gaussian":
        model = Gaussian(model_dict["mean"], model_dict["std"])
    elif kind == "gmm":
        model = GaussianMixture(model_dict["weights"], model_dict["means"], model_dict["stds"])
    elif kind == "conditional_gaussians":
        model = ConditionalGaussians(model_dict["weights"], model_dict["means"], model_dict["stds"])
    else:
        raise ValueError(f"model kind={kind!r} is not supported; allowed: 'gaussian', 'gmm', 'conditional_gaussians'")
    if "shape" in model_dict and tuple(model_dict["shape"]) != model.shape:
        raise ValueError(f"model shape {model.shape} does not match the declared shape {tuple(model_dict['shape'])}")
    return model


# -- adapters to the library's calling conventions -------------------------------------------------------


def _call_noise(model, x, t, schedule, condition):
    if isinstance(model, ConditionalGaussians):
        return model.noise(x, t, schedule, condition)
    if condition is not None:
        raise ValueError(f"{type(model).__name__} takes no condition")
    return model.noise(x, t, schedule)


def model_fn(model: Model, schedule, condition=None) -> Callable:
    """The exact model as the solver calls it: ``noise_fn(params, x, t) -> eps``.

    Args:
      model: an analytic model.
      schedule: the noise schedule that defines ``alpha_t``, ``sigma_t``.
      condition: default condition id(s) for a :class:`ConditionalGaussians` (None = the mixture).

    Returns:
      ``noise_fn(params, x, t, condition=<default>)``; ``params`` is ignored (pass None), ``t`` is the
      continuous time of shape ``(batch,)`` (or a scalar); the result has ``x``'s shape and dtype.
      ``condition`` may only be given for conditional models.
    """

    def noise_fn(params, x, t, condition=condition):
        del params
        return _call_noise(model, x, t, schedule, condition)

    return noise_fn


class _GivenCoefficients:
    """A stand-in schedule whose ``alpha(t)``, ``sigma(t)`` are given values (broadcast to ``t``'s shape)."""

    def __init__(self, alpha, sigma):
        self._alpha = alpha
        self._sigma = sigma

    def alpha(self, t):
        return jnp.broadcast_to(jnp.asarray(self._alpha), jnp.shape(t))

    def sigma(self, t):
        return jnp.broadcast_to(jnp.asarray(self._sigma), jnp.shape(t))


def coefficient_model_fn(model: Model, schedule=None, condition=None) -> Callable:
    """The exact model with caller-supplied coefficients: ``noise_fn.noise(params, x, t, alpha, sigma)``.

    The executor (:func:`scire_jax.execute`) calls ``noise_fn.noise`` when it exists, passing the
    plan's host-computed ``alpha`` and ``sigma`` of every evaluation, so the model is evaluated with
    exactly the coefficients the solver used -- and needs no schedule (one compiled solve then serves
    plans of several schedules).  The formulas are the models' own (``model.noise``), evaluated with
    ``alpha`` and ``sigma`` in place of ``schedule.alpha(t)``, ``schedule.sigma(t)``.

    Args:
      model: an analytic model (e.g. a :class:`Product` of several problems).
      schedule: optional schedule for the plain call ``noise_fn(params, x, t)`` (as :func:`model_fn`);
        without one the plain call raises.
      condition: default condition id(s) for a :class:`ConditionalGaussians`.

    Returns:
      ``noise_fn(params, x, t)`` with the attribute ``noise_fn.noise(params, x, t, alpha, sigma)``
      (``alpha``, ``sigma``: scalars or ``(batch,)``; ``t`` is passed through and unused by the formulas).
    """

    def noise_fn(params, x, t, condition=condition):
        del params
        if schedule is None:
            raise ValueError("this noise_fn has no schedule: call noise_fn.noise(params, x, t, alpha, sigma), "
                             "or build it with coefficient_model_fn(model, schedule)")
        return _call_noise(model, x, t, schedule, condition)

    def noise(params, x, t, alpha, sigma, condition=condition):
        del params
        x = _as_float(x)
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        return _call_noise(model, x, t, _GivenCoefficients(alpha, sigma), condition)

    noise_fn.noise = noise
    return noise_fn


def _continuous_time(schedule, t_input, time_input: Optional[str], scale: float):
    convention = schedule.default_time_input if time_input is None else time_input
    if convention == "discrete":
        return t_input / 1000.0 + 1.0 / schedule.total_n
    if convention == "continuous":
        return t_input
    if convention == "scaled":
        return t_input / scale
    raise ValueError(f"time_input={convention!r} is not allowed; allowed: 'discrete', 'continuous', 'scaled'")


def raw_model_fn(model: Model, schedule, prediction: str = "noise", time_input: Optional[str] = None,
                 scale: float = 1000.0) -> Callable:
    """The exact model as a *network* would be: ``apply_fn(params, x, t_input, condition=None)``.

    For testing model wrappers.  ``t_input`` is the network time (see
    :meth:`scire_jax.core.schedules.NoiseSchedule.time_input`); it is mapped back to continuous time
    (``"discrete"``: ``t = t_input / 1000 + 1 / total_n``, valid for ``t >= 1 / total_n``;
    ``"continuous"``: ``t = t_input``; ``"scaled"``: ``t = t_input / scale``) and the exact ``eps`` is
    converted to ``prediction``: ``"noise"`` -> ``eps``, ``"x_start"`` -> ``(x - sigma eps) / alpha``,
    ``"v"`` -> ``(eps - sigma x) / alpha`` (``= alpha eps - sigma x0``), ``"score"`` -> ``-eps / sigma``.
    """
    if prediction not in ("noise", "x_start", "v", "score"):
        raise ValueError(f"prediction={prediction!r} is not allowed; allowed: 'noise', 'x_start', 'v', 'score'")

    def apply_fn(params, x, t_input, condition=None):
        del params
        x = _as_float(x)
        t = _continuous_time(schedule, jnp.asarray(t_input, x.dtype), time_input, scale)
        eps = _call_noise(model, x, t, schedule, condition)
        if prediction == "noise":
            return eps
        alpha, sigma = _coefficients(schedule, x, t)
        if prediction == "x_start":
            return (x - sigma * eps) / alpha
        if prediction == "v":
            return (eps - sigma * x) / alpha
        return -eps / sigma

    return apply_fn


def classifier_fn(model: ConditionalGaussians, schedule, time_input: Optional[str] = "continuous",
                  scale: float = 1000.0) -> Callable:
    """Exact classifier ``fn(x, t, condition) -> log p(condition | x_t)`` of shape ``(batch,)``.

    ``t`` is interpreted with ``time_input`` (default ``"continuous"``; pass None for the schedule's
    network convention, as a classifier called with the network time ``t_input`` would need).
    """
    if not isinstance(model, ConditionalGaussians):
        raise ValueError(f"classifier_fn needs a ConditionalGaussians model, got {type(model).__name__}")

    def log_prob(x, t, condition):
        x = _as_float(x)
        t = _continuous_time(schedule, jnp.asarray(t, x.dtype), time_input, scale)
        return model.log_prob_condition(x, t, schedule, condition)

    return log_prob


# -- sampling -------------------------------------------------------------------------------------------


def prior_sample(key, shape, dtype=None) -> jax.Array:
    """Standard normal ``x_T`` of ``shape`` (the VP prior; multiply by ``sigma_max`` for VE/EDM)."""
    return jax.random.normal(key, shape, dtype=jnp.result_type(float) if dtype is None else dtype)


def sample_data(model: Model, key, n: int, condition: Optional[int] = None, dtype=None) -> jax.Array:
    """Draw ``n`` exact data samples ``x_0``, shape ``(n, *model.shape)``.

    Args:
      model: an analytic model.
      key: a PRNG key.
      n: number of samples.
      condition: for :class:`ConditionalGaussians`, a class id (0 / None = the mixture).
      dtype: float dtype (default: JAX's default float).
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    if isinstance(model, ConditionalGaussians):
        model = model.conditional(0 if condition is None else condition)  # pyright: ignore[reportAssignmentType]
    elif condition is not None:
        raise ValueError(f"{type(model).__name__} takes no condition")
    if isinstance(model, Gaussian):
        noise = jax.random.normal(key, (n,) + model.shape, dtype)
        return jnp.asarray(model.mean, dtype) + jnp.asarray(model.std, dtype) * noise
    key_k, key_x = jax.random.split(key)
    index = jax.random.categorical(key_k, jnp.log(jnp.asarray(model.weights, dtype)), shape=(n,))
    noise = jax.random.normal(key_x, (n,) + model.shape, dtype)
    return jnp.asarray(model.means, dtype)[index] + jnp.asarray(model.stds, dtype)[index] * noise


# -- ground truth of the probability-flow ODE ---------------------------------------------------------------


def _host_coefficients(schedule, t: float) -> tuple[float, float]:
    t = np.float64(t)
    return float(schedule.alpha(t)), float(schedule.sigma(t))


def gaussian_flow(model: Gaussian, schedule, x_start, t_start: float, t_end: float) -> jax.Array:
    """Exact probability-flow ODE solution for Gaussian data.

    With ``y = x / alpha``, ``nu = sigma / alpha`` the flow is ``dy/dnu = nu (y - m) / (s^2 + nu^2)``,
    whose solution keeps ``(y - m) / sqrt(s^2 + nu^2)`` -- equivalently
    ``z = (x - alpha m) / sqrt(alpha^2 s^2 + sigma^2)`` -- constant. Hence

    .. math:: x_{end} = \\alpha_e m + \\sqrt{\\alpha_e^2 s^2 + \\sigma_e^2}\\;
              \\frac{x_{start} - \\alpha_s m}{\\sqrt{\\alpha_s^2 s^2 + \\sigma_s^2}} .

    Args:
      model: a :class:`Gaussian` (or a class of :class:`ConditionalGaussians` via ``.conditional(c)``).
      schedule: the noise schedule.
      x_start: samples at ``t_start``, shape ``(batch, *shape)``.
      t_start, t_end: start / end times (either order; the flow is reversible).

    Returns:
      ``x`` at ``t_end`` in the dtype of ``x_start`` (coefficients computed in float64 on the host).
    """
    if not isinstance(model, Gaussian):
        raise ValueError(f"gaussian_flow needs a Gaussian model, got {type(model).__name__}")
    x = _as_float(x_start)
    alpha_s, sigma_s = _host_coefficients(schedule, t_start)
    alpha_e, sigma_e = _host_coefficients(schedule, t_end)
    mean = np.asarray(model.mean)
    var = model.std**2
    scale = np.sqrt(alpha_e**2 * var + sigma_e**2) / np.sqrt(alpha_s**2 * var + sigma_s**2)
    z_shift = alpha_s * mean
    return (jnp.asarray(alpha_e * mean, x.dtype) + jnp.asarray(scale, x.dtype) * (x - jnp.asarray(z_shift, x.dtype)))


def _diffrax_solver(name: str):
    import diffrax

    table = {"dopri8": diffrax.Dopri8, "tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
    if name not in table:
        raise ValueError(f"solver={name!r} is not allowed; allowed: {SOLVERS}")
    return table[name]()


def _worst_sample_rms(error) -> jax.Array:
    """Step-size norm: the largest per-sample RMS, so every sample meets the tolerance on its own."""
    error = error.reshape(error.shape[0], -1)
    return jnp.max(jnp.sqrt(jnp.mean(error * error, axis=-1)))


@functools.partial(jax.jit, static_argnames=("model", "schedule", "solver", "rtol", "atol", "max_steps"))
def _integrate(y_start, condition, u_start, u_end, *, model, schedule, solver, rtol, atol, max_steps):
    import diffrax

    def vector_field(u, y, condition):
        nu = jnp.exp(u)
        t = schedule.inverse_nsr(nu)
        alpha = schedule.alpha(t)
        eps = _call_noise(model, alpha * y, jnp.broadcast_to(t, y.shape[:1]), schedule, condition)
        return nu * eps

    controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=_worst_sample_rms)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), _diffrax_solver(solver), t0=u_start, t1=u_end, dt0=None, y0=y_start,
        args=condition, stepsize_controller=controller, saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    return solution.ys[0], solution.stats["num_steps"]  # pyright: ignore[reportOptionalSubscript]


def reference_solution(model: Model, schedule, x_start, t_start: float, t_end: float, rtol: float = 1e-10,
                       atol: float = 1e-10, solver: str = "dopri8", max_steps: int = 100_000, condition=None,
                       return_steps: bool = False):
    """Probability-flow ODE solution by adaptive high-order integration (``diffrax``), in float64.

    Integrates in ``u = log nu`` (``nu = sigma / alpha``) the SciRE form of the probability-flow ODE,

    .. math:: \\frac{dy}{du} = \\nu \\, \\epsilon(\\alpha(t) y, t), \\quad t = \\nu^{-1}(e^u), \\quad y = x / \\alpha,

    from ``u(t_start)`` to ``u(t_end)`` with a PID step-size controller, and returns
    ``x = alpha(t_end) y``.  The batch is one ODE state; the error norm is the *largest* per-sample RMS
    of the scaled local error, so every sample meets ``rtol`` / ``atol`` as if integrated alone.  The
    compiled solve is cached per (model, schedule, solver, tolerances, shape).

    Args:
      model: any analytic model.
      schedule: the noise schedule.
      x_start: samples at ``t_start``, shape ``(batch, *model.shape)``.
      t_start, t_end: start / end (continuous) times; either direction.
      rtol, atol: tolerances of the controller (on ``y``).
      solver: ``"dopri8"`` (default), ``"tsit5"`` or ``"dopri5"``.
      max_steps: step limit per sample (diffrax raises if it is exceeded).
      condition: condition id(s) for :class:`ConditionalGaussians` (scalar or ``(batch,)``).
      return_steps: also return the number of steps taken (shared by the batch).

    Returns:
      ``x`` at ``t_end``, float64, shape of ``x_start`` (and the step counts if ``return_steps``).

    Raises:
      ValueError: if 64-bit mode is off (enable it with ``jax.config.update("jax_enable_x64", True)``
        or run inside ``with jax.enable_x64(True):``), or for an unknown ``solver``.
    """
    if not jax.config.jax_enable_x64:
        raise ValueError(
            "reference_solution needs float64 for its tight tolerances, but 64-bit mode is off: call "
            "jax.config.update('jax_enable_x64', True) first, or run it inside `with jax.enable_x64(True):`")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not allowed; allowed: {SOLVERS}")
    x = jnp.asarray(x_start, jnp.float64)
    if x.shape[1:] != tuple(model.shape):
        raise ValueError(f"x_start must have shape (batch, *{tuple(model.shape)}), got {x.shape}")
    alpha_s, sigma_s = _host_coefficients(schedule, t_start)
    alpha_e, sigma_e = _host_coefficients(schedule, t_end)
    u_start = jnp.float64(math.log(sigma_s / alpha_s))
    u_end = jnp.float64(math.log(sigma_e / alpha_e))
    if condition is not None:
        if not isinstance(model, ConditionalGaussians):
            raise ValueError(f"{type(model).__name__} takes no condition")
        condition = jnp.broadcast_to(jnp.asarray(condition, jnp.int32), x.shape[:1])
    y_end, steps = _integrate(x / alpha_s, condition, u_start, u_end, model=model, schedule=schedule, solver=solver,
                              rtol=float(rtol), atol=float(atol), max_steps=int(max_steps))
    x_end = alpha_e * y_end
    return (x_end, steps) if return_steps else x_end


def ode_solution(model: Model, schedule, x_start, t_start: float, t_end: float, **kwargs) -> jax.Array:
    """Exact ODE solution: :func:`gaussian_flow` for a :class:`Gaussian`, else :func:`reference_solution`."""
    if isinstance(model, Gaussian):
        return gaussian_flow(model, schedule, x_start, t_start, t_end)
    return reference_solution(model, schedule, x_start, t_start, t_end, **kwargs)  # pyright: ignore[reportReturnType]
