"""``scire-jax convert SRC DST``: a diffusers folder or DDPM checkpoint -> scire_jax checkpoint directory.

The result is a :mod:`scire_jax.io.checkpoints` directory (orbax params + UNet config + schedule) that
:func:`scire_jax.io.pretrained.load_pretrained` reads.  Everything is converted and checked in memory
first; ``DST`` is written atomically, so on any error nothing is left there.

Wiring into a parent parser::

    subparsers = parser.add_subparsers()
    add_convert_parser(subparsers)      # sets func=run_convert
    args = parser.parse_args(); args.func(args)

Standalone: ``python -m scire_jax.apps.convert_cli SRC DST [--ddpm-config CFG.json] [--overwrite]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

__all__ = ["convert_main", "add_convert_parser", "run_convert", "main"]


def convert_main(src, dst, overwrite: bool = False, ddpm_config: Union[str, Path, dict, None] = None,
                 scheduler_config: Union[str, Path, dict, None] = None, ema: bool = True) -> Dict[str, Any]:
    """Convert ``src`` and save it at ``dst`` with :func:`scire_jax.io.checkpoints.save`.

    Args:
      src: a diffusers ``UNet2DModel`` (or pipeline) folder; with ``ddpm_config``, an original-DDPM
        checkpoint file.
      dst: the checkpoint directory to create (must not exist or be empty, unless ``overwrite``).
      overwrite: replace an existing ``dst``.
      ddpm_config: DDPM model config (dict or JSON path); selects the DDPM path.  Its optional
        ``diffusion`` section gives the betas (default: linear 1e-4 .. 0.02, 1000 steps).
      scheduler_config: diffusers scheduler config (dict or JSON path) overriding the one found
        in ``src`` (required when ``src`` has none).
      ema: for DDIM-style list checkpoints, take the EMA weights (last entry).

    Returns:
      A summary dict (``dst``, ``source_format``, ``num_params``, ``prediction``, ``num_train_timesteps``).

    Raises:
      ValueError: unreadable or mismatching inputs (nothing is written at ``dst``).
      FileExistsError: ``dst`` is not empty and ``overwrite`` is false.
    """
    from scire_jax.io import checkpoints
    from scire_jax.io.convert.ddpm import convert_ddpm, ddpm_betas
    from scire_jax.io.convert.from_diffusers import convert_diffusers, find_scheduler_config, find_unet_folder
    from scire_jax.io.convert.scheduler import betas_from_scheduler_config, prediction_from_scheduler_config, read_json

    src, dst = Path(src), Path(dst)
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"{str(dst)!r} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    if ddpm_config is not None:
        if isinstance(ddpm_config, (str, Path)):
            ddpm_config = read_json(ddpm_config)
        module, params, config = convert_ddpm(src, ddpm_config, ema=ema)
        source_format = "ddpm"
        if scheduler_config is not None:
            betas, prediction = betas_from_scheduler_config(scheduler_config), prediction_from_scheduler_config(scheduler_config)
        else:
            betas, prediction = ddpm_betas(ddpm_config), "noise"
    else:
        unet_folder = find_unet_folder(src)
        if scheduler_config is None:
            scheduler_config = find_scheduler_config(src) or find_scheduler_config(unet_folder)
        if scheduler_config is None:
            raise ValueError(f"{str(src)!r} has no scheduler_config.json (nor scheduler/scheduler_config.json); "
                             "pass scheduler_config (--scheduler-config)")
        betas = betas_from_scheduler_config(scheduler_config)
        prediction = prediction_from_scheduler_config(scheduler_config)
        module, params, config = convert_diffusers(unet_folder)
        source_format = "diffusers"
    extra = {"betas": [float(b) for b in np.asarray(betas, np.float64)], "prediction": prediction,
             "source": str(src), "source_format": source_format, "model": "UNet2D"}
    checkpoints.save(dst, params, config, extra, overwrite=overwrite)
    num_params = int(sum(np.size(leaf) for leaf in _leaves(params)))
    return {"dst": str(dst), "source_format": source_format, "num_params": num_params,
            "prediction": prediction, "num_train_timesteps": len(extra["betas"])}


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``convert`` sub-command to an ``argparse`` subparsers object (sets ``func=run_convert``)."""
    parser = subparsers.add_parser(
        "convert", help="convert a diffusers UNet2DModel folder or a DDPM checkpoint to a scire_jax checkpoint",
        description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    parser.set_defaults(func=run_convert)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="diffusers model/pipeline folder, or a DDPM checkpoint file with --ddpm-config")
    parser.add_argument("dst", help="checkpoint directory to create")
    parser.add_argument("--ddpm-config", default=None, metavar="JSON",
                        help="DDPM model config (JSON file): SRC is an original-DDPM-layout checkpoint")
    parser.add_argument("--scheduler-config", default=None, metavar="JSON",
                        help="diffusers scheduler_config.json to use instead of the one in SRC")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    parser.add_argument("--no-ema", dest="ema", action="store_false",
                        help="for list-type DDPM checkpoints, take the first (non-EMA) state dict")


def run_convert(args: argparse.Namespace) -> int:
    """Run ``convert`` from parsed arguments; prints a summary (or the error) and returns an exit code."""
    try:
        summary = convert_main(args.src, args.dst, overwrite=args.overwrite, ddpm_config=args.ddpm_config,
                               scheduler_config=args.scheduler_config, ema=getattr(args, "ema", True))
    except (ValueError, FileExistsError, ImportError) as error:
        print(f"scire-jax convert: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {summary['dst']}: {summary['source_format']} UNet2D, {summary['num_params']:,} parameters, "
          f"{summary['num_train_timesteps']} training steps, prediction={summary['prediction']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scire-jax convert", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    return run_convert(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
