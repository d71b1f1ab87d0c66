"""Load a pretrained denoiser: ``apply_fn, params, schedule, prediction = load_pretrained(path)``.

``path`` may be

* a registered short name (a key of :data:`PRETRAINED`, resolved inside the installed package),
* a checkpoint directory written by :func:`scire_jax.io.checkpoints.save` (e.g. by
  ``scire-jax convert``) whose ``extra`` holds ``betas`` (list) and ``prediction``; the config is
  the UNet2D config (or, for training exports, ``{"model": <UNet2D config>, "schedule": {"type":
  "discrete", "betas": [...]}, "prediction": ...}``), or
* a diffusers ``UNet2DModel`` folder (``config.json`` + weights, or a pipeline folder with
  ``unet/``) with a ``scheduler_config.json`` (beside it or in ``scheduler/``).

``apply_fn(params, x, t_input, *cond)`` runs the UNet on NHWC ``x`` at network time ``t_input``
(shape ``(batch,)`` or scalar); ``cond``, if given, is the class label array.  ``prediction`` is
``"noise"``, ``"x_start"`` or ``"v"``.  ``params`` is always the variables dict ``{"params": ...}``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from scire_jax.io import checkpoints
from scire_jax.core import schedules
from scire_jax.models.unet2d import UNet2D

__all__ = ["PRETRAINED", "load_pretrained", "resolve_path", "make_apply_fn"]

# short name -> asset directory relative to the ``scire_jax`` package (e.g. "assets/mnist").
PRETRAINED: Dict[str, str] = {"mnist": "assets/mnist"}  # embedded 16x16 MNIST model (docs/embedded_model.md)

PREDICTIONS = ("noise", "x_start", "v")


def resolve_path(name_or_path) -> Path:
    """A registered name's asset directory inside the package, else ``name_or_path`` as a path."""
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        resource = importlib.resources.files("scire_jax").joinpath(PRETRAINED[name_or_path])
        return Path(str(resource))
    return Path(name_or_path)


def make_apply_fn(module: UNet2D) -> Callable:
    """``apply_fn(params, x, t_input, *cond)`` for a :class:`UNet2D` (``cond`` = class labels)."""

    def apply_fn(params, x, t_input, *cond):
        if len(cond) > 1:
            raise ValueError(f"UNet2D takes at most one condition (class labels), got {len(cond)}")
        return module.apply(params, x, t_input, *cond)

    return apply_fn


def _model_config(config: Dict[str, Any], where: Path) -> Dict[str, Any]:
    """The UNet2D config of a checkpoint: ``config`` itself, or its ``"model"`` entry (training exports)."""
    model = config.get("model") if isinstance(config.get("model"), dict) else config
    model = dict(model)
    arch = model.pop("arch", "unet2d")
    if arch != "unet2d":
        raise ValueError(f"checkpoint {str(where)!r} holds a model of arch {arch!r}; load_pretrained supports 'unet2d'")
    return model


def _schedule_from_checkpoint(config: Dict[str, Any], extra: Dict[str, Any], where: Path):
    """Schedule + prediction from ``extra`` (``betas``, ``prediction``) or ``config`` (``schedule.betas``, ``prediction``)."""
    schedule_entry = config.get("schedule") if isinstance(config.get("schedule"), dict) else {}
    if schedule_entry.get("type", "discrete") != "discrete":
        raise ValueError(f"checkpoint config['schedule']['type']={schedule_entry['type']!r} is not supported; allowed: 'discrete'")
    betas = extra.get("betas", schedule_entry.get("betas"))
    prediction = extra.get("prediction", config.get("prediction"))
    if betas is None or prediction is None:
        raise ValueError(f"checkpoint {str(where)!r} has no schedule: its extra.json needs 'betas' (a list) and "
                         "'prediction'")
    if prediction not in PREDICTIONS:
        raise ValueError(f"checkpoint prediction={prediction!r} is not supported; allowed: {list(PREDICTIONS)}")
    return schedules.discrete(betas=np.asarray(betas, dtype=np.float64)), prediction


def load_pretrained(name_or_path, dtype=None) -> Tuple[Callable, Any, schedules.DiscreteSchedule, str]:
    """``(apply_fn, params, schedule, prediction)`` of a registered name, checkpoint or diffusers folder.

    Args:
      name_or_path: see the module docstring.
      dtype: computation dtype of the network (parameters stay float32).

    Returns:
      The network ``apply_fn(params, x, t)``, its parameters (uncommitted arrays, usable on one
      device or under a mesh), the :class:`~scire_jax.core.schedules.DiscreteSchedule` and the
      prediction type (``"noise"``, ``"x_start"`` or ``"v"``).
    """
    path = resolve_path(name_or_path)
    if not path.is_dir():
        known = f"; registered names: {sorted(PRETRAINED)}" if PRETRAINED else ""
        raise ValueError(f"{str(name_or_path)!r} is neither a registered model name nor a directory{known}")
    if checkpoints.is_checkpoint(path):
        params, config, extra = checkpoints.restore(path)
        module = UNet2D.from_config(_model_config(config, path), dtype=dtype)
        schedule, prediction = _schedule_from_checkpoint(config, extra, path)
        if not (isinstance(params, dict) and set(params) == {"params"}):
            params = {"params": params}  # a bare parameter tree (e.g. a training export)
        # restored arrays are committed to one device, which a sampler sharded over a mesh rejects;
        # uncommitted copies follow whatever sharding the jitted sampler asks for
        params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(np.asarray(leaf)), params)
        return make_apply_fn(module), params, schedule, prediction
    from scire_jax.io.convert.from_diffusers import convert_diffusers, find_scheduler_config, find_unet_folder
    from scire_jax.io.convert.scheduler import schedule_from_scheduler_config

    unet_folder = find_unet_folder(path)
    scheduler_config = find_scheduler_config(path) or find_scheduler_config(unet_folder)
    if scheduler_config is None:
        raise ValueError(f"diffusers folder {str(path)!r} has no scheduler_config.json (nor scheduler/scheduler_config.json)")
    schedule, prediction = schedule_from_scheduler_config(scheduler_config)
    module, params, _ = convert_diffusers(unet_folder, dtype=dtype)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return make_apply_fn(module), params, schedule, prediction

