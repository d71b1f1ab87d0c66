"""``scire-jax txt2img``: Stable Diffusion text-to-image (and image-to-image) from a diffusers folder.

    scire-jax txt2img --model stable-diffusion-v1-5 --prompt "a photo of a cat" --steps 20 --solver scire \\
        --guidance 7.5 --seed 0 --num 4 --out images.png
    scire-jax txt2img --model DIR --prompt "a watercolor" --init-image photo.png --strength 0.6 --out edit.png

Writes the grid to ``--out`` and each image beside it (``images-0.png``, ``images-1.png``, ...).  Every
argument is checked before the model is loaded; :func:`run_txt2img` prints an error as one line on stderr
and returns exit status 2 (as ``scire-jax convert``; ``args.debug`` raises it instead).  ``--solver``
takes any registered solver spec (``scire``, ``dpm:order=2``, ``unipc``, ``ddim``, ...); ``--steps``
is its NFE budget.  Image ``i`` starts from ``normal(fold_in(key(seed), i))``, whatever ``--batch-size``
and ``--devices``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Optional, Sequence

from scire_jax.apps.arguments import positive_int as _positive_int

__all__ = ["add_txt2img_parser", "run_txt2img", "main", "UsageError"]

DTYPES = ("float32", "bfloat16", "float16")


def add_txt2img_parser(subparsers):
    """Add the ``txt2img`` subcommand to ``subparsers`` (of ``scire-jax``'s parser)."""
    parser = subparsers.add_parser(
        "txt2img", help="Stable Diffusion text-to-image / image-to-image with SciRE (or any registered solver)",
        description="Generate images from a text prompt with a Stable Diffusion 1.x / 2.x diffusers folder (or a "
                    "single-file checkpoint) and any registered solver, with classifier-free guidance.")
    parser.add_argument("--model", required=True, help="diffusers pipeline folder or single-file checkpoint")
    parser.add_argument("--prompt", required=True, help="the text prompt")
    parser.add_argument("--negative-prompt", default="", help="negative prompt (default: empty)")
    parser.add_argument("--steps", type=_positive_int("steps"), default=20, help="NFE budget (default 20)")
    parser.add_argument("--solver", default="scire",
                        help="solver spec NAME[:FIELD=VALUE,...], e.g. scire, 'dpm:order=2' (DPM-Solver++ 2M), "
                             "unipc, ddim (default scire)")
    parser.add_argument("--guidance", type=float, default=7.5,
                        help="classifier-free guidance scale >= 0 (<= 1: no guidance; default 7.5)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the initial noise (default 0)")
    parser.add_argument("--num", type=_positive_int("num"), default=4, help="number of images (default 4)")
    parser.add_argument("--batch-size", type=_positive_int("batch-size"), default=None,
                        help="images per compiled batch (default: all, at most 8)")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's, "
                        "or the init image's)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default as --height)")
    parser.add_argument("--init-image", default=None, help="image-to-image: the starting image (PNG / JPEG)")
    parser.add_argument("--strength", type=float, default=None,
                        help="image-to-image noise level in (0, 1] (default 0.8; needs --init-image)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="computation dtype of the networks (parameters and solver stay float32; default float32)")
    parser.add_argument("--devices", type=_positive_int("devices"), default=None,
                        help="split each batch over this many local devices (default: 1)")
    parser.add_argument("--out", default="images.png", help="output grid PNG; images go beside it (default images.png)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


class UsageError(ValueError):
    """A user error of ``txt2img``: printed as one line, exit status 2."""


def _fail(message: str):
    raise UsageError(message)


def _check_output(path: str) -> None:
    if not path.endswith(".png"):
        _fail(f"--out={path!r} is not allowed: it must end in .png")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        _fail(f"--out={path!r} is not writable: directory {directory!r} does not exist or is read-only")


def _check_arguments(args):
    """Everything that can be checked without the model; returns the solver."""
    from scire_jax.core.solvers.registry import solver_from_spec

    _check_output(args.out)
    try:
        solver = solver_from_spec(args.solver, args.steps)
    except ValueError as error:
        _fail(f"--solver={args.solver!r}: {error}")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        _fail(f"--guidance={args.guidance} is not allowed: it must be a finite number >= 0")
    for flag in ("height", "width"):
        value = getattr(args, flag)
        if value is not None and (value < 1 or value % 8):
            _fail(f"--{flag}={value} is not allowed: it must be a positive multiple of 8")
    if args.strength is not None:
        if args.init_image is None:
            _fail("--strength is only allowed with --init-image (image-to-image)")
        if not 0.0 < args.strength <= 1.0:
            _fail(f"--strength={args.strength} is not allowed: it must be in (0, 1]")
    if args.init_image is not None and not os.path.isfile(args.init_image):
        _fail(f"--init-image={args.init_image!r} does not exist")
    if not os.path.exists(args.model):
        _fail(f"--model={args.model!r} does not exist: pass a diffusers pipeline folder or a checkpoint file")
    return solver


def _read_image(path: str, height: Optional[int], width: Optional[int], multiple: int):
    """The init image as float RGB in [0, 1], resized to --height x --width (default: its size, floored to
    ``multiple``)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            height = height or max(multiple, h // multiple * multiple)
            width = width or max(multiple, w // multiple * multiple)
            if (w, h) != (width, height):
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            return np.asarray(image, np.float32) / 255.0
    except OSError as error:
        raise UsageError(f"--init-image={path!r} cannot be read: {error}") from None


def _mesh(devices: Optional[int]):
    if devices is None or devices == 1:
        return None
    import jax

    from scire_jax.core.sharding import batch_mesh

    available = jax.local_devices()
    if devices > len(available):
        _fail(f"--devices={devices} is not allowed: only {len(available)} local device(s) ({available[0].platform})")
    return batch_mesh(available[:devices])


def _image_paths(out: str, count: int):
    base = out[:-len(".png")]
    digits = len(str(count - 1))
    return [f"{base}-{i:0{digits}d}.png" for i in range(count)]


def run_txt2img(args) -> int:
    """Run ``scire-jax txt2img`` from parsed arguments; returns the exit status.

    A user error (bad argument, unreadable model, incompatible sizes) is one line on stderr and exit
    status 2; with ``args.debug`` it is raised instead.
    """
    try:
        return _txt2img(args)
    except (ValueError, OSError) as error:
        if getattr(args, "debug", False):
            raise
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"scire-jax txt2img: error: {message}", file=sys.stderr)
        return 2


def _txt2img(args) -> int:
    solver = _check_arguments(args)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scire_jax.apps import pipelines
    from scire_jax.apps.images import image_grid, write_png
    from scire_jax.apps.progress import progress, step_callback
    from scire_jax.core.sampling import initial_noise
    from scire_jax.io.convert.sd import load_sd_pipeline

    mesh = _mesh(args.devices)
    try:
        pipe = load_sd_pipeline(args.model, dtype=None if args.dtype == "float32" else args.dtype)
    except (ValueError, OSError) as error:
        raise UsageError(f"--model={args.model!r}: {error}") from None
    try:
        pipelines.check_pipeline(pipe)
        multiple = pipelines.image_multiple(pipe)
        init = None
        if args.init_image is not None:
            init = _read_image(args.init_image, args.height, args.width, multiple)
            height, width = init.shape[:2]
        else:
            height, width = args.height or pipe.image_size, args.width or pipe.image_size
        for flag, value in (("height", height), ("width", width)):
            if value % multiple:
                _fail(f"--{flag}={value} is not allowed: this model needs a multiple of {multiple}")
        steps_per_batch = pipelines.solver_steps(
            pipelines.image_to_image_solver(pipe, solver, 0.8 if args.strength is None else args.strength)
            if init is not None else solver, pipe.schedule)
    except UsageError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from None

    devices = 1 if mesh is None else mesh.size
    batch = args.batch_size or min(args.num, 8)
    batch = -(-batch // devices) * devices
    chunks = -(-args.num // batch)
    params = pipelines.place_params(pipe.params, mesh)
    key = jax.random.key(args.seed)
    factor = pipe.vae_scale_factor
    latent_shape = (height // factor, width // factor, pipe.latent_channels)
    print(f"txt2img: {args.num} image(s) {width}x{height}, {solver.label()} NFE={steps_per_batch}"
          f"{'' if init is None else f', init image, strength {args.strength or 0.8}'}, guidance {args.guidance}, "
          f"{chunks} batch(es) of {batch} on {devices} device(s); compiling...", file=sys.stderr, flush=True)
    bar = progress(steps_per_batch * chunks, "txt2img", "step",
                   disable=True if args.no_progress else None)
    callback = step_callback(bar)
    images = []
    start = time.perf_counter()
    try:
        for chunk in range(chunks):
            first = chunk * batch  # a short last chunk is padded to the batch: one compilation for all
            noise = initial_noise(key, (batch,) + latent_shape, jnp.float32, first)
            prompts = [args.prompt] * batch
            if init is None:
                out = pipelines.text_to_image(pipe, params, prompts, args.negative_prompt, solver=solver,
                                              guidance_scale=args.guidance, height=height, width=width, mesh=mesh,
                                              latents=noise, callback=callback)
            else:
                out = pipelines.image_to_image(pipe, params, prompts, init, 0.8 if args.strength is None
                                               else args.strength, args.negative_prompt, solver=solver,
                                               guidance_scale=args.guidance, mesh=mesh, noise=noise,
                                               callback=callback)
            images.append(np.asarray(out))
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    images = np.concatenate(images)[:args.num]
    if not np.all(np.isfinite(images)):
        raise UsageError("the generated images are not finite (NaN / inf): try --dtype float32 or another solver")
    paths = _image_paths(args.out, args.num)
    for path, image in zip(paths, images):
        write_png(path, np.clip(image * 255.0, 0, 255).round().astype(np.uint8))
    write_png(args.out, image_grid(images * 2.0 - 1.0, pad=2))
    print(f"wrote {args.out} (grid) and {paths[0]} ... {paths[-1]}: {args.num} image(s) {width}x{height}, "
          f"{solver.label()}, {elapsed:.1f} s ({args.num / elapsed:.2f} images/s, compilation included)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m scire_jax.apps.txt2img_cli ...`` (the same as ``scire-jax txt2img ...``)."""
    parser = argparse.ArgumentParser(prog="scire-jax")
    sub = add_txt2img_parser(parser.add_subparsers(dest="command", required=True))
    sub.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(["txt2img", *(argv if argv is not None else sys.argv[1:])])
    return run_txt2img(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
