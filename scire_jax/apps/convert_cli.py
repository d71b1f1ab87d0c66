"""``scire-jax convert SRC DST``: a diffusers folder or DDPM checkpoint -> scire_jax checkpoint directory.

The result is a :mod:`scire_jax.io.checkpoints` directory (orbax params + UNet config + schedule) that
:func:`scire_jax.io.pretrained.load_pretrained` reads.  ``DST`` is validated before anything is
read (``--overwrite`` replaces only an existing scire-jax checkpoint, never other data); then
everything is converted and checked in memory (key names, shapes, the sample size, finite weights)
and ``DST`` is written atomically, so on any error nothing is left there.  Errors are one line
and exit status 2 (``--debug`` shows the traceback).

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
                 scheduler_config: Union[str, Path, dict, None] = None, ema: bool = True,
                 allow_nonfinite: bool = False, adm_config: Union[str, Path, dict, None] = None) -> Dict[str, Any]:
    """Convert ``src`` and save it at ``dst`` with :func:`scire_jax.io.checkpoints.save`.

    Args:
      src: a diffusers ``UNet2DModel`` (or pipeline) folder; with ``ddpm_config``, an original-DDPM
        checkpoint file; an NVlabs/edm ``*.pkl`` snapshot (read without executing anything:
        :func:`scire_jax.io.edm_loading.convert_edm_pickle`).
      dst: the checkpoint directory to create (must not exist or be empty, unless ``overwrite``).
      overwrite: replace an existing ``dst`` that is a scire-jax checkpoint (any other non-empty
        directory or file is refused even then: see :func:`scire_jax.io.checkpoints.check_destination`).
      ddpm_config: DDPM model config (dict or JSON path); selects the DDPM path.  Its optional
        ``diffusion`` section gives the betas (default: linear 1e-4 .. 0.02, 1000 steps).
      scheduler_config: diffusers scheduler config (dict or JSON path) overriding the one found
        in ``src`` (required when ``src`` has none).
      ema: for DDIM-style list checkpoints, take the EMA weights (last entry).
      allow_nonfinite: accept NaN / infinite weights (rejected by default).
      adm_config: a guided-diffusion / improved-DDPM architecture name (``imagenet256``,
        ``imagenet256_classifier`` ...: :data:`scire_jax.io.convert.adm.ARCHITECTURES`) or a JSON
        file / dict of the official constructor kwargs plus ``"family"``; ``src`` is then the
        released ``.pt`` / ``.safetensors`` state dict (see :func:`scire_jax.io.adm_loading.convert_to_checkpoint`).

    Returns:
      A summary dict (``dst``, ``source_format``, ``num_params``, ``prediction``, ``num_train_timesteps``).

    Raises:
      ValueError: unreadable or mismatching inputs, a sample size the network cannot run at,
        non-finite weights (nothing is written at ``dst``).
      FileExistsError: ``dst`` exists and may not be replaced (checked before anything is read).
      ImportError: PyTorch-format weights without torch (naming the extra to install).
    """
    from scire_jax.io import checkpoints
    from scire_jax.io.convert.ddpm import convert_ddpm, ddpm_betas
    from scire_jax.io.convert.from_diffusers import (
        check_sample_size,
        convert_diffusers,
        find_scheduler_config,
        find_unet_folder,
    )
    from scire_jax.io.convert.scheduler import betas_from_scheduler_config, prediction_from_scheduler_config, read_json

    src, dst = Path(src), Path(dst)
    checkpoints.check_destination(dst, overwrite)  # before any (possibly long) reading and converting
    if adm_config is not None:
        if ddpm_config is not None or scheduler_config is not None:
            raise ValueError("--config (ADM / improved-DDPM) is not allowed with --ddpm-config or --scheduler-config")
        from scire_jax.io.adm_loading import convert_to_checkpoint

        return convert_to_checkpoint(src, dst, adm_config, overwrite=overwrite, allow_nonfinite=allow_nonfinite)
    if not src.exists():
        raise ValueError(f"source {str(src)!r} does not exist")
    if src.resolve() == dst.resolve() or dst.resolve() in src.resolve().parents:
        raise ValueError(f"destination {str(dst)!r} is (or holds) the source {str(src)!r}: choose another directory")
    from scire_jax.io.edm_loading import convert_edm_pickle, is_edm_pickle

    if ddpm_config is None and is_edm_pickle(src):  # an NVlabs/edm .pkl: read safely, nothing in it is executed
        if scheduler_config is not None:
            raise ValueError("--scheduler-config is not allowed for an EDM pickle: its schedule is recorded in it")
        return convert_edm_pickle(src, dst, overwrite=overwrite, allow_nonfinite=allow_nonfinite)
    if ddpm_config is not None:
        if isinstance(ddpm_config, (str, Path)):
            ddpm_config = read_json(ddpm_config)
        try:
            module, params, config = convert_ddpm(src, ddpm_config, ema=ema)
        except ImportError as error:
            raise ImportError(f"reading {str(src)!r} (PyTorch format) needs torch: pip install 'scire-jax[torch]'") from error
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
        module, params, config = convert_diffusers(unet_folder, allow_nonfinite=allow_nonfinite)
        source_format = "diffusers"
    check_sample_size(module, f"model {str(src)!r}", required=True)
    checkpoints.check_finite_params(params, f"model {str(src)!r}", allow_nonfinite)
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
    parser.add_argument("--config", dest="adm_config", default=None, metavar="NAME|JSON",
                        help="SRC is a guided-diffusion / improved-DDPM .pt/.safetensors file: its architecture "
                             "(imagenet64, imagenet128, imagenet256, imagenet512, lsun_bedroom, imagenet{128,256,512}"
                             "_classifier) or a JSON file of the constructor kwargs plus \"family\"")
    parser.add_argument("--scheduler-config", default=None, metavar="JSON",
                        help="diffusers scheduler_config.json to use instead of the one in SRC")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DST if it is an existing scire-jax checkpoint (other data is never replaced)")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="accept NaN / infinite weights (refused by default)")
    parser.add_argument("--no-ema", dest="ema", action="store_false",
                        help="for list-type DDPM checkpoints, take the first (non-EMA) state dict")


def run_convert(args: argparse.Namespace) -> int:
    """Run ``convert`` from parsed arguments; prints a summary (or the error) and returns an exit code.

    An error is one line on stderr and exit status 2; with ``args.debug`` it is raised instead
    (the traceback, for bug reports).
    """
    try:
        summary = convert_main(args.src, args.dst, overwrite=args.overwrite, ddpm_config=args.ddpm_config,
                               scheduler_config=args.scheduler_config, ema=getattr(args, "ema", True),
                               allow_nonfinite=getattr(args, "allow_nonfinite", False),
                               adm_config=getattr(args, "adm_config", None))
    except (ValueError, OSError, ImportError) as error:
        if getattr(args, "debug", False):
            raise
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"scire-jax convert: error: {message}", file=sys.stderr)
        return 2
    print(summary.get("message") or f"wrote {summary['dst']}: {summary['source_format']} {summary.get('model', 'UNet2D')}, "
          f"{summary['num_params']:,} parameters, "
          f"{summary['num_train_timesteps']} training steps, prediction={summary['prediction']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scire-jax convert", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return run_convert(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
