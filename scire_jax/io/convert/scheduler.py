"""diffusers ``scheduler_config.json`` -> :func:`scire_jax.core.schedules.discrete` schedule + prediction type.

Supported: ``beta_schedule`` ``"linear"`` (``linspace(beta_start, beta_end, N)``), ``"scaled_linear"``
(``linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2``), ``"squaredcos_cap_v2"`` (the improved-DDPM
cosine ``alpha_bar``, betas capped at 0.999), or explicit ``trained_betas``; ``prediction_type``
``"epsilon"`` -> ``"noise"``, ``"sample"`` -> ``"x_start"``, ``"v_prediction"`` -> ``"v"``.  Other
keys (``timestep_spacing``, ``clip_sample``, ``variance_type``, ...) concern sampling only and are
ignored.  Betas are computed in float64 (diffusers uses float32; the difference in
``alphas_cumprod`` is below 1e-5 relative).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Tuple, Union

import numpy as np

from scire_jax.core import schedules

__all__ = ["PREDICTION_TYPES", "betas_from_scheduler_config", "prediction_from_scheduler_config",
           "schedule_from_scheduler_config", "read_json"]

PREDICTION_TYPES = {"epsilon": "noise", "sample": "x_start", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def read_json(path) -> dict:
    """Read a JSON object from ``path``; ``ValueError`` naming the file if it is missing or invalid."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ValueError(f"{str(path)!r} does not exist") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read JSON file {str(path)!r}: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(value).__name__}")
    return value


def _as_config(config: Union[Mapping[str, Any], str, Path]) -> Mapping[str, Any]:
    if isinstance(config, (str, Path)):
        return read_json(config)
    if not isinstance(config, Mapping):
        raise ValueError(f"scheduler config must be a dict or a JSON file path, got {type(config).__name__}")
    return config


def _number(config, key, default):
    value = config.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"scheduler config[{key!r}]={value!r} is not supported: expected a finite number")
    return float(value)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], np.float64)


def betas_from_scheduler_config(config: Union[Mapping[str, Any], str, Path]) -> np.ndarray:
    """The training betas (float64, shape ``(num_train_timesteps,)``) of a diffusers scheduler config."""
    config = _as_config(config)
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError(f"scheduler config['rescale_betas_zero_snr']={config['rescale_betas_zero_snr']!r} is not "
                         "supported: a zero terminal SNR has no finite log-SNR")
    trained = config.get("trained_betas")
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError("scheduler config['trained_betas'] is not supported: expected a list of >= 2 values in (0, 1)")
        return betas
    n = config.get("num_train_timesteps", 1000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"scheduler config['num_train_timesteps']={n!r} is not supported: expected an integer >= 2")
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        start, end = _number(config, "beta_start", 1e-4), _number(config, "beta_end", 0.02)
        betas = np.linspace(start, end, n, dtype=np.float64)
    elif kind == "scaled_linear":
        start, end = _number(config, "beta_start", 1e-4), _number(config, "beta_end", 0.02)
        if start < 0 or end < 0:
            raise ValueError(f"scheduler config beta_start={start!r} / beta_end={end!r} must be >= 0 for scaled_linear")
        betas = np.linspace(math.sqrt(start), math.sqrt(end), n, dtype=np.float64) ** 2
    elif kind == "squaredcos_cap_v2":
        betas = _cosine_betas(n)
    else:
        raise ValueError(f"scheduler config['beta_schedule']={kind!r} is not supported; allowed: {list(BETA_SCHEDULES)}")
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError(f"scheduler config beta_start / beta_end give betas outside (0, 1): "
                         f"min {betas.min()!r}, max {betas.max()!r}")
    return betas


def prediction_from_scheduler_config(config: Union[Mapping[str, Any], str, Path]) -> str:
    """``"noise"`` | ``"x_start"`` | ``"v"`` from ``prediction_type`` (default ``"epsilon"``)."""
    config = _as_config(config)
    kind = config.get("prediction_type", "epsilon")
    if kind is None:
        kind = "epsilon"
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"scheduler config['prediction_type']={kind!r} is not supported; allowed: {list(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[kind]


def schedule_from_scheduler_config(config: Union[Mapping[str, Any], str, Path]) -> Tuple[schedules.DiscreteSchedule, str]:
    """``(schedules.discrete(betas=...), prediction)`` from a diffusers scheduler config dict or JSON path.

    Example:
      >>> schedule, prediction = schedule_from_scheduler_config(
      ...     {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000})
      >>> schedule.total_n, prediction
      (1000, 'noise')
    """
    config = _as_config(config)
    return schedules.discrete(betas=betas_from_scheduler_config(config)), prediction_from_scheduler_config(config)
