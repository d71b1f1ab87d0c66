"""Convert OpenAI guided-diffusion (ADM) / improved-DDPM PyTorch checkpoints to the Flax modules of
:mod:`scire_jax.models.adm`.

The released checkpoints are plain ``model.state_dict()`` pickles (``128x128_diffusion.pt``,
``256x256_classifier.pt``, ``imagenet64_uncond_100M_1500K.pt`` ...).  They are read with
``torch.load(..., weights_only=True)`` (never arbitrary unpickling); ``.safetensors`` files need no
torch.  Conversion is strict: every key must be used and every parameter filled with the right shape,
otherwise one ``ValueError`` lists each missing key, unexpected key and shape mismatch on its own line
and names the file.  fp16 tensors (as saved after ``convert_to_fp16()``) are cast to float32.

:data:`ARCHITECTURES` holds the five configurations SciRE-Solver samples from (and the three released
noisy classifiers), with the training schedule each network expects.  Example::

    module, variables, info = convert_adm("256x256_diffusion.pt", "imagenet256")
    out = module.apply(variables, x_nhwc, t, y)           # (B, 256, 256, 6)
    eps = out[..., :info["in_channels"]]                  # learned sigma: first half is the noise
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from scire_jax.io.convert.weights import fill_params, load_state_dict, to_numpy_state_dict
from scire_jax.models.adm import FAMILIES, abstract_variables, from_config, torch_key, torch_state_dict_shapes

__all__ = ["ARCHITECTURES", "FAMILY_OF_CLASS", "convert_adm", "adm_config", "check_state_dict"]

_INDEX_SUFFIX = re.compile(r"_(\d+)(?=[_.]|$)")
_SHOW = 25  # problems of each kind listed in an error message before "... and N more"

# Training schedules.  ADM: linear betas 1e-4 .. 0.02 over 1000 steps, network time = step index.
_LINEAR_1000 = {
    "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_diffusion_timesteps": 1000,
    "time_input_scale": 1.0,
    "description": "linear betas 1e-4..0.02 over 1000 steps; network time t in [0, 999]",
}
# improved-DDPM ImageNet-64: cosine alpha-bar over 4000 steps, trained with rescale_timesteps=True.
_COSINE_4000 = {
    "beta_schedule": "cosine", "beta_start": None, "beta_end": None, "num_diffusion_timesteps": 4000,
    "time_input_scale": 1000.0 / 4000.0,
    "description": "cosine schedule over 4000 steps; network time = step * 1000 / 4000 (rescale_timesteps)",
}


def _adm(image_size, model_channels, channel_mult, attention_resolutions, num_classes, num_heads=4,
         num_head_channels=64, dropout=0.0):
    return {
        "image_size": image_size, "in_channels": 3, "model_channels": model_channels, "out_channels": 6,
        "num_res_blocks": 2, "attention_resolutions": attention_resolutions, "dropout": dropout,
        "channel_mult": channel_mult, "conv_resample": True, "dims": 2, "num_classes": num_classes,
        "use_checkpoint": False, "use_fp16": False, "num_heads": num_heads, "num_head_channels": num_head_channels,
        "num_heads_upsample": -1, "use_scale_shift_norm": True, "resblock_updown": True,
        "use_new_attention_order": False,
    }


def _classifier(image_size, channel_mult, attention_resolutions):
    return {
        "image_size": image_size, "in_channels": 3, "model_channels": 128, "out_channels": 1000,
        "num_res_blocks": 2, "attention_resolutions": attention_resolutions, "channel_mult": channel_mult,
        "use_fp16": False, "num_head_channels": 64, "use_scale_shift_norm": True, "resblock_updown": True,
        "pool": "attention",
    }


def _entry(family, kwargs, image_size, checkpoint, n_params, fp16, sciRE_config, schedule=_LINEAR_1000, **extra):
    num_classes = kwargs.get("num_classes") if family != "guided_diffusion_classifier" else kwargs["out_channels"]
    return {
        "family": family, "kwargs": kwargs, "image_size": image_size, "num_classes": num_classes,
        "learn_sigma": family != "guided_diffusion_classifier" and kwargs["out_channels"] == 2 * kwargs["in_channels"],
        "schedule": schedule, "checkpoint": checkpoint, "n_params": n_params,
        "released_fp16": fp16, "sciRE_config": sciRE_config, **extra,
    }


# Constructor kwargs exactly as SciRE-Solver's runners/diffusion.py passes them (released_configs.json);
# ``use_fp16`` is recorded under "released_fp16" and left False in the kwargs: the compute dtype is
# chosen with ``dtype=`` instead.
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    "imagenet64": _entry(
        "improved_ddpm",
        {"in_channels": 3, "model_channels": 128, "out_channels": 6, "num_res_blocks": 3,
         "attention_resolutions": [4, 8], "dropout": 0.0, "channel_mult": [1, 2, 3, 4], "conv_resample": True,
         "dims": 2, "use_checkpoint": False, "num_heads": 4, "num_heads_upsample": -1, "use_scale_shift_norm": True},
        64, "imagenet64_uncond_100M_1500K.pt", 121_063_942, False, "imagenet64.yml", schedule=_COSINE_4000,
        classifier=None, classifier_scale=0.0),
    "imagenet128": _entry(
        "guided_diffusion", _adm(128, 256, [1, 1, 2, 3, 4], [4, 8, 16], 1000, num_head_channels=-1),
        128, "128x128_diffusion.pt", 421_529_606, True, "imagenet128_guided.yml",
        classifier="imagenet128_classifier", classifier_scale=1.25),
    "imagenet256": _entry(
        "guided_diffusion", _adm(256, 256, [1, 1, 2, 2, 4, 4], [8, 16, 32], 1000),
        256, "256x256_diffusion.pt", 553_838_086, True, "imagenet256_guided.yml",
        classifier="imagenet256_classifier", classifier_scale=2.5),
    "imagenet512": _entry(
        "guided_diffusion", _adm(512, 256, [0.5, 1, 1, 2, 2, 4, 4], [16, 32, 64], 1000),
        512, "512x512_diffusion.pt", 558_997_638, False, "imagenet512_guided.yml",
        classifier="imagenet512_classifier", classifier_scale=4.0),
    "lsun_bedroom": _entry(
        "guided_diffusion", _adm(256, 256, [1, 1, 2, 2, 4, 4], [8, 16, 32], None, dropout=0.1),
        256, "lsun_bedroom.pt", 552_814_086, True, "bedroom_guided.yml", classifier=None, classifier_scale=0.0),
    "imagenet128_classifier": _entry(
        "guided_diffusion_classifier", _classifier(128, [1, 1, 2, 3, 4], [4, 8, 16]),
        128, "128x128_classifier.pt", 42_568_040, True, "imagenet128_guided.yml", classifier_scale=1.25),
    "imagenet256_classifier": _entry(
        "guided_diffusion_classifier", _classifier(256, [1, 1, 2, 2, 4, 4], [8, 16, 32]),
        256, "256x256_classifier.pt", 54_096_360, True, "imagenet256_guided.yml", classifier_scale=2.5),
    "imagenet512_classifier": _entry(
        "guided_diffusion_classifier", _classifier(512, [0.5, 1, 1, 2, 2, 4, 4], [16, 32, 64]),
        512, "512x512_classifier.pt", 54_448_360, False, "imagenet512_guided.yml", classifier_scale=4.0),
}

# Class names as the reference files write them -> family.
FAMILY_OF_CLASS = {
    "guided_diffusion.unet.UNetModel": "guided_diffusion",
    "guided_diffusion.unet.EncoderUNetModel": "guided_diffusion_classifier",
    "improved_ddpm.unet.UNetModel": "improved_ddpm",
    "improved_diffusion.unet.UNetModel": "improved_ddpm",
}


def adm_config(config: Union[str, Path, Mapping[str, Any]]) -> Dict[str, Any]:
    """Resolve ``config`` to ``{"name", "family", "kwargs", ...}``.

    Args:
      config: an :data:`ARCHITECTURES` name; a dict of official constructor kwargs plus ``"family"``;
        a dict ``{"class": "guided_diffusion.unet.UNetModel", "constructor_kwargs": {...}}`` (the
        reference-file form); or the path of a JSON file holding either dict.

    Raises:
      ValueError: an unknown name (listing the allowed names), an unreadable JSON file, or a dict
        without a known family.
    """
    if isinstance(config, (str, Path)):
        if isinstance(config, str) and config in ARCHITECTURES:
            return {"name": config, **copy.deepcopy(ARCHITECTURES[config])}
        path = Path(config)
        if not (path.suffix == ".json" and path.is_file()):
            raise ValueError(f"unknown ADM architecture {str(config)!r}; allowed names: {sorted(ARCHITECTURES)} "
                             "(or a dict / JSON file of constructor kwargs with 'family')")
        try:
            config = json.loads(path.read_text())
        except Exception as error:  # noqa: BLE001 - reported as a ValueError naming the file
            raise ValueError(f"cannot read ADM config {str(path)!r}: {error}") from error
    if not isinstance(config, Mapping):
        raise ValueError(f"ADM config must be a name, a dict or a JSON path, got {type(config).__name__}")
    config = dict(config)
    if "constructor_kwargs" in config:
        cls = config.get("class")
        if cls not in FAMILY_OF_CLASS and "family" not in config:
            raise ValueError(f"ADM config class {cls!r} is unknown; allowed: {sorted(FAMILY_OF_CLASS)}")
        family = config.get("family", FAMILY_OF_CLASS.get(str(cls)))
        kwargs = dict(config["constructor_kwargs"])
    else:
        family = config.pop("family", None)
        kwargs = config
    if family not in FAMILIES:
        raise ValueError(f"ADM config needs 'family' in {sorted(FAMILIES)}, got {family!r}")
    out_channels, in_channels = kwargs.get("out_channels"), kwargs.get("in_channels")
    return {
        "name": None, "family": family, "kwargs": kwargs, "image_size": kwargs.get("image_size"),
        "num_classes": out_channels if family == "guided_diffusion_classifier" else kwargs.get("num_classes"),
        "learn_sigma": family != "guided_diffusion_classifier" and in_channels is not None
        and out_channels == 2 * in_channels,
        "schedule": _COSINE_4000 if family == "improved_ddpm" else _LINEAR_1000,
    }


def _problems_message(source: str, missing: List[str], unexpected: List[str], mismatched: List[str]) -> str:
    head = (f"{source} does not match the architecture: {len(missing)} missing keys, {len(unexpected)} unexpected "
            f"keys, {len(mismatched)} shape/dtype mismatches")
    lines = [head]
    for kind, items in (("missing", [f"missing key: {k}" for k in missing]),
                        ("unexpected", [f"unexpected key: {k}" for k in unexpected]), ("mismatched", mismatched)):
        lines += ["  " + item for item in items[:_SHOW]]  # each kind capped, so all kinds stay visible
        if len(items) > _SHOW:
            lines.append(f"  ... and {len(items) - _SHOW} more {kind}")
    return "\n".join(lines)


def check_state_dict(expected: Mapping[str, Tuple[int, ...]], state_dict: Mapping[str, np.ndarray],
                     source: str = "checkpoint") -> None:
    """Raise one ``ValueError`` (one line per problem) unless ``state_dict`` has exactly the expected keys/shapes."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = []
    for key, shape in expected.items():
        if key not in state_dict:
            continue
        array = state_dict[key]
        if tuple(array.shape) != tuple(shape):
            mismatched.append(f"shape mismatch: {key}: checkpoint {tuple(array.shape)} vs expected {tuple(shape)}")
        elif not np.issubdtype(np.asarray(array).dtype, np.floating):
            mismatched.append(f"dtype mismatch: {key}: checkpoint {np.asarray(array).dtype} is not floating point")
    if missing or unexpected or mismatched:
        raise ValueError(_problems_message(source, missing, unexpected, mismatched))


def convert_adm(path_or_state_dict, config: Union[str, Path, Mapping[str, Any]], dtype=None,
                param_dtype=np.float32) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    """Convert a guided-diffusion / improved-DDPM checkpoint, strictly.

    Args:
      path_or_state_dict: a ``.pt/.pth/.bin/.ckpt`` file (``torch.load(weights_only=True)``), a
        ``.safetensors`` file (no torch needed), or a ``{name: tensor or ndarray}`` mapping, with the
        original key names (``input_blocks.1.0.in_layers.0.weight`` ...).  float16 tensors are accepted.
      config: see :func:`adm_config` (an :data:`ARCHITECTURES` name such as ``"imagenet256"``).
      dtype: compute dtype of the returned module (default float32; ``jnp.bfloat16`` / ``jnp.float16``
        run the torso in half precision like the originals' ``convert_to_fp16()``).
      param_dtype: dtype of the returned parameters (float32).

    Returns:
      ``(module, variables, info)``: the Flax module (NHWC; ``module.apply(variables, x, t[, y])``),
      ``{"params": ...}`` as numpy arrays, and ``info`` (name, family, kwargs, image_size,
      num_classes, learn_sigma, in/out channels, schedule with ``time_input_scale``, eps channels,
      source, source dtypes, parameter count, plus the :data:`ARCHITECTURES` entry's fields).

    Raises:
      ValueError: unreadable / truncated file (naming it), unknown architecture name, invalid
        kwargs, or a state dict that does not match (one line per missing key, unexpected key and
        shape mismatch).
    """
    resolved = adm_config(config)
    module = from_config(resolved["kwargs"], resolved["family"], dtype=jnp.float32 if dtype is None else dtype,
                         param_dtype=param_dtype)
    if isinstance(path_or_state_dict, (str, Path)):
        source = f"ADM checkpoint {str(path_or_state_dict)!r}"
        state_dict = load_state_dict(path_or_state_dict)  # ValueError naming the file if unreadable
    elif isinstance(path_or_state_dict, Mapping):
        source = "ADM state dict"
        state_dict = to_numpy_state_dict(path_or_state_dict)
    else:
        raise ValueError(f"expected a checkpoint path or a state dict, got {type(path_or_state_dict).__name__}")
    if resolved["name"] is not None:
        source += f" (architecture {resolved['name']!r})"
    variables = abstract_variables(module)
    check_state_dict(torch_state_dict_shapes(module, variables), state_dict, source)
    source_dtypes = sorted({str(np.asarray(v).dtype) for v in state_dict.values()})
    # torch Conv1d(kernel 1) weights (out, in, 1) are Flax Dense kernels: drop the kernel axis so
    # fill_params can transpose them like nn.Linear weights.
    flat = traverse_util.flatten_dict(dict(variables["params"]))
    conv1d = {torch_key(p) for p, leaf in flat.items() if p[-1] == "kernel" and len(leaf.shape) == 2}
    prepared = {k: (v[..., 0] if k in conv1d and v.ndim == 3 else v) for k, v in state_dict.items()}
    params = fill_params(variables["params"], prepared, candidates=lambda key: (_torch_name(key),),
                         dtype=param_dtype, source=source)
    n_params = int(sum(np.prod(v.shape) for v in state_dict.values()))
    info = {k: v for k, v in resolved.items() if k != "kwargs"}
    info.update({
        "kwargs": module.to_config(), "in_channels": module.in_channels, "out_channels": module.out_channels,
        # the noise prediction is the first in_channels outputs (all of them without learned sigma)
        "eps_channels": None if resolved["family"] == "guided_diffusion_classifier"
        else module.in_channels if resolved["learn_sigma"] else module.out_channels,
        "layout": "NHWC", "source": source, "source_dtypes": source_dtypes, "n_params": n_params,
        "dtype": str(jnp.dtype(module.dtype)),
    })
    return module, {"params": params}, info


def _torch_name(joined_key: str) -> str:
    """``fill_params`` joins the Flax path with ``.`` (``input_blocks_4_1.qkv.weight``); our module names
    carry the torch indices as ``_N`` suffixes, which become ``.N`` (``input_blocks.4.1.qkv.weight``)."""
    return _INDEX_SUFFIX.sub(r".\1", joined_key)
