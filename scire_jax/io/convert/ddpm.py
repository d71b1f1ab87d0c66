"""Convert original DDPM checkpoints (Ho et al.; the ``pytorch_diffusion`` / DDIM ``Model`` layout).

Key layout (``L`` levels, ``i`` = level, 0 = full resolution)::

    temb.dense.{0,1}.*   conv_in.*   norm_out.*   conv_out.*
    down.{i}.block.{j}.{norm1,conv1,temb_proj,norm2,conv2,nin_shortcut}.*
    down.{i}.attn.{j}.{norm,q,k,v,proj_out}.*      (q/k/v/proj_out are 1x1 convolutions)
    down.{i}.downsample.conv.*                      (i < L - 1)
    mid.block_1.*  mid.attn_1.*  mid.block_2.*
    up.{i}.block.{j}.*  up.{i}.attn.{j}.*  up.{i}.upsample.conv.*   (i > 0)

Model config keys (flat, or the ``model`` section of a DDIM-style config with ``data.image_size``
and an optional ``diffusion`` section): ``ch``, ``out_ch``, ``ch_mult``, ``num_res_blocks``,
``attn_resolutions``, ``resolution``, ``in_channels`` (default 3), ``dropout`` (ignored at
inference), ``resamp_with_conv`` (must be true), and the extension ``norm_num_groups`` (default 32).
The network equals a diffusers ``UNet2DModel`` with ``flip_sin_to_cos=False``, ``freq_shift=1``,
``downsample_padding=0``, ``norm_eps=1e-6``, single-head attention.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np

from scire_jax.io.convert.from_diffusers import convert_state_dict
from scire_jax.io.convert.scheduler import read_json
from scire_jax.io.convert.weights import load_state_dict, load_torch_object, to_numpy_state_dict
from scire_jax.models.unet2d import UNet2D

__all__ = ["convert_ddpm", "ddpm_model_config", "ddpm_to_diffusers_config", "ddpm_betas", "diffusers_key_to_ddpm"]

_RESNET = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2", "conv2": "conv2",
           "conv_shortcut": "nin_shortcut"}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_TOP = {"conv_in": "conv_in", "conv_norm_out": "norm_out", "conv_out": "conv_out",
        "time_embedding.linear_1": "temb.dense.0", "time_embedding.linear_2": "temb.dense.1"}
_BLOCK_KEY = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)\.(weight|bias)$")
_MID_KEY = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)\.(weight|bias)$")
_TOP_KEY = re.compile(r"^(.+)\.(weight|bias)$")


def diffusers_key_to_ddpm(key: str, levels: int) -> str:
    """Name in the original DDPM layout of a diffusers ``UNet2DModel`` state-dict key."""
    match = _BLOCK_KEY.match(key)
    if match:
        side, block, kind, index, layer, leaf = match.groups()
        level = int(block) if side == "down" else levels - 1 - int(block)
        if kind == "resnets":
            return f"{side}.{level}.block.{index}.{_RESNET.get(layer, layer)}.{leaf}"
        if kind == "attentions":
            return f"{side}.{level}.attn.{index}.{_ATTENTION.get(layer, layer)}.{leaf}"
        return f"{side}.{level}.{'downsample' if side == 'down' else 'upsample'}.{layer}.{leaf}"
    match = _MID_KEY.match(key)
    if match:
        kind, index, layer, leaf = match.groups()
        if kind == "resnets":
            return f"mid.block_{int(index) + 1}.{_RESNET.get(layer, layer)}.{leaf}"
        return f"mid.attn_{int(index) + 1}.{_ATTENTION.get(layer, layer)}.{leaf}"
    match = _TOP_KEY.match(key)
    if match and match.group(1) in _TOP:
        return f"{_TOP[match.group(1)]}.{match.group(2)}"
    return key


def ddpm_model_config(config: Union[Mapping[str, Any], str, Path]) -> Dict[str, Any]:
    """The flat model config of a DDPM config (flat dict, DDIM-style nested dict, or JSON path)."""
    if isinstance(config, (str, Path)):
        config = read_json(config)
    if not isinstance(config, Mapping):
        raise ValueError(f"DDPM config must be a dict or a JSON file path, got {type(config).__name__}")
    if isinstance(config.get("model"), Mapping):
        model = dict(config["model"])
        data: Mapping[str, Any] = config["data"] if isinstance(config.get("data"), Mapping) else {}
        if "resolution" not in model and "image_size" in data:
            model["resolution"] = data["image_size"]
        if "in_channels" not in model and "channels" in data:
            model["in_channels"] = data["channels"]
        return model
    return dict(config)


def _int(config, key, default=None, minimum=1):
    value = config.get(key, default)
    if value is None:
        raise ValueError(f"DDPM config is missing {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"DDPM config[{key!r}]={value!r} is not supported: expected an integer >= {minimum}")
    return int(value)


def _int_list(config, key, allow_empty=False):
    value = config.get(key)
    if value is None:
        raise ValueError(f"DDPM config is missing {key!r}")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or (not value and not allow_empty) \
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"DDPM config[{key!r}]={value!r} is not supported: expected a list of positive integers")
    return [int(v) for v in value]


def ddpm_to_diffusers_config(config: Union[Mapping[str, Any], str, Path]) -> Dict[str, Any]:
    """Equivalent diffusers ``UNet2DModel`` config of a DDPM model config (see the module docstring)."""
    model = ddpm_model_config(config)
    ch = _int(model, "ch")
    ch_mult = _int_list(model, "ch_mult")
    num_res_blocks = _int(model, "num_res_blocks")
    attn_resolutions = _int_list(model, "attn_resolutions", allow_empty=True)
    resolution = _int(model, "resolution")
    in_channels = _int(model, "in_channels", 3)
    out_ch = _int(model, "out_ch", in_channels)
    groups = _int(model, "norm_num_groups", 32)
    if not model.get("resamp_with_conv", True):
        raise ValueError(f"DDPM config['resamp_with_conv']={model['resamp_with_conv']!r} is not supported: "
                         "only convolutional resampling is")
    levels = len(ch_mult)
    if resolution % 2 ** (levels - 1):
        raise ValueError(f"DDPM config['resolution']={resolution} is not divisible by 2**{levels - 1}")
    has_attention = [resolution // 2 ** i in attn_resolutions for i in range(levels)]
    return {
        "_class_name": "UNet2DModel",
        "sample_size": resolution,
        "in_channels": in_channels,
        "out_channels": out_ch,
        "block_out_channels": [ch * m for m in ch_mult],
        "layers_per_block": num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)],
        "attention_head_dim": None,
        "norm_num_groups": groups,
        "norm_eps": 1e-6,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "downsample_padding": 0,
        "time_embedding_type": "positional",
        "resnet_time_scale_shift": "default",
        "act_fn": "silu",
        "mid_block_scale_factor": 1,
        "center_input_sample": False,
    }


def ddpm_betas(config: Union[Mapping[str, Any], str, Path, None] = None) -> np.ndarray:
    """Training betas of a DDPM config: its ``diffusion`` section if any, else DDPM's linear 1e-4..0.02, 1000."""
    if isinstance(config, (str, Path)):
        config = read_json(config)
    section = (config or {}).get("diffusion") if isinstance(config, Mapping) else None
    section = section if isinstance(section, Mapping) else {}
    kind = section.get("beta_schedule", "linear")
    start, end = section.get("beta_start", 1e-4), section.get("beta_end", 0.02)
    n = section.get("num_diffusion_timesteps", 1000)
    if kind not in ("linear", "quad", "const"):
        raise ValueError(f"DDPM config['diffusion']['beta_schedule']={kind!r} is not supported; allowed: linear, quad, const")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"DDPM config['diffusion']['num_diffusion_timesteps']={n!r} is not supported")
    if kind == "linear":
        return np.linspace(start, end, n, dtype=np.float64)
    if kind == "quad":
        return np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    return np.full(n, float(end))


def _select_state_dict(obj, ema: bool):
    """The model state dict inside what ``torch.load`` returned (DDIM saves ``[model, optim, ..., ema]``)."""
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise ValueError("DDPM checkpoint is an empty list")
        obj = obj[-1] if ema else obj[0]
    if isinstance(obj, Mapping):
        for key in ("ema", "state_dict", "model") if ema else ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    state_dict = to_numpy_state_dict(obj)
    if state_dict and all(key.startswith("module.") for key in state_dict):  # nn.DataParallel
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict


def convert_ddpm(state_dict_or_path, config: Union[Mapping[str, Any], str, Path], dtype=None,
                 ema: bool = True) -> Tuple[UNet2D, Dict[str, Any], Dict[str, Any]]:
    """Convert an original-DDPM-layout checkpoint.

    Args:
      state_dict_or_path: ``{name: tensor or ndarray}``, or a checkpoint path (``.safetensors``
        without torch; ``.ckpt/.pth/.pt/.bin`` with torch, ``weights_only=True``).  A list (DDIM's
        ``[model, optimizer, epoch, step, ema]``) gives its last entry if ``ema`` else its first.
      config: DDPM model config (see the module docstring), dict or JSON path.
      dtype: computation dtype of the returned module.
      ema: which state dict to take from a list-type checkpoint.

    Returns:
      ``(module, params, config)`` with the equivalent diffusers-style config dict.
    """
    diffusers_config = ddpm_to_diffusers_config(config)
    module = UNet2D.from_config(diffusers_config, dtype=dtype)
    source = "DDPM checkpoint"
    if isinstance(state_dict_or_path, (str, Path)):
        path = Path(state_dict_or_path)
        source = f"DDPM checkpoint {path.name!r}"
        if path.name.endswith(".safetensors"):
            state_dict = load_state_dict(path)
        else:
            if not path.is_file():
                raise ValueError(f"weights file {str(path)!r} does not exist")
            state_dict = _select_state_dict(load_torch_object(path), ema)
    else:
        state_dict = _select_state_dict(state_dict_or_path, ema)
    levels = len(module.block_out_channels)
    params = convert_state_dict(module, state_dict, candidates=lambda key: (diffusers_key_to_ddpm(key, levels),),
                                source=source)
    return module, params, module.to_config()
