"""Convert a diffusers ``UNet2DModel`` folder (``config.json`` + weights) to :class:`~scire_jax.models.UNet2D`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from scire_jax.io.convert.scheduler import read_json
from scire_jax.io.convert.weights import fill_params, load_state_dict
from scire_jax.models.unet2d import UNet2D

__all__ = ["convert_diffusers", "convert_state_dict", "find_unet_folder", "find_scheduler_config",
           "find_weights_file", "abstract_params", "check_sample_size", "load_weights"]

WEIGHT_NAMES = ("diffusion_pytorch_model{}.safetensors", "diffusion_pytorch_model{}.safetensors.index.json",
                "diffusion_pytorch_model{}.bin", "diffusion_pytorch_model{}.bin.index.json")

# Attention parameter names of old diffusers checkpoints (``AttentionBlock``), e.g. google/ddpm-*.
_LEGACY_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def find_unet_folder(folder) -> Path:
    """``folder`` itself if it holds ``config.json``, else its ``unet/`` subfolder (pipeline layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a directory")
    for candidate in (folder, folder / "unet"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"{str(folder)!r} is not a diffusers model folder: no config.json (nor unet/config.json)")


def find_scheduler_config(folder) -> Optional[Path]:
    """``scheduler_config.json`` of a diffusers model or pipeline folder, or ``None``."""
    folder = Path(folder)
    for candidate in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json",
                      folder.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    return None


def find_weights_file(folder, variant: Optional[str] = None) -> Path:
    """The weights file of a diffusers model folder (safetensors preferred over .bin)."""
    folder = Path(folder)
    suffix = f".{variant}" if variant else ""
    for pattern in WEIGHT_NAMES:
        candidate = folder / pattern.format(suffix)
        if candidate.is_file():
            return candidate
    raise ValueError(f"no diffusion_pytorch_model{suffix}.safetensors / .bin weights in {str(folder)!r}")


def abstract_params(module: UNet2D) -> Dict[str, Any]:
    """Shapes of the ``"params"`` collection of ``module`` (``jax.eval_shape``, nothing computed)."""
    size = 2 ** (len(module.block_out_channels) - 1)
    x = jax.ShapeDtypeStruct((1, size, size, module.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    if module.class_embed_type == "identity":
        labels = jax.ShapeDtypeStruct((1, module.time_embedding_dim or module.block_out_channels[0] * 4), jnp.float32)
    elif module.has_class_embedding:
        labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    else:
        labels = None
    variables = jax.eval_shape(lambda x, t, labels: module.init(jax.random.key(0), x, t, labels), x, t, labels)
    return variables["params"]


def _diffusers_candidates(key: str):
    yield key
    for new, old in _LEGACY_ATTENTION.items():
        marker = f".{new}."
        if ".attentions." in key and marker in key:
            yield key.replace(marker, f".{old}.")


def convert_state_dict(module: UNet2D, state_dict: Mapping[str, np.ndarray], candidates=_diffusers_candidates,
                       source: str = "checkpoint") -> Dict[str, Any]:
    """``{"params": ...}`` for ``module`` from a diffusers-layout state dict (strict; see ``fill_params``)."""
    return {"params": fill_params(abstract_params(module), state_dict, candidates, source=source)}


def check_sample_size(module: UNet2D, source: str = "model", required: bool = False) -> None:
    """Raise a ``ValueError`` unless ``module.sample_size`` is one the UNet can run at.

    Every down block but the last halves the resolution and the up path must meet the skip
    connections again, so the size must be divisible by ``2 ** (len(block_out_channels) - 1)``.
    ``required``: a missing ``sample_size`` is an error too (a checkpoint needs it to sample).
    """
    size = module.sample_size
    if size is None:
        if required:
            raise ValueError(f"{source}: its config has no sample_size, so the sample shape is unknown; "
                             "add \"sample_size\" to its config.json")
        return
    factor = 2 ** (len(module.block_out_channels) - 1)
    if size % factor:
        below, above = size - size % factor, size - size % factor + factor
        allowed = f"{below} or {above}" if below else f"{above}"
        raise ValueError(f"{source}: config['sample_size']={size} is not supported: with "
                         f"{len(module.block_out_channels)} down blocks it must be divisible by {factor} "
                         f"(e.g. {allowed})")


def load_weights(path) -> Dict[str, np.ndarray]:
    """``load_state_dict(path)``; a PyTorch file without torch is one ``ImportError`` naming the extra."""
    try:
        return load_state_dict(path)
    except ImportError as error:
        raise ImportError(f"reading {str(path)!r} (PyTorch format) needs torch: pip install 'scire-jax[torch]' "
                          "(or save the model as .safetensors, which loads without torch)") from error


def convert_diffusers(folder, dtype=None, variant: Optional[str] = None,
                      allow_nonfinite: bool = False) -> Tuple[UNet2D, Dict[str, Any], dict]:
    """Convert a diffusers ``UNet2DModel`` folder.

    Args:
      folder: a folder with ``config.json`` and ``diffusion_pytorch_model.safetensors`` (read without
        torch) or ``.bin`` (needs torch), or a pipeline folder with a ``unet/`` subfolder.  Legacy
        attention names (``query/key/value/proj_attn``) are accepted.
      dtype: computation dtype of the returned module (parameters stay float32).
      variant: weights variant, e.g. ``"fp16"`` for ``diffusion_pytorch_model.fp16.safetensors``.
      allow_nonfinite: accept NaN / infinite weights (rejected by default).

    Returns:
      ``(module, params, config)``: a :class:`UNet2D`, its variables ``{"params": ...}`` (numpy
      float32; ``module.apply(params, x_nhwc, t)``) and the normalised config dict
      (``module.to_config()``).

    Raises:
      ValueError: unreadable files, unsupported config values (naming the key), a ``sample_size``
        the network cannot run at, weights that do not match the config (listing missing /
        unexpected keys and shape mismatches) or non-finite weights.
      ImportError: ``.bin`` weights without torch installed (naming the extra to install).
    """
    from scire_jax.io.checkpoints import check_finite_params

    unet_folder = find_unet_folder(folder)
    module = UNet2D.from_config(read_json(unet_folder / "config.json"), dtype=dtype)
    check_sample_size(module, f"diffusers model {str(unet_folder)!r}")
    weights = find_weights_file(unet_folder, variant)
    state_dict = load_weights(weights)
    params = convert_state_dict(module, state_dict, source=f"checkpoint {weights.name!r}")
    check_finite_params(params, f"diffusers model {str(weights)!r}", allow_nonfinite)
    return module, params, module.to_config()
