"""Conversion of PyTorch diffusion checkpoints to :class:`scire_jax.models.UNet2D` parameters.

* :func:`convert_diffusers` -- a diffusers ``UNet2DModel`` folder (safetensors without torch, or .bin).
* :func:`convert_ddpm` -- an original DDPM checkpoint (``temb.dense``, ``down.{i}.block.{j}`` ...).
* :func:`schedule_from_scheduler_config` -- diffusers ``scheduler_config.json`` -> schedule + prediction.

Conversion is strict: a ``ValueError`` lists missing keys, unexpected keys and shape mismatches.
"""
from scire_jax.io.convert.ddpm import convert_ddpm, ddpm_to_diffusers_config
from scire_jax.io.convert.from_diffusers import convert_diffusers, convert_state_dict
from scire_jax.io.convert.scheduler import (
                                         betas_from_scheduler_config,
                                         prediction_from_scheduler_config,
                                         schedule_from_scheduler_config,
)
from scire_jax.io.convert.weights import load_state_dict

__all__ = [
    "convert_diffusers",
    "convert_ddpm",
    "convert_state_dict",
    "ddpm_to_diffusers_config",
    "load_state_dict",
    "schedule_from_scheduler_config",
    "betas_from_scheduler_config",
    "prediction_from_scheduler_config",
]
