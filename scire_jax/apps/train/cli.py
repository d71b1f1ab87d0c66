"""``scire-jax train``: the command line of :mod:`scire_jax.apps.train`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Dict, Optional, Sequence

import numpy as np

from scire_jax.apps.train.config import DATASETS, TrainConfig
from scire_jax.apps.train.export import export
from scire_jax.apps.train.loop import train

__all__ = ["add_train_parser", "config_from_args", "run_train", "main"]

DESCRIPTION = ("DDPM noise-prediction training of a small image diffusion model (optax AdamW, EMA, resumable orbax "
               "checkpoints, log.csv, PNG previews); --export writes a model for load_pretrained().")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser("train", help="train a small DDPM noise-prediction model (needs mlxtend/scikit-learn)",
                                   description=DESCRIPTION)
    _add_train_arguments(parser)
    parser.set_defaults(func=run_train)
    return parser


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--out", required=True, help="run folder (checkpoints, log.csv, samples)")
    parser.add_argument("--config", help="JSON file of TrainConfig fields (command-line flags override it)")
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--image-size", type=int, help=f"default {defaults.image_size}")
    parser.add_argument("--steps", type=int, help=f"default {defaults.steps}")
    parser.add_argument("--batch-size", type=int, help=f"default {defaults.batch_size}")
    parser.add_argument("--learning-rate", type=float, help=f"default {defaults.learning_rate}")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--ema-decay", type=float)
    parser.add_argument("--seed", type=int, help=f"default {defaults.seed}")
    parser.add_argument("--save-every", type=int)
    parser.add_argument("--sample-every", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--stop-at", type=int, help="stop (with a checkpoint) at this step")
    parser.add_argument("--max-wall-min", type=float, help="stop (with a checkpoint) after this many minutes")
    parser.add_argument("--no-resume", action="store_true", help="start over even if out/ has checkpoints")
    parser.add_argument("--extend", action="store_true",
                        help="resume a run with a larger --steps: a second stage (warm restart of the cosine decay)")
    parser.add_argument("--export", help="after training, save the EMA model for load_pretrained() here")


def config_from_args(args) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``args``: ``--config`` JSON, then the flags; a ``ValueError`` names a bad field."""
    values: Dict[str, Any] = {}
    if getattr(args, "config", None):
        with open(args.config) as handle:
            values.update(json.load(handle))
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = value
    if values.get("dataset") == "digits" and "image_size" not in values:
        values["image_size"] = 8
    config = TrainConfig.from_dict(values)
    if "model" not in values and config.image_size is not None:
        config.model = dict(config.model, sample_size=config.image_size)
    return config


def run_train(args) -> int:
    """Run the ``train`` sub-command for parsed ``args``."""
    config = config_from_args(args)
    max_wall = None if args.max_wall_min is None else 60.0 * args.max_wall_min
    state = train(config, args.out, resume=not args.no_resume, stop_at=args.stop_at, max_wall_s=max_wall,
                  extend=bool(getattr(args, "extend", False)))
    tail = float(np.mean(state.losses[-200:])) if len(state.losses) else float("nan")
    print(f"stopped at step {state.step}; mean loss of the last 200 steps {tail:.5f}")
    if args.export:
        export(state, args.export)
        print(f"exported EMA model to {args.export}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m scire_jax.apps.train ...`` (the same flags as ``scire-jax train``)."""
    parser = argparse.ArgumentParser(prog="python -m scire_jax.apps.train", description=DESCRIPTION)
    _add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except ValueError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
