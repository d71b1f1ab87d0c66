"""The ``scire-jax`` command line: ``sample``, ``convert``, ``train``, ``bench accuracy``.

``scire-jax sample`` with no arguments draws 64 samples from the embedded default model with SciRE
v1 multistep order 3 at 10 NFE and writes an 8x8 grid to ``samples.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

SOLVERS = ("scire", "ddim", "dpmsolver", "dpmsolver++", "unipc")
DEFAULT_MODEL = "mnist"


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def _positive_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name}={text!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"--{name}={value} is not allowed: it must be >= 1")
        return value
    return parse


def _add_sample_parser(subparsers):
    parser = subparsers.add_parser("sample", help="sample the embedded (or a given) model")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registered model name, orbax checkpoint dir or diffusers folder (default: mnist)")
    parser.add_argument("--num", type=_positive_int("num"), default=64, help="number of samples (default 64)")
    parser.add_argument("--steps", type=_positive_int("steps"), default=10, help="NFE budget (default 10)")
    parser.add_argument("--solver", default="scire", help=f"one of {', '.join(SOLVERS)} (default scire)")
    parser.add_argument("--algorithm", default="v1", help="SciRE variant v1 / v2 (default v1)")
    parser.add_argument("--method", default="multistep", help="multistep / singlestep_agile / singlestep_fixed")
    parser.add_argument("--order", type=int, default=3, help="solver order 1-3 (default 3)")
    parser.add_argument("--skip-type", default=None, help="time grid (default: NSR for SciRE, logSNR otherwise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png", help="output .png (grid) or .npz (arrays in [-1, 1])")
    parser.add_argument("--scale", type=_positive_int("scale"), default=4, help="PNG upscaling factor (default 4)")
    parser.add_argument("--progress", action="store_true", help="print one line per solver step")


def _solver_from_args(args):
    import scire_jax as sj

    if args.solver not in SOLVERS:
        raise CommandError(f"--solver={args.solver!r} is not allowed; allowed: {', '.join(SOLVERS)}")
    try:
        if args.solver == "scire":
            return sj.SciRE(algorithm=args.algorithm, method=args.method, order=args.order, steps=args.steps,
                            skip_type=args.skip_type or "NSR")
        if args.solver == "ddim":
            return sj.DDIM(steps=args.steps, skip_type=args.skip_type or "time_uniform")
        if args.solver == "unipc":
            return sj.UniPC(order=args.order, steps=args.steps, skip_type=args.skip_type or "logSNR")
        method = {"multistep": "multistep", "singlestep_agile": "singlestep"}.get(args.method, args.method)
        return sj.DPMSolver(algorithm=args.solver, method=method, order=args.order, steps=args.steps,
                            skip_type=args.skip_type or "logSNR")
    except ValueError as error:
        raise CommandError(str(error)) from None


def _check_output(path):
    if not (path.endswith(".png") or path.endswith(".npz")):
        raise CommandError(f"--out={path!r} is not allowed: it must end in .png or .npz")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise CommandError(f"--out={path!r} is not writable: directory {directory!r} does not exist or is read-only")


def _atomic_write(path, write):
    """Write through a temporary file in the same directory, then rename: no partial files."""
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".scire-jax-", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def run_sample(args) -> int:
    solver = _solver_from_args(args)
    _check_output(args.out)
    import jax
    import numpy as np

    import scire_jax as sj
    from scire_jax.pretrained import load_pretrained

    try:
        apply_fn, params, schedule, prediction = load_pretrained(args.model)
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(f"--model={args.model!r}: {error}") from None
    sample_size, channels = _sample_geometry(args.model, params)
    noise_fn = sj.wrap_model(apply_fn, schedule, prediction=prediction)
    callback = None
    if args.progress:
        def callback(step, t):
            print(f"step {int(step)} t={float(t):.4f}", file=sys.stderr, flush=True)
    try:
        sample_fn = sj.make_sampler(solver, schedule, noise_fn, callback=callback)
    except ValueError as error:
        raise CommandError(str(error)) from None
    start = time.perf_counter()
    samples = jax.jit(sample_fn, static_argnums=2)(params, jax.random.key(args.seed),
                                                    (args.num, sample_size, sample_size, channels))
    samples = np.clip(np.asarray(samples), -1.0, 1.0)
    elapsed = time.perf_counter() - start
    if args.out.endswith(".npz"):
        _atomic_write(args.out, lambda p: np.savez(p, samples=samples))
    else:
        from scire_jax.images import image_grid, write_png

        grid = image_grid(samples, scale=args.scale, pad=1)
        _atomic_write(args.out, lambda p: write_png(p, grid))
    nfe = sj.plan(solver, schedule).nfe
    print(f"wrote {args.out}: {args.num} samples, {type(solver).__name__} NFE={nfe}, {elapsed:.1f} s "
          f"(compile included)")
    return 0


def _sample_geometry(model, params):
    """(sample_size, channels) from the UNet's input convolution and the stored config."""
    import jax

    from scire_jax import checkpoints
    from scire_jax.pretrained import resolve_path

    path = resolve_path(model)
    size = None
    if checkpoints.is_checkpoint(path):
        _, config, _ = checkpoints.restore(path)
        model_config = config.get("model", config) if isinstance(config.get("model"), dict) else config
        size = model_config.get("sample_size")
    else:
        import json
        for candidate in (path / "config.json", path / "unet" / "config.json"):
            if candidate.exists():
                size = json.loads(candidate.read_text()).get("sample_size")
                break
    kernel = params["params"]["conv_in"]["kernel"]
    channels = int(kernel.shape[-2])
    if isinstance(size, (list, tuple)):
        size = size[0]
    if size is None:
        raise CommandError(f"--model={model!r}: its config has no sample_size")
    return int(size), channels


def _add_bench_parser(subparsers):
    parser = subparsers.add_parser("bench", help="benchmarks (accuracy atlas)")
    parser.add_argument("what", choices=["accuracy"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="docs")


def run_bench(args) -> int:
    import importlib.util
    import pathlib

    script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "accuracy.py"
    if not script.exists():
        raise CommandError("the accuracy benchmark ships with the source repository (benchmarks/accuracy.py)")
    spec = importlib.util.spec_from_file_location("scire_jax_accuracy_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--out", args.out] + (["--quick"] if args.quick else [])
    return int(module.main(argv) or 0)


def build_parser():
    parser = argparse.ArgumentParser(prog="scire-jax", description="SciRE-Solver and baseline diffusion samplers in JAX")
    subparsers = parser.add_subparsers(dest="command")
    _add_sample_parser(subparsers)
    try:
        from scire_jax.convert.cli import add_convert_parser
        add_convert_parser(subparsers)
    except ImportError:  # pragma: no cover
        pass
    try:
        from scire_jax.train import add_train_parser
        add_train_parser(subparsers)
    except ImportError:  # pragma: no cover - the training extra is optional
        pass
    _add_bench_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in (None, "sample"):
            if args.command is None:
                args = parser.parse_args(["sample"])
            return run_sample(args)
        if args.command == "convert":
            from scire_jax.convert.cli import run_convert
            return int(run_convert(args))
        if args.command == "train":
            from scire_jax.train import run_train
            return int(run_train(args))
        if args.command == "bench":
            return run_bench(args)
    except CommandError as error:
        print(f"scire-jax {args.command or 'sample'}: error: {error}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
