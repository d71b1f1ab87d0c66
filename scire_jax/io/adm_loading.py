"""Guided-diffusion (ADM) / improved-DDPM models and noisy classifiers as ready-to-sample records.

:func:`scire_jax.io.pretrained.load_pretrained` hands these sources to :func:`load_adm`:

* a checkpoint directory written by ``scire-jax convert model.pt out/ --config NAME|config.json``
  (:func:`convert_to_checkpoint`), whose ``config.json`` records ``family``, the constructor
  ``kwargs``, ``image_size``, ``num_classes`` and the training ``schedule``;
* a released ``.pt`` (or ``.safetensors``) file with ``config=`` (an architecture name of
  :data:`scire_jax.io.convert.adm.ARCHITECTURES`, a JSON path or a dict):
  ``load_pretrained("256x256_diffusion.pt", config="imagenet256")``.

The record's ``apply_fn(params, x, t_input[, labels])`` returns the noise prediction: the first
``in_channels`` channels of the learned-sigma output (the variance channels are dropped, as every
sampler of the official SciRE runner does); ``prediction="noise"``.

**Which schedule** (``schedule=``):

``"trained"`` (default)
    The schedule the network was trained with: linear betas 1e-4 .. 0.02 over 1000 steps for the
    guided-diffusion models (ImageNet 128/256/512, LSUN bedroom); the cosine schedule over 4000
    steps for improved-DDPM ImageNet-64, whose network was trained with ``rescale_timesteps`` and
    expects ``t * 1000 / 4000``.  Both are :func:`scire_jax.schedules.discrete` tables with the
    ``"discrete"`` network time ``1000 (t - 1/N)``, which is the step index for N = 1000 and
    exactly the rescaled ``step * 1000 / 4000`` for N = 4000.  Use it for every model: the noise
    level the sampler assumes is the one the network was trained on.
``"official_vp"``
    What the official SciRE-Solver runner (``runners/diffusion.py``) does for all five configs:
    the continuous linear VP schedule (beta_0 = 0.1, beta_1 = 20, N = 1000,
    ``t_input = 1000 max(t - 1/1000, 0)``).  For the guided-diffusion models it is the continuous
    limit of their linear betas, so the samples are close to the trained schedule's; for the
    cosine-trained ImageNet-64 model it is a mismatch (at a given ``t_input`` the network assumes
    the cosine noise level, the sampler the linear one).  Use it only to reproduce the paper's
    numbers.

**Classifier guidance** (:func:`load_classifier`, :func:`classifier_guidance`) follows the
guided-diffusion convention used by the official code: the scale multiplies the gradient of the
log-probability, ``eps_guided = eps - scale * sigma_t * grad_x log p(y | x_t)`` with
``sigma_t = sqrt(1 - alpha_bar_t)`` (``functions/denoising.py``: ``cond_fn = scale * grad``,
``eps - sqrt(1 - alpha_bar) * cond_fn``; SciRE path: ``eps - scale * marginal_std(t) * grad``).
The classifier sees the same network time as the diffusion model.  Scale 0 gives the unguided
noise exactly (the classifier is still evaluated).  The official configs use 1.25 (128x128), 2.5
(256x256) and 4.0 (512x512).

Example (the released files; ``labels`` one int per sample)::

    model = sj.load_pretrained("256x256_diffusion.pt", config="imagenet256")
    classifier = load_classifier("256x256_classifier.pt", config="imagenet256_classifier")
    noise_fn = class_conditional_noise_fn(model, classifier)
    params = sampling_params(model, labels, classifier, scale=2.5)
    sample_fn = sj.make_sampler(sj.SciRE(steps=10), model.schedule, noise_fn)
    x = jax.jit(sample_fn, static_argnums=2)(params, key, (len(labels), 256, 256, 3))
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from scire_jax.core import schedules
from scire_jax.core.wrapping import Classifier

__all__ = [
    "MODEL_FAMILIES", "CLASSIFIER_FAMILY", "SCHEDULES", "RAW_SUFFIXES", "PretrainedClassifier", "is_adm_source",
    "checkpoint_family", "resolve_config", "schedule_info", "make_apply_fn", "make_classifier_apply_fn", "trained_schedule",
    "schedule_for", "convert_to_checkpoint", "load_adm", "load_classifier", "classifier_guidance",
    "class_labels", "class_conditional_noise_fn", "sampling_params", "chunked_sampling_params",
]

#: diffusion-model families (load_pretrained); the classifier family loads with load_classifier
MODEL_FAMILIES = ("guided_diffusion", "improved_ddpm")
CLASSIFIER_FAMILY = "guided_diffusion_classifier"
SCHEDULES = ("trained", "official_vp")
#: files load_pretrained / load_classifier read as released state dicts (with config=)
RAW_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
CONFIG_FORMAT = "scire_jax.adm"


# -- sources and configs ---------------------------------------------------------------------------


def checkpoint_family(path) -> Optional[str]:
    """The ``family`` recorded in a scire-jax checkpoint directory's ``config.json`` (None if absent)."""
    from scire_jax.io import checkpoints

    path = Path(path)
    if not (path.is_dir() and checkpoints.is_checkpoint(path) and (path / "config.json").is_file()):
        return None
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # restore() reports it
    family = config.get("family") if isinstance(config, dict) else None
    return family if isinstance(family, str) else None


def is_adm_source(name_or_path, config=None) -> bool:
    """Whether :func:`load_pretrained` should hand ``name_or_path`` to :func:`load_adm`."""
    if config is not None:
        return True
    if not isinstance(name_or_path, (str, Path)):
        return False
    path = Path(name_or_path)
    if path.is_file() and path.name.endswith(RAW_SUFFIXES):
        return True
    return checkpoint_family(path) in MODEL_FAMILIES + (CLASSIFIER_FAMILY,)


def schedule_info(value) -> Dict[str, Any]:
    """A training-schedule entry from ``"linear"`` / ``"cosine"`` (1000 steps) or a dict with
    ``beta_schedule`` and ``num_diffusion_timesteps`` (optional ``beta_start`` / ``beta_end``)."""
    if isinstance(value, str):
        value = {"beta_schedule": value, "num_diffusion_timesteps": 1000}
    if not isinstance(value, Mapping):
        raise ValueError(f"ADM config schedule={value!r} is not allowed: 'linear', 'cosine' or a dict with "
                         "beta_schedule and num_diffusion_timesteps")
    kind, n = value.get("beta_schedule"), value.get("num_diffusion_timesteps", 1000)
    if kind not in ("linear", "cosine") or isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"ADM config schedule={dict(value)!r} is not allowed: beta_schedule 'linear' or 'cosine', "
                         "num_diffusion_timesteps an integer >= 2")
    info = {"beta_schedule": kind, "beta_start": value.get("beta_start", 1e-4 if kind == "linear" else None),
            "beta_end": value.get("beta_end", 0.02 if kind == "linear" else None), "num_diffusion_timesteps": n,
            "time_input_scale": 1000.0 / n, "description": f"{kind} schedule over {n} steps; network time = "
            f"step * 1000 / {n}"}
    trained_schedule(info)  # validates
    return info


def resolve_config(config) -> Dict[str, Any]:
    """:func:`scire_jax.io.convert.adm.adm_config` plus ``image_size`` and ``schedule`` beside the kwargs.

    The improved-DDPM constructor has no ``image_size``; a JSON / dict config of that family may give
    it beside the kwargs (``{"family": "improved_ddpm", "image_size": 64, ...}``) so that the sample
    shape is known.  Any family's config may give its training ``"schedule"`` (see
    :func:`schedule_info`; default: linear 1000 steps for guided-diffusion, cosine 4000 for
    improved-DDPM), e.g. ``"cosine"`` for guided-diffusion's 64x64 model.  Raises ``ValueError`` as
    :func:`adm_config` does.
    """
    from scire_jax.io.convert.adm import FAMILY_OF_CLASS, adm_config

    image_size = schedule = None
    if isinstance(config, (str, Path)) and Path(config).suffix == ".json" and Path(config).is_file():
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read ADM config {str(config)!r}: {error}") from error
    if isinstance(config, Mapping):
        config = copy.deepcopy(dict(config))
        nested = config.get("constructor_kwargs")
        inner: Dict[str, Any] = nested if isinstance(nested, dict) else config
        family = config.get("family", FAMILY_OF_CLASS.get(str(config.get("class"))))
        if family == "improved_ddpm" and "image_size" in inner:
            image_size = inner.pop("image_size")
        schedule = config.pop("schedule", None)
    resolved = adm_config(config)
    if schedule is not None:
        resolved["schedule"] = schedule_info(schedule)
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"ADM config image_size={image_size!r} is not allowed: a positive integer is required")
        resolved["image_size"] = image_size
    return resolved


def trained_schedule(info: Mapping[str, Any]) -> schedules.DiscreteSchedule:
    """The discrete training schedule described by an ``ARCHITECTURES[...]["schedule"]`` entry.

    The network time is the ``"discrete"`` convention ``1000 (t - 1/N)``, i.e. ``(1000 / N) * step``;
    ``info["time_input_scale"]`` (network time per step) must be ``1000 / N``.
    """
    from scire_jax.io.convert.scheduler import betas_from_scheduler_config

    kind, n = info.get("beta_schedule"), info.get("num_diffusion_timesteps")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"ADM schedule num_diffusion_timesteps={n!r} is not supported: an integer >= 2 is required")
    scale = float(info.get("time_input_scale", 1000.0 / n))
    if not math.isclose(scale, 1000.0 / n, rel_tol=1e-9):
        raise ValueError(f"ADM schedule time_input_scale={scale!r} is not supported for {n} steps: the network time "
                         f"must be step * 1000 / {n} = step * {1000.0 / n!r}")
    if kind == "linear":
        # guided_diffusion.gaussian_diffusion.get_named_beta_schedule("linear", N): scaled to N steps
        factor = 1000.0 / n
        betas = np.linspace(factor * float(info.get("beta_start") or 1e-4), factor * float(info.get("beta_end") or 0.02),
                            n, dtype=np.float64)
    elif kind == "cosine":
        betas = betas_from_scheduler_config({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": n})
    else:
        raise ValueError(f"ADM schedule beta_schedule={kind!r} is not supported; allowed: 'linear', 'cosine'")
    return schedules.discrete(betas=betas)


def schedule_for(info: Mapping[str, Any], schedule: str = "trained") -> Tuple[schedules.NoiseSchedule, str]:
    """``(schedule, time_input)`` of the record: see the module docstring for the choice."""
    if schedule == "trained":
        return trained_schedule(info), "discrete"
    if schedule == "official_vp":
        # runners/diffusion.py: NoiseScheduleVP("linear") ignores the betas: beta_0 = 0.1, beta_1 = 20, N = 1000
        return schedules.linear(0.1, 20.0), "discrete"
    raise ValueError(f"schedule={schedule!r} is not allowed; allowed: {list(SCHEDULES)} (see "
                     "scire_jax.io.adm_loading for which is right for which model)")


# -- apply functions -------------------------------------------------------------------------------


def make_apply_fn(module, eps_channels: int) -> Callable:
    """``apply_fn(params, x, t_input[, labels])``: the noise, ``module.apply(...)[..., :eps_channels]``."""
    conditional = getattr(module, "num_classes", None) is not None

    def apply_fn(params, x, t_input, *cond):
        if len(cond) != int(conditional):
            need = "class labels (one int per sample)" if conditional else "no condition (it is unconditional)"
            raise ValueError(f"this {module.family} model takes {need}, got {len(cond)} condition argument(s)")
        return module.apply(params, x, t_input, *cond)[..., :eps_channels]

    return apply_fn


def make_classifier_apply_fn(module) -> Callable:
    """``apply_fn(params, x, t_input) -> logits (batch, num_classes)`` (float32)."""

    def apply_fn(params, x, t_input):
        return module.apply(params, x, t_input)

    return apply_fn


# -- loading ---------------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _convertible(resolved: Mapping[str, Any]):
    """What :func:`convert_adm` takes for a :func:`resolve_config` result: the name, else kwargs + family."""
    return resolved["name"] if resolved["name"] is not None else dict(resolved["kwargs"], family=resolved["family"])


def _build(source, config, dtype, allow_nonfinite: bool):
    """``(module, variables, info)`` of a raw file (with ``config``) or a converted checkpoint directory."""
    from scire_jax.io import checkpoints
    from scire_jax.io.convert.adm import convert_adm
    from scire_jax.models.adm import from_config

    dtype = jnp.float32 if dtype is None else dtype
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is not None and path.is_dir():
        if config is not None:
            raise ValueError(f"config= is not allowed with the converted checkpoint {str(path)!r}: it records its own")
        params, stored, extra = checkpoints.restore(path)
        if not (isinstance(stored, dict) and stored.get("family") in MODEL_FAMILIES + (CLASSIFIER_FAMILY,)):
            raise ValueError(f"checkpoint {str(path)!r} does not hold an ADM / improved-DDPM network (config.json "
                             f"has family={stored.get('family') if isinstance(stored, dict) else None!r})")
        checkpoints.check_finite_params(params, f"checkpoint {str(path)!r}", allow_nonfinite)
        module = from_config(stored["kwargs"], stored["family"], dtype=dtype)
        if not (isinstance(params, dict) and set(params) == {"params"}):
            params = {"params": params}
        # restored arrays are committed to one device; uncommitted copies follow a sampler's mesh
        params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(np.asarray(leaf)), params)
        info = dict(stored, source=str(path), extra=extra)
        return module, params, info
    if config is None:
        raise ValueError(f"{str(source)!r} is a weights file: for a guided-diffusion / improved-DDPM state dict pass "
                         "config= (an architecture name such as 'imagenet256', a JSON path or a dict of constructor "
                         "kwargs with 'family'); other checkpoints: convert them first (scire-jax convert)")
    resolved = resolve_config(config)
    module, variables, info = convert_adm(source, _convertible(resolved), dtype=dtype)
    info["schedule"] = resolved["schedule"]
    checkpoints.check_finite_params(variables, info["source"], allow_nonfinite)
    info["image_size"] = resolved["image_size"] if info.get("image_size") is None else info["image_size"]
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    return module, variables, info


def load_adm(name_or_path, config=None, dtype=None, schedule: str = "trained", allow_nonfinite: bool = False):
    """The :class:`scire_jax.io.pretrained.Pretrained` record of an ADM / improved-DDPM model.

    Args:
      name_or_path: a converted checkpoint directory, or a ``.pt`` / ``.safetensors`` state dict
        with ``config``.
      config: architecture name (``"imagenet64"``, ``"imagenet128"``, ``"imagenet256"``,
        ``"imagenet512"``, ``"lsun_bedroom"``), JSON path or dict (see :func:`resolve_config`);
        only for raw files.
      dtype: compute dtype of the network (``jnp.bfloat16`` on accelerators); params stay float32.
      schedule: ``"trained"`` (default, right for every model) or ``"official_vp"`` (the official
        SciRE runner's continuous linear VP schedule, to reproduce its numbers); see the module
        docstring.
      allow_nonfinite: accept NaN / infinite weights.

    Raises:
      ValueError: unreadable / mismatching weights (naming the file), an unknown architecture, a
        classifier (use :func:`load_classifier`), a missing image size, or an unknown ``schedule``.
    """
    from scire_jax.io.record import Pretrained

    if schedule not in SCHEDULES:
        schedule_for({}, schedule)  # the ValueError listing the allowed values
    module, variables, info = _build(name_or_path, config, dtype, allow_nonfinite)
    family = info["family"]
    if family == CLASSIFIER_FAMILY:
        raise ValueError(f"{str(name_or_path)!r} is a noisy classifier ({family}), not a diffusion model: load it with "
                         "scire_jax.io.adm_loading.load_classifier(...) and guide with classifier_guidance(...)")
    size = info.get("image_size") or getattr(module, "image_size", None)
    if size is None:
        raise ValueError(f"{str(name_or_path)!r}: the image size is unknown (improved-DDPM configs have no image_size "
                         "kwarg): give 'image_size' in the config")
    noise, time_input = schedule_for(info["schedule"], schedule)
    eps_channels = module.in_channels if module.out_channels == 2 * module.in_channels else module.out_channels
    num_classes = module.num_classes
    return Pretrained(make_apply_fn(module, eps_channels), variables, noise, "noise",
                      (int(size), int(size), int(module.in_channels)), "class" if num_classes else "none",
                      num_classes, time_input, family, str(name_or_path))


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedClassifier:
    """A loaded noisy classifier (guided-diffusion ``EncoderUNetModel``).

    Attributes:
      apply_fn: ``apply_fn(params, x, t_input) -> logits`` (NHWC ``x``; ``t_input`` the network time,
        the same the diffusion model gets).
      params: the variables ``{"params": ...}`` (uncommitted arrays).
      num_classes: number of classes (logits).
      sample_shape: ``(height, width, channels)`` it was trained on.
      classifier_scale: the official SciRE config's guidance scale for it (None if unknown).
      family, source: ``"guided_diffusion_classifier"`` and where it was loaded from.
    """

    apply_fn: Callable
    params: Any
    num_classes: int
    sample_shape: Tuple[int, ...]
    classifier_scale: Optional[float] = None
    family: str = CLASSIFIER_FAMILY
    source: str = ""

    def log_prob_fn(self, params=None) -> Callable:
        """``classifier_fn(x, t_input, labels) = log_softmax(logits)[i, labels_i]`` (for :class:`sj.Classifier`)."""
        params = self.params if params is None else params
        apply_fn = self.apply_fn

        def classifier_fn(x, t_input, labels):
            logits = apply_fn(params, x, t_input).astype(jnp.float32)
            log_probs = jax.nn.log_softmax(logits, axis=-1)
            return jnp.take_along_axis(log_probs, jnp.asarray(labels).reshape(-1, 1).astype(jnp.int32), axis=-1)[:, 0]

        return classifier_fn

    def __repr__(self):
        return (f"PretrainedClassifier(num_classes={self.num_classes}, sample_shape={self.sample_shape}, "
                f"classifier_scale={self.classifier_scale!r}, source={self.source!r})")


def load_classifier(path_or_checkpoint, config=None, dtype=None, allow_nonfinite: bool = False) -> PretrainedClassifier:
    """A :class:`PretrainedClassifier` from a converted checkpoint directory or a raw file with ``config``.

    Args:
      path_or_checkpoint: ``scire-jax convert 256x256_classifier.pt out/ --config imagenet256_classifier``'s
        output, or the ``.pt`` / ``.safetensors`` file itself with ``config``.
      config: ``"imagenet128_classifier"``, ``"imagenet256_classifier"``, ``"imagenet512_classifier"``,
        a JSON path or a dict (family ``"guided_diffusion_classifier"``); only for raw files.
      dtype: compute dtype (the released classifiers run in fp16 in the official runner).

    Raises:
      ValueError: as :func:`load_adm`, or the source is a diffusion model, not a classifier.
    """
    module, variables, info = _build(path_or_checkpoint, config, dtype, allow_nonfinite)
    if info["family"] != CLASSIFIER_FAMILY:
        raise ValueError(f"{str(path_or_checkpoint)!r} is a {info['family']} diffusion model, not a noisy classifier: "
                         "load it with scire_jax.load_pretrained")
    size = info.get("image_size") or module.image_size
    scale = info.get("classifier_scale")
    return PretrainedClassifier(make_classifier_apply_fn(module), variables, int(module.out_channels),
                                (int(size), int(size), int(module.in_channels)),
                                None if scale is None else float(scale), CLASSIFIER_FAMILY, str(path_or_checkpoint))


# -- guidance and class-conditional sampling -------------------------------------------------------


def _check_scale(scale) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) or \
            not math.isfinite(scale):
        raise ValueError(f"classifier scale={scale!r} is not allowed: a finite number is required")


def classifier_guidance(classifier: PretrainedClassifier, scale, labels, params=None) -> Classifier:
    """``sj.Classifier`` with the official convention: ``eps - scale * sigma_t * grad_x log p(labels | x_t)``.

    Args:
      classifier: a :class:`PretrainedClassifier`.
      scale: the guidance scale (the official configs: 1.25 / 2.5 / 4.0 for 128 / 256 / 512 px); 0
        gives the unguided noise exactly.  A number, or a traced scalar inside a jitted function.
      labels: ``(batch,)`` int class labels, one per sample.
      params: the classifier's variables (default ``classifier.params``; pass traced ones inside a
        jitted function so that they are arguments, not constants).
    """
    if not isinstance(classifier, PretrainedClassifier):
        raise ValueError(f"classifier={classifier!r} is not allowed: give a load_classifier(...) record")
    if not isinstance(scale, jax.Array):
        _check_scale(scale)
        scale = float(scale)
    return Classifier(classifier.log_prob_fn(params), scale, labels)


def class_labels(key, num: int, num_classes: int, label: Optional[int] = None) -> np.ndarray:
    """``num`` labels: ``label`` for all, else sample ``i``'s label drawn from ``fold_in(key', i)``.

    ``key'`` is ``fold_in(key, 2**32 - 1)``, so sample ``i`` gets the same label for any ``num``
    (like the initial noise of :func:`scire_jax.make_sampler`).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes={num_classes!r} is not allowed: a positive integer is required")
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
            raise ValueError(f"class label {label!r} is not allowed: it must be an integer in 0 .. {num_classes - 1}")
        return np.full((num,), int(label), np.int32)
    label_key = jax.random.fold_in(key, 2 ** 32 - 1)
    draw = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(label_key, i), (), 0, num_classes))
    return np.asarray(draw(jnp.arange(num, dtype=jnp.uint32)), np.int32)


def sampling_params(model, labels, classifier: Optional[PretrainedClassifier] = None,
                    scale: Optional[float] = None) -> Dict[str, Any]:
    """The ``params`` of :func:`class_conditional_noise_fn`.

    ``{"model": model.params, "labels": (batch,) int32}`` plus, with a classifier,
    ``"classifier": classifier.params`` and ``"scale"`` (float32 scalar; default: the classifier's
    official scale, else 1).  The scale is an argument, so other scales reuse the compiled sampler.
    """
    params = {"model": model.params, "labels": jnp.asarray(labels, jnp.int32)}
    if classifier is not None:
        if scale is None:
            scale = classifier.classifier_scale if classifier.classifier_scale is not None else 1.0
        _check_scale(scale)
        params["classifier"] = classifier.params
        params["scale"] = jnp.asarray(scale, jnp.float32)
    elif scale is not None:
        raise ValueError(f"scale={scale!r} is not allowed without a classifier")
    return params


def chunked_sampling_params(model, labels, batch: int, classifier: Optional[PretrainedClassifier] = None,
                            scale: Optional[float] = None, place: Optional[Callable] = None,
                            model_params=None) -> Callable[[int, int], Dict[str, Any]]:
    """``chunk_params(first, batch)`` for :func:`scire_jax.apps.comparison.sample_in_chunks`.

    Chunk ``k`` gets the labels of samples ``first .. first + batch - 1`` (the last chunk padded
    with label 0, its extra samples are cut); ``place`` (e.g. ``lambda tree: replicate(tree, mesh)``)
    is applied once to the network parameters and to each chunk's labels.  ``model_params``, if
    given, are used as they are (already placed) instead of ``model.params``.
    """
    place = (lambda tree: tree) if place is None else place
    labels = np.asarray(labels, np.int32)
    padded = np.zeros((-(-len(labels) // batch) * batch,), np.int32)
    padded[:len(labels)] = labels
    base = sampling_params(model, padded[:batch], classifier, scale)
    base = {key: (model_params if key == "model" and model_params is not None else place(value))
            for key, value in base.items() if key != "labels"}

    def chunk_params(first: int, size: int) -> Dict[str, Any]:
        if size != batch:
            raise ValueError(f"chunk_params: chunks of {size} samples, but the labels were laid out for {batch}")
        return dict(base, labels=place(jnp.asarray(padded[first:first + size])))

    return chunk_params


class _ConditionalNoiseFn:
    """Noise predictor whose ``params`` carry the per-sample labels (see :func:`class_conditional_noise_fn`)."""

    def __init__(self, model, classifier, network_dtype):
        self.model, self.classifier, self.network_dtype = model, classifier, network_dtype
        self.schedule = model.schedule

    def _wrapped(self, params):
        labels = params["labels"]
        guidance = None
        if self.classifier is not None:
            guidance = classifier_guidance(self.classifier, params["scale"], labels, params["classifier"])
        condition = labels if self.model.conditioning == "class" else None
        return self.model.noise_fn(guidance=guidance, network_dtype=self.network_dtype, condition=condition)

    def noise(self, params, x, t, alpha, sigma):
        return self._wrapped(params).noise(params["model"], x, t, alpha, sigma)

    def __call__(self, params, x, t):
        return self._wrapped(params)(params["model"], x, t)


def class_conditional_noise_fn(model, classifier: Optional[PretrainedClassifier] = None, network_dtype=None):
    """``noise_fn(params, x, t)`` for a class-conditional and/or classifier-guided model.

    ``params`` is :func:`sampling_params` (model variables, per-sample labels, classifier variables
    and guidance scale), so the labels of each batch and the scale are arguments of the compiled
    sampler (other labels / scales reuse it).  The labels go to a class-conditional model
    (``model.conditioning == "class"``) and select the classifier's log-probabilities (see
    :func:`classifier_guidance` for the convention).

    Raises:
      ValueError: an unconditional model without a classifier (nothing uses the labels), or a
        classifier whose input shape or class count differs from the model's.
    """
    if model.conditioning != "class" and classifier is None:
        raise ValueError(f"model {model.source!r} is unconditional and no classifier is given: class labels are not "
                         "used (sample it with model.noise_fn())")
    if model.conditioning not in ("class", "none"):
        raise ValueError(f"model conditioning {model.conditioning!r} is not supported here; allowed: 'class', 'none'")
    if classifier is not None:
        if not isinstance(classifier, PretrainedClassifier):
            raise ValueError(f"classifier={classifier!r} is not allowed: give a load_classifier(...) record")
        if tuple(classifier.sample_shape) != tuple(model.sample_shape):
            raise ValueError(f"the classifier takes {classifier.sample_shape} images but the model makes "
                             f"{tuple(model.sample_shape)}")
        if model.num_classes is not None and model.num_classes != classifier.num_classes:
            raise ValueError(f"the model has {model.num_classes} classes but the classifier {classifier.num_classes}")
    return _ConditionalNoiseFn(model, classifier, network_dtype)


# -- converting ------------------------------------------------------------------------------------


def convert_to_checkpoint(src, dst, config, overwrite: bool = False, allow_nonfinite: bool = False) -> Dict[str, Any]:
    """``scire-jax convert model.pt out/ --config NAME|config.json``: convert strictly, save atomically.

    ``dst`` is checked before anything is read; on any error (truncated file, unknown architecture,
    renamed key, wrong shape, non-finite weights) a one-line ``ValueError`` is raised and nothing is
    left at ``dst``.  The saved ``config.json`` holds ``format``, ``family``, ``kwargs`` (official
    constructor kwargs), ``name``, ``image_size``, ``num_classes``, ``learn_sigma``, ``eps_channels``,
    ``schedule`` (the training schedule, see :func:`trained_schedule`), ``classifier`` and
    ``classifier_scale``; ``extra.json`` the source and its dtypes.

    Returns:
      A summary dict (``dst``, ``source_format``, ``model``, ``num_params``, ``prediction``,
      ``num_train_timesteps``, ``family``, ``name``).
    """
    from scire_jax.io import checkpoints
    from scire_jax.io.convert.adm import ARCHITECTURES, convert_adm

    src, dst = Path(src), Path(dst)
    checkpoints.check_destination(dst, overwrite)
    if not src.is_file():
        raise ValueError(f"source {str(src)!r} is not a file (expected a .pt / .safetensors state dict)")
    try:
        resolved = resolve_config(config)
        module, variables, info = convert_adm(src, _convertible(resolved))
        info["schedule"] = resolved["schedule"]
        checkpoints.check_finite_params(variables, info["source"], allow_nonfinite)
    except ValueError as error:
        raise ValueError(_one_line(error)) from None
    family, name = info["family"], resolved["name"]
    image_size = resolved["image_size"] if resolved.get("image_size") is not None else getattr(module, "image_size", None)
    if image_size is None and family != CLASSIFIER_FAMILY:
        raise ValueError(f"{str(src)!r}: improved-DDPM configs have no image_size kwarg; give 'image_size' beside the "
                         "kwargs in the config so that the sample shape is known")
    entry = ARCHITECTURES.get(name, {}) if name else {}
    config_out = {
        "format": CONFIG_FORMAT, "family": family, "name": name, "kwargs": module.to_config(),
        "image_size": image_size, "num_classes": info["num_classes"], "learn_sigma": bool(info["learn_sigma"]),
        "eps_channels": info["eps_channels"], "schedule": dict(info["schedule"]), "prediction": "noise",
        "classifier": entry.get("classifier"), "classifier_scale": entry.get("classifier_scale"),
    }
    extra = {"source": str(src), "source_format": "adm", "source_dtypes": info["source_dtypes"],
             "released_fp16": entry.get("released_fp16"), "checkpoint": entry.get("checkpoint"),
             "model": type(module).__name__}
    checkpoints.save(dst, variables, config_out, extra, overwrite=overwrite)
    return {"dst": str(dst), "source_format": "adm", "model": f"{family} {type(module).__name__}",
            "num_params": int(info["n_params"]), "prediction": "noise" if family != CLASSIFIER_FAMILY else "logits",
            "num_train_timesteps": int(info["schedule"]["num_diffusion_timesteps"]), "family": family, "name": name}
