"""EDM snapshots (NVlabs/edm ``*.pkl``) and their converted checkpoints as :class:`~scire_jax.io.pretrained.Pretrained`.

:func:`scire_jax.io.pretrained.load_pretrained` dispatches here for

* an EDM pickle (``edm-cifar10-32x32-cond-vp.pkl``, ``network-snapshot-*.pkl``): read with the safe
  loader :func:`scire_jax.io.edm_pickle.load_edm_pickle` (nothing from the file is executed; hostile
  or unknown content is one ``ValueError``), and
* a checkpoint directory written by ``scire-jax convert edm.pkl out/`` (:func:`convert_edm_pickle`),
  whose ``config.json`` says ``"family": "edm"`` and records EDM's class name, constructor kwargs
  and preconditioner attributes, so it loads without the pickle.

Schedules (``schedule=``):

* ``"edm"`` (default, every preconditioner): EDM's own coordinates ``alpha = 1``, ``sigma = t``
  (``schedules.edm(0.002, 80)``, EDM's sampler range clipped to the net's ``[sigma_min, sigma_max]``),
  the denoiser ``D(x; sigma = t)`` as data prediction (``prediction="x_start"``,
  ``time_input="continuous"``).  This is what EDM's samplers and SciRE's ``edm_scire`` do.
* ``"native"`` (VPPrecond, iDDPMPrecond only): the VP process the net was trained on
  (``schedules.linear(beta_min, beta_min + beta_d)``, resp. iDDPM's discrete table) with the inner
  network's noise prediction.  Its default time range is the schedule's own; EDM's
  ``sigma in [0.002, 80]`` is :func:`edm_time_range`.

Class labels: a class-conditional net (``label_dim > 0``) gets ``conditioning="class"`` and
``num_classes = label_dim``.  ``apply_fn(params, x, t_input, labels)`` takes integer labels of shape
``(batch,)`` (one-hot encoded inside, as EDM's ``generate.py`` does with ``torch.eye(label_dim)[i]``;
an out-of-range index gives an all-zero row), or float rows of shape ``(batch, label_dim)`` passed on
unchanged (EDM's own format, e.g. soft labels).  Without labels the net gets EDM's
``class_labels=None`` (all-zero labels).

Example:
    >>> import scire_jax as sj  # doctest: +SKIP
    >>> model = sj.load_pretrained("edm-cifar10-32x32-cond-vp.pkl")  # doctest: +SKIP
    >>> labels = jnp.arange(8) % model.num_classes  # doctest: +SKIP
    >>> noise_fn = sj.wrap_model(lambda p, x, t: model.apply_fn(p[0], x, t, p[1]), model.schedule,
    ...                          model.prediction, model.time_input)  # doctest: +SKIP
    >>> x0 = sj.solve(sj.EDMHeun(steps=18), model.schedule, noise_fn, (model.params, labels),
    ...               80.0 * jax.random.normal(key, (8,) + model.sample_shape))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from scire_jax.io import checkpoints, edm_pickle
from scire_jax.models import edm

__all__ = ["FAMILY", "SCHEDULES", "is_edm_pickle", "is_edm_source", "load_edm", "load_edm_pretrained", "edm_record",
           "convert_edm_pickle", "record_from_checkpoint", "make_edm_apply_fn", "class_labels", "edm_time_range"]

FAMILY = "edm"
#: ``schedule=`` values; ``"trained"`` (load_pretrained's default) means ``"edm"``
SCHEDULES = ("edm", "native")
#: EDM's sampler range (``generate.edm_sampler`` defaults), as noise-to-signal ratios
EDM_SIGMA_RANGE = (0.002, 80.0)
_PICKLE_SUFFIXES = (".pkl", ".pickle")


def is_edm_pickle(path) -> bool:
    """Whether ``path`` names a pickle file (``.pkl`` / ``.pickle``): the EDM loader reads (or refuses) it."""
    path = Path(path)
    return path.suffix.lower() in _PICKLE_SUFFIXES and not path.is_dir()


def _checkpoint_family(path: Path) -> Optional[str]:
    if not (path.is_dir() and checkpoints.is_checkpoint(path) and (path / "config.json").is_file()):
        return None
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # restore() reports it
    return config.get("family") if isinstance(config, dict) else None


def is_edm_source(name_or_path) -> bool:
    """Whether :func:`~scire_jax.io.pretrained.load_pretrained` should hand ``name_or_path`` to :func:`load_edm`."""
    if not isinstance(name_or_path, (str, Path)):
        return False
    path = Path(name_or_path)
    return is_edm_pickle(path) or _checkpoint_family(path) == FAMILY


def load_edm(name_or_path, schedule: Optional[str] = "trained", dtype=None, allow_nonfinite: bool = False):
    """The record of an EDM pickle or of its converted checkpoint (``schedule``: ``"trained"`` = ``"edm"``, or ``"native"``)."""
    path = Path(name_or_path)
    schedule = "edm" if schedule in (None, "trained") else schedule
    if is_edm_pickle(path):
        if not path.is_file():
            raise ValueError(f"EDM pickle {str(path)!r} does not exist")
        return load_edm_pretrained(path, schedule, dtype, allow_nonfinite, source=name_or_path)
    params, config, _ = checkpoints.restore(path)
    checkpoints.check_finite_params(params, f"checkpoint {str(path)!r}", allow_nonfinite)
    return record_from_checkpoint(path, params, config, schedule, dtype)


# -- class labels -------------------------------------------------------------------------------------------


def class_labels(labels, label_dim: int):
    """EDM's ``class_labels`` from ``labels``: ``None``, int ``(batch,)`` (one-hot) or float ``(batch, label_dim)``.

    Raises:
      ValueError: labels for an unconditional net, or labels of another shape / dtype.
    """
    if labels is None:
        return None
    labels = jnp.asarray(labels)
    if label_dim == 0:
        raise ValueError("this EDM net is unconditional (label_dim=0): call apply_fn without class labels")
    if jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
        if labels.ndim != 1:
            raise ValueError(f"integer class labels must have shape (batch,), got {labels.shape}")
        return jax.nn.one_hot(labels, label_dim, dtype=jnp.float32)
    if labels.ndim != 2 or labels.shape[-1] != label_dim:
        raise ValueError(f"float class labels must have shape (batch, {label_dim}) (EDM's one-hot rows), "
                         f"got {labels.shape}; integer labels of shape (batch,) are one-hot encoded")
    return labels


def make_edm_apply_fn(module, mapping: Mapping[str, Any]) -> Callable:
    """``apply_fn(variables, x, t_input, labels=None)`` of a :class:`Pretrained` EDM record.

    ``variables`` is ``{"params": ...}``; ``x`` is NHWC; ``t_input`` is the record's network time
    (``sigma`` for the EDM mapping; for the native VP mapping ``t``, scaled by ``M - 1`` here).
    """
    base = edm_pickle.edm_apply_fn(module, mapping)
    scale = float(mapping["time_input_scale"]) if mapping["time_input"] == "scaled" else None
    label_dim = int(module.model.label_dim)

    def apply_fn(variables, x, t_input, *cond):
        if not (isinstance(variables, Mapping) and "params" in variables):
            raise ValueError(f"params of type {type(variables).__name__} are not allowed: this EDM model needs its "
                             "variables {'params': ...} (e.g. model.params of load_pretrained)")
        if len(cond) > 1:
            raise ValueError(f"EDM models take at most one condition (class labels), got {len(cond)}")
        labels = class_labels(cond[0] if cond else None, label_dim)
        if scale is not None:
            t_input = t_input * scale
        return base(variables["params"], x, t_input, labels)

    return apply_fn


# -- records -------------------------------------------------------------------------------------------------


def _check_schedule(schedule: Optional[str]) -> str:
    schedule = "edm" if schedule is None else schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not allowed for EDM models; allowed: 'trained' (= 'edm'), "
                         "'edm', 'native'")
    return schedule


def edm_record(module, params, class_name: str, attributes: Mapping[str, Any], schedule: Optional[str] = "edm",
               source: str = ""):
    """The :class:`~scire_jax.io.pretrained.Pretrained` record of an EDM preconditioner and its params tree.

    Args:
      module: an :mod:`scire_jax.models.edm` preconditioner.
      params: its ``params`` tree (numpy or jax arrays).
      class_name: ``VPPrecond``, ``VEPrecond``, ``iDDPMPrecond`` or ``EDMPrecond``.
      attributes: the preconditioner's attributes (``sigma_min``, ``sigma_max``, ``beta_d``, ``M``, ...).
      schedule: ``"edm"`` (default) or ``"native"`` (see the module docstring).
      source: what it was loaded from.

    Raises:
      ValueError: a bare network (no preconditioner, hence no schedule), or ``schedule="native"`` for a
        preconditioner without a native VP form (EDM, VE).
    """
    from scire_jax.io.record import Pretrained

    schedule = _check_schedule(schedule)
    if class_name not in edm.PRECOND_CLASSES:
        raise ValueError(f"{source or 'the EDM file'} holds a bare {class_name} without a preconditioner: it has no "
                         "noise schedule to sample with (scire_jax.io.edm_pickle.load_edm_pickle gives the module)")
    u = params.get("u") if isinstance(params, Mapping) else None
    mapping = edm_pickle.schedule_mapping(class_name, attributes, u=None if u is None else np.asarray(u),
                                          kind=schedule)
    if mapping["kind"] != schedule:
        raise ValueError(f"schedule='native' is not allowed for {class_name}: only VPPrecond and iDDPMPrecond map "
                         "onto a VP schedule; use schedule='edm' (alpha = 1, sigma = t)")
    net = module.model
    params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(np.asarray(leaf)), dict(params))  # uncommitted
    time_input = "continuous" if mapping["time_input"] == "scaled" else mapping["time_input"]
    label_dim = int(net.label_dim)
    return Pretrained(make_edm_apply_fn(module, mapping), {"params": params}, mapping["schedule"],
                      mapping["prediction"], (int(net.img_resolution), int(net.img_resolution), int(net.in_channels)),
                      "class" if label_dim else "none", label_dim or None, time_input, FAMILY, str(source))


def load_edm_pretrained(path, schedule: Optional[str] = "edm", dtype=None, allow_nonfinite: bool = False,
                        source=None):
    """:func:`~scire_jax.io.edm_pickle.load_edm_pickle` (safe: nothing is executed) as a ``Pretrained`` record.

    Raises:
      ValueError: one line for a hostile, unknown, truncated or unsupported file (see ``load_edm_pickle``),
        a bare network, an unsupported ``schedule`` or non-finite weights.
    """
    schedule = _check_schedule(schedule)
    module, params, info = edm_pickle.load_edm_pickle(path, dtype=jnp.float32 if dtype is None else dtype)
    checkpoints.check_finite_params(params, f"EDM pickle {str(path)!r}", allow_nonfinite)
    return edm_record(module, params, info["class_name"], info["attributes"], schedule,
                      str(path if source is None else source))


def edm_time_range(model) -> Tuple[float, float]:
    """``(t_start, t_end)`` of EDM's sampler range ``sigma/alpha in [0.002, 80]`` on ``model.schedule``.

    For the default EDM mapping this is the schedule's own range; for ``schedule="native"`` pass it as
    the solver's ``t_start`` / ``t_end`` to sample over the same noise levels as EDM.
    """
    schedule = model.schedule
    lo = max(EDM_SIGMA_RANGE[0], float(schedule.nsr(np.float64(schedule.t_min))))
    hi = min(EDM_SIGMA_RANGE[1], float(schedule.nsr(np.float64(schedule.t_max))))
    t_start = min(float(schedule.inverse_nsr(np.float64(hi))), schedule.t_max)
    t_end = max(float(schedule.inverse_nsr(np.float64(lo))), schedule.t_min)
    return t_start, t_end


# -- converted checkpoints ---------------------------------------------------------------------------------


def _to_json(value):
    """EDM kwargs / attributes -> JSON (tuples -> lists; inf / nan -> {"float": "inf"})."""
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"EDM setting {value!r} of type {type(value).__name__} cannot be stored in a checkpoint config")


def _from_json(value) -> Any:
    if isinstance(value, dict):
        if set(value) == {"float"} and value["float"] in ("inf", "-inf", "nan"):
            return float(value["float"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def convert_edm_pickle(src, dst, overwrite: bool = False, allow_nonfinite: bool = False) -> Dict[str, Any]:
    """Read an EDM pickle safely and save it as a scire-jax checkpoint directory at ``dst``.

    ``config.json`` holds ``{"family": "edm", "class_name", "kwargs" (EDM's constructor kwargs),
    "attributes" (sigma_min, sigma_max, ...)}``; ``extra.json`` the source, its ``module_src`` digest
    and the schedule conventions.  :func:`scire_jax.io.pretrained.load_pretrained` reads it back
    without the pickle.

    Returns:
      A summary dict (``dst``, ``source_format``, ``num_params``, ``prediction``, ``message``).

    Raises:
      ValueError: anything :func:`load_edm_pickle` refuses, a bare network, non-finite weights.
      FileExistsError: ``dst`` may not be replaced (see :func:`scire_jax.io.checkpoints.check_destination`).
    """
    module, params, info = edm_pickle.load_edm_pickle(src)
    if info["class_name"] not in edm.PRECOND_CLASSES:
        raise ValueError(f"{str(src)!r} holds a bare {info['class_name']} without a preconditioner: it has no noise "
                         "schedule, so a converted checkpoint could not be sampled")
    checkpoints.check_finite_params(params, f"EDM pickle {str(src)!r}", allow_nonfinite)
    config = {"family": FAMILY, "class_name": info["class_name"], "kwargs": _to_json(info["kwargs"]),
              "attributes": _to_json(info["attributes"])}
    extra = {"source": str(src), "source_format": "edm_pickle", "network_class": info["network_class"],
             "module_src_sha256": info["module_src_sha256"], "module_src_known": info["module_src_known"],
             "prediction": "x_start", "schedules": list(SCHEDULES)}
    checkpoints.save(dst, params, config, extra, overwrite=overwrite)
    net = module.model
    num_params = int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
    labels = f", {net.label_dim} classes" if net.label_dim else ""
    message = (f"wrote {dst}: EDM {info['class_name']}({info['network_class']}), {num_params:,} parameters, "
               f"{net.img_resolution}x{net.img_resolution}x{net.in_channels}{labels}; load_pretrained samples it on "
               "schedules.edm (D(x; sigma) as data prediction)")
    return {"dst": str(dst), "source_format": "edm_pickle", "num_params": num_params, "prediction": "x_start",
            "num_train_timesteps": None, "message": message}


def record_from_checkpoint(path, params, config: Mapping[str, Any], schedule: Optional[str] = "edm", dtype=None):
    """The record of a restored ``family: edm`` checkpoint (``params``: its restored tree)."""
    where = f"checkpoint {str(path)!r}"
    class_name, kwargs = config.get("class_name"), config.get("kwargs")
    attributes = config.get("attributes")
    if not isinstance(class_name, str) or not isinstance(kwargs, dict) or not isinstance(attributes, dict):
        raise ValueError(f"{where}: an EDM config needs 'class_name' (str), 'kwargs' and 'attributes' (dicts)")
    try:
        module = edm.from_edm_kwargs(class_name, _from_json(kwargs), dtype=jnp.float32 if dtype is None else dtype)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    expected = jax.tree_util.tree_map(lambda leaf: tuple(leaf.shape), edm.abstract_params(module))
    found = jax.tree_util.tree_map(lambda leaf: tuple(np.shape(leaf)), params)
    if expected != found:
        raise ValueError(f"{where}: its arrays do not match the recorded EDM config ({class_name})")
    return edm_record(module, params, class_name, _from_json(attributes), schedule, str(path))
