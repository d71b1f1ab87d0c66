"""What determines a training run: :class:`TrainConfig` (validated), the model and the DDPM betas."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["DATASETS", "DEFAULT_UNET_CONFIG", "TrainConfig", "build_model", "ddpm_betas"]

DATASETS = ("mnist", "digits")

# The shipped ``mnist`` model's network: a 1.1 M parameter diffusers-style UNet2DModel config for
# 16x16 single-channel digits (docs/embedded_model.md).
DEFAULT_UNET_CONFIG: Dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 32,
}


def _check(name: str, value, allowed: bool, rule: str) -> None:
    if not allowed:
        raise ValueError(f"TrainConfig.{name}={value!r} is not allowed: {rule}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run (saved as ``config.json`` in the run folder).

    ``model`` is a diffusers-style ``UNet2DModel`` config dict for
    :meth:`scire_jax.models.unet2d.UNet2D.from_config`.  Every field is checked when the config is
    made; a bad value raises a ``ValueError`` that names the field.
    """

    dataset: str = "mnist"
    image_size: Optional[int] = 16
    model: Dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_UNET_CONFIG))
    # diffusion
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # optimisation
    steps: int = 6000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    end_learning_rate_factor: float = 0.05
    weight_decay: float = 1e-4
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    # bookkeeping
    save_every: int = 500
    sample_every: int = 1000
    num_samples: int = 64
    sample_steps: int = 50
    log_every: int = 50

    def __post_init__(self):
        _check("dataset", self.dataset, self.dataset in DATASETS, f"allowed: {', '.join(DATASETS)}")
        _check("image_size", self.image_size, self.image_size is None or (_is_int(self.image_size)
                                                                           and self.image_size >= 1),
               "it must be None or an integer >= 1")
        _check("model", self.model, isinstance(self.model, dict), "it must be a UNet2DModel config dict")
        at_least = {"num_train_timesteps": 1, "steps": 1, "batch_size": 1, "warmup_steps": 0, "save_every": 0,
                    "sample_every": 0, "num_samples": 1, "sample_steps": 1, "log_every": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            _check(name, value, _is_int(value) and value >= low, f"it must be an integer >= {low}")
        _check("seed", self.seed, _is_int(self.seed), "it must be an integer")
        positive = ("learning_rate", "grad_clip")
        for name in positive:
            value = getattr(self, name)
            _check(name, value, _is_number(value) and value > 0, "it must be > 0")
        for name in ("weight_decay", "end_learning_rate_factor"):
            value = getattr(self, name)
            _check(name, value, _is_number(value) and value >= 0, "it must be >= 0")
        for name in ("adam_b1", "adam_b2", "ema_decay"):
            value = getattr(self, name)
            _check(name, value, _is_number(value) and 0 <= value < 1, "it must be in [0, 1)")
        _check("beta_start", self.beta_start, _is_number(self.beta_start) and 0 < self.beta_start < 1,
               "it must be in (0, 1)")
        _check("beta_end", self.beta_end, _is_number(self.beta_end) and self.beta_start <= self.beta_end < 1,
               f"it must be in [beta_start={self.beta_start!r}, 1)")

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**values)


def build_model(model_config: Dict[str, Any]):
    """The Flax module of a model config: ``UNet2D.from_config(config)``."""
    cfg = dict(model_config)
    arch = cfg.pop("arch", "unet2d")
    if arch != "unet2d":
        raise ValueError(f"model arch {arch!r} is not allowed; allowed: 'unet2d' (a UNet2DModel config)")
    from scire_jax.models.unet2d import UNet2D

    return UNet2D.from_config(cfg)


def ddpm_betas(config: TrainConfig) -> np.ndarray:
    """The float64 DDPM betas of the config (``linspace(beta_start, beta_end, N)``)."""
    return np.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=np.float64)
