"""Export a training run's EMA weights as a scire-jax checkpoint for :func:`scire_jax.load_pretrained`."""

from __future__ import annotations

from typing import Any, Dict, Optional

import jax
import numpy as np

from scire_jax.apps.train.config import build_model, ddpm_betas
from scire_jax.apps.train.loop import TrainState

__all__ = ["export"]


def export(state: TrainState, path: str, extra: Optional[Dict[str, Any]] = None, overwrite: bool = True) -> None:
    """Save the EMA parameters with the model config and the schedule for :mod:`scire_jax.io.pretrained`.

    The checkpoint config is ``{"model": <UNet2D config>, "schedule": {"type": "discrete", "betas":
    [...]}, "prediction": "noise", "time_input": "discrete", "image_shape": [H, W, C], "train":
    <TrainConfig>}``; ``extra`` (``info.json``-style metadata) gets the step and the mean loss of the
    last 200 steps.
    """
    from scire_jax.io import checkpoints

    model_config = build_model(state.config.model).to_config()  # explicit diffusers-style config
    config = {
        "model": model_config,
        "schedule": {"type": "discrete", "betas": [float(b) for b in ddpm_betas(state.config)]},
        "prediction": "noise",
        "time_input": "discrete",
        "image_shape": None,
        "train": state.config.to_dict(),
    }
    size = state.config.image_size
    if size is not None:
        config["image_shape"] = [size, size, int(model_config.get("in_channels", 1))]
    info = {"step": int(state.step), "final_loss": float(np.mean(state.losses[-200:])) if len(state.losses) else None}
    info.update(extra or {})
    params = jax.device_get(state.ema_params)
    checkpoints.save(path, params, config, info, overwrite=overwrite)
