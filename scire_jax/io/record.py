"""The record every model loader returns: :class:`Pretrained` (network, parameters, schedule,
prediction, sample shape, conditioning).  Its own module so that family loaders
(:mod:`scire_jax.io.adm_loading`, :mod:`scire_jax.io.edm_loading`) and :mod:`scire_jax.io.pretrained`
share it without importing each other."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

from scire_jax.core.wrapping import ClassifierFree, wrap_model

__all__ = ["CONDITIONINGS", "Pretrained"]

#: what a model's ``apply_fn`` takes besides ``(params, x, t_input)``
CONDITIONINGS = ("none", "class", "text")


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
    """A loaded denoiser and everything needed to sample it.

    Attributes:
      apply_fn: ``apply_fn(params, x, t_input, *cond) -> prediction`` (NHWC ``x``).
      params: the network variables (uncommitted arrays: usable on one device or under a mesh).
      schedule: the noise schedule the model was trained with.
      prediction: ``"noise"``, ``"x_start"`` or ``"v"``.
      sample_shape: shape of one sample, ``(height, width, channels)``.
      conditioning: ``"none"``, ``"class"`` (``cond`` = int labels of shape ``(batch,)``) or ``"text"``.
      num_classes: number of classes for ``"class"`` conditioning, else None.
      time_input: the network time convention (None: the schedule's default).
      family: the architecture family (``"unet2d"``, ...).
      source: the name or path it was loaded from.
    """

    apply_fn: Callable
    params: Any
    schedule: Any
    prediction: str
    sample_shape: Tuple[int, ...]
    conditioning: str = "none"
    num_classes: Optional[int] = None
    time_input: Optional[str] = None
    family: str = "unet2d"
    source: str = ""

    def noise_fn(self, guidance=None, network_dtype=None, condition=None):
        """``sj.wrap_model(apply_fn, schedule, prediction, time_input, guidance, network_dtype=...)``.

        ``condition`` (e.g. ``(batch,)`` class labels of a ``"class"`` model) is passed to every
        network call, also under :class:`sj.Classifier` guidance; with :class:`sj.ClassifierFree`
        give it as the guidance's ``condition`` instead.
        """
        apply_fn = self.apply_fn
        if condition is not None:
            if self.conditioning == "none":
                raise ValueError(f"condition= is not allowed: model {self.source!r} is unconditional")
            if isinstance(guidance, ClassifierFree):
                raise ValueError("condition= is not allowed with ClassifierFree guidance: pass it as its condition")

            def apply_fn(params, x, t_input):
                return self.apply_fn(params, x, t_input, condition)
        return wrap_model(apply_fn, self.schedule, prediction=self.prediction, time_input=self.time_input,
                          guidance=guidance, network_dtype=network_dtype)

    def __repr__(self):
        return (f"Pretrained(family={self.family!r}, sample_shape={self.sample_shape}, prediction={self.prediction!r}, "
                f"conditioning={self.conditioning!r}, schedule={self.schedule!r}, source={self.source!r})")

