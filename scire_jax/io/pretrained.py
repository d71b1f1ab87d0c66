"""Load a pretrained denoiser: ``model = load_pretrained(path)``, a :class:`Pretrained` record.

``path`` may be

* a registered short name (a key of :data:`PRETRAINED`, resolved inside the installed package),
* a checkpoint directory written by :func:`scire_jax.io.checkpoints.save` (e.g. by
  ``scire-jax convert``) whose ``extra`` holds ``betas`` (list) and ``prediction``; the config is
  the UNet2D config (or, for training exports, ``{"model": <UNet2D config>, "schedule": {"type":
  "discrete", "betas": [...]}, "prediction": ...}``), or
* a diffusers ``UNet2DModel`` folder (``config.json`` + weights, or a pipeline folder with
  ``unet/``) with a ``scheduler_config.json`` (beside it or in ``scheduler/``).

The record holds everything a sampler needs without guessing: ``apply_fn(params, x, t_input,
*cond)`` (NHWC ``x`` at network time ``t_input``; ``cond``, if any, the class labels), ``params``
(the variables dict ``{"params": ...}``), the ``schedule``, the ``prediction`` (``"noise"``,
``"x_start"`` or ``"v"``), the ``sample_shape`` of one sample and the conditioning it takes.

Example:
    >>> import jax, scire_jax as sj
    >>> model = sj.load_pretrained("mnist")
    >>> model.sample_shape, model.conditioning
    ((16, 16, 1), 'none')
    >>> sample_fn = sj.make_sampler(sj.SciRE(steps=10), model.schedule, model.noise_fn())
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Callable, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from scire_jax.core import schedules
from scire_jax.io import checkpoints
from scire_jax.io.record import CONDITIONINGS, Pretrained
from scire_jax.models.unet2d import UNet2D

__all__ = ["PRETRAINED", "CONDITIONINGS", "Pretrained", "load_pretrained", "resolve_path", "make_apply_fn"]

# short name -> asset directory relative to the ``scire_jax`` package (e.g. "assets/mnist").
PRETRAINED: Dict[str, str] = {"mnist": "assets/mnist"}  # embedded 16x16 MNIST model (docs/embedded_model.md)

PREDICTIONS = ("noise", "x_start", "v")



def resolve_path(name_or_path) -> Path:
    """A registered name's asset directory inside the package, else ``name_or_path`` as a path."""
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        resource = importlib.resources.files("scire_jax").joinpath(PRETRAINED[name_or_path])
        return Path(str(resource))
    return Path(name_or_path)


def _describe(value) -> str:
    return repr(value) if value is None or isinstance(value, (bool, int, float, str)) else type(value).__name__


def make_apply_fn(module: UNet2D) -> Callable:
    """``apply_fn(params, x, t_input, *cond)`` for a :class:`UNet2D` (``cond`` = class labels)."""

    def apply_fn(params, x, t_input, *cond):
        if not (isinstance(params, Mapping) and "params" in params):
            raise ValueError(f"params={_describe(params)} is not allowed: this UNet2D needs its variables "
                             "{'params': ...} (e.g. model.params of load_pretrained)")
        if len(cond) > 1:
            raise ValueError(f"UNet2D takes at most one condition (class labels), got {len(cond)}")
        return module.apply(params, x, t_input, *cond)

    return apply_fn


def _model_config(config: Dict[str, Any], where: Path) -> Dict[str, Any]:
    """The UNet2D config of a checkpoint: ``config`` itself, or its ``"model"`` entry (training exports)."""
    model: Dict[str, Any] = dict(config["model"]) if isinstance(config.get("model"), dict) else dict(config)
    arch = model.pop("arch", "unet2d")
    if arch != "unet2d":
        raise ValueError(f"checkpoint {str(where)!r} holds a model of arch {arch!r}; load_pretrained supports 'unet2d'")
    return model


def _schedule_from_checkpoint(config: Dict[str, Any], extra: Dict[str, Any], where: Path):
    """Schedule + prediction from ``extra`` (``betas``, ``prediction``) or ``config`` (``schedule.betas``, ``prediction``)."""
    schedule_entry: Dict[str, Any] = config["schedule"] if isinstance(config.get("schedule"), dict) else {}
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


def _unet2d_record(module: UNet2D, params, schedule, prediction: str, source) -> Pretrained:
    from scire_jax.io.convert.from_diffusers import check_sample_size

    check_sample_size(module, f"model {str(source)!r}", required=True)
    size = module.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    num_classes = module.num_class_embeds
    return Pretrained(make_apply_fn(module), params, schedule, prediction, (int(height), int(width),
                      int(module.in_channels)), "class" if num_classes else "none", num_classes, None, "unet2d",
                      str(source))


def load_pretrained(name_or_path, dtype=None, allow_nonfinite: bool = False, *, config=None,
                    schedule="trained") -> Pretrained:
    """The :class:`Pretrained` record of a registered name, checkpoint or diffusers folder.

    Args:
      name_or_path: see the module docstring.
      dtype: computation dtype of the network (parameters stay float32).
      allow_nonfinite: accept NaN / infinite weights (by default they are a ``ValueError``).
      config: for a released guided-diffusion / improved-DDPM ``.pt`` / ``.safetensors`` file: its
        architecture name (``"imagenet256"`` ...), a JSON path or a dict (see
        :mod:`scire_jax.io.adm_loading`, which also reads ``scire-jax convert --config`` output).
      schedule: ADM / improved-DDPM only: ``"trained"`` (default) or ``"official_vp"`` (the
        official SciRE runner's continuous linear VP schedule; see :mod:`scire_jax.io.adm_loading`).
        EDM pickles (``*.pkl``) and their converted checkpoints: ``"trained"`` (default) = ``"edm"``
        (alpha = 1, sigma = t, ``D(x; sigma)`` as data prediction, as EDM samples), or ``"native"``
        (VP / iDDPM nets on their VP schedule; see :mod:`scire_jax.io.edm_loading`).

    Returns:
      A :class:`Pretrained`: ``apply_fn``, ``params`` (uncommitted arrays), ``schedule``,
      ``prediction``, ``sample_shape`` and conditioning.

    Raises:
      ValueError: an unknown name, a damaged checkpoint (see :func:`scire_jax.io.checkpoints.restore`:
        the arrays are verified against the recorded digest), unsupported config values, a
        ``sample_size`` the network cannot run at, or non-finite weights.
      ImportError: ``.bin`` weights without torch installed.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise ValueError(f"name_or_path={name_or_path!r} is not allowed: give a registered name "
                         f"({', '.join(sorted(PRETRAINED))}) or a path")
    from scire_jax.io import adm_loading

    if adm_loading.is_adm_source(name_or_path, config):  # guided-diffusion / improved-DDPM
        return adm_loading.load_adm(name_or_path, config=config, dtype=dtype, schedule=schedule,
                                    allow_nonfinite=allow_nonfinite)
    from scire_jax.io import edm_loading

    if config is None and edm_loading.is_edm_source(name_or_path):  # NVlabs/edm pickles, their converted checkpoints
        return edm_loading.load_edm(name_or_path, schedule=schedule, dtype=dtype, allow_nonfinite=allow_nonfinite)
    if schedule != "trained":
        raise ValueError(f"schedule={schedule!r} is not allowed for {str(name_or_path)!r}: only ADM / improved-DDPM "
                         "models offer a choice ('trained', 'official_vp')")
    path = resolve_path(name_or_path)
    if not path.is_dir():
        known = f"; registered names: {sorted(PRETRAINED)}" if PRETRAINED else ""
        raise ValueError(f"{str(name_or_path)!r} is neither a registered model name nor a directory{known}")
    if checkpoints.is_checkpoint(path):
        params, config, extra = checkpoints.restore(path)
        checkpoints.check_finite_params(params, f"checkpoint {str(path)!r}", allow_nonfinite)
        module = UNet2D.from_config(_model_config(config, path), dtype=dtype)
        schedule, prediction = _schedule_from_checkpoint(config, extra, path)
        if not (isinstance(params, dict) and set(params) == {"params"}):
            params = {"params": params}  # a bare parameter tree (e.g. a training export)
        # restored arrays are committed to one device, which a sampler sharded over a mesh rejects;
        # uncommitted copies follow whatever sharding the jitted sampler asks for
        params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(np.asarray(leaf)), params)
        return _unet2d_record(module, params, schedule, prediction, name_or_path)
    from scire_jax.io.convert.from_diffusers import convert_diffusers, find_scheduler_config, find_unet_folder
    from scire_jax.io.convert.scheduler import schedule_from_scheduler_config

    unet_folder = find_unet_folder(path)
    scheduler_config = find_scheduler_config(path) or find_scheduler_config(unet_folder)
    if scheduler_config is None:
        raise ValueError(f"diffusers folder {str(path)!r} has no scheduler_config.json (nor scheduler/scheduler_config.json)")
    schedule, prediction = schedule_from_scheduler_config(scheduler_config)
    module, params, _ = convert_diffusers(unet_folder, dtype=dtype, allow_nonfinite=allow_nonfinite)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return _unet2d_record(module, params, schedule, prediction, name_or_path)

