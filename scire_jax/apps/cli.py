"""The ``scire-jax`` command line: ``sample``, ``compare``, ``convert``, ``train``.

``scire-jax sample`` with no arguments draws 64 samples from the embedded default model with SciRE
v1 multistep order 3 at 10 NFE and writes an 8x8 grid to ``samples.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from scire_jax.core.solvers.registry import REGISTRY, solver_fields, solver_from_spec
from scire_jax.io.files import atomic_write, atomic_write_text

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


def _add_model_arguments(parser):
    parser.add_argument("--model", default=None,
                        help="registered model name or path (default: mnist, the embedded model)")
    parser.add_argument("--checkpoint", default=None,
                        help="a converted folder or orbax checkpoint dir (instead of --model)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the initial noise (default 0)")
    parser.add_argument("--batch-size", type=_positive_int("batch-size"), default=None,
                        help="samples per network batch; larger --num runs in chunks (default: all at once, "
                             "at most 256)")
    parser.add_argument("--devices", type=_positive_int("devices"), default=None,
                        help="shard each batch over this many local devices (default 1)")


def _add_sample_parser(subparsers):
    parser = subparsers.add_parser("sample", help="sample the embedded (or a given) model")
    _add_model_arguments(parser)
    parser.add_argument("--num", type=_positive_int("num"), default=64, help="number of samples (default 64)")
    parser.add_argument("--steps", type=_positive_int("steps"), default=10, help="NFE budget (default 10)")
    parser.add_argument("--solver", default="scire",
                        help="a registered solver: " + "; ".join(f"{e.name}: {e.description}"
                                                               for e in REGISTRY.values()) + " (default scire)")
    parser.add_argument("--algorithm", default=None, help="scire: v1 (default) / v2; dpm: dpmsolver++ (default) / "
                        "dpmsolver")
    parser.add_argument("--method", default=None,
                        help="multistep (default) / singlestep_agile / singlestep_fixed (solvers with a method field)")
    parser.add_argument("--order", type=int, default=None, help="solver order 1-3 (default: the solver's)")
    parser.add_argument("--skip-type", default=None,
                        help="time grid: NSR (scire default), logSNR (dpm, unipc, deis default), time_uniform "
                             "(ddim default), time_quadratic, karras")
    parser.add_argument("--phi", default=None, help="scire only: 'official' (default) or a constant, e.g. 1")
    parser.add_argument("--out", default="samples.png", help="output .png (grid) or .npz (arrays in [-1, 1])")
    parser.add_argument("--scale", type=_positive_int("scale"), default=4, help="PNG upscaling factor (default 4)")
    parser.add_argument("--progress", action="store_true", help="also print one line per solver step")


# CLI flags that set solver fields of the same name
_SOLVER_FLAGS = ("algorithm", "method", "order", "skip_type", "phi")


def _solver_spec_from_args(args) -> str:
    """The solver spec (``scire_jax.core.solvers.registry.solver_from_spec``) of the sample flags."""
    if args.solver not in REGISTRY:
        raise CommandError(f"--solver={args.solver!r} is not allowed; allowed: {', '.join(REGISTRY)}")
    fields = []
    for flag in _SOLVER_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        if flag not in solver_fields(args.solver):
            having = [name for name in REGISTRY if flag in solver_fields(name)]
            raise CommandError(f"--{flag.replace('_', '-')}={value!r} is not allowed with --solver={args.solver}: "
                               f"it applies to {', '.join(having)}")
        fields.append(f"{flag}={value}")
    return args.solver + (":" + ",".join(fields) if fields else "")


def _solver_from_args(args):
    try:
        return solver_from_spec(_solver_spec_from_args(args), args.steps)
    except ValueError as error:
        raise CommandError(str(error)) from None


def _check_output(path):
    if not (path.endswith(".png") or path.endswith(".npz")):
        raise CommandError(f"--out={path!r} is not allowed: it must end in .png or .npz")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise CommandError(f"--out={path!r} is not writable: directory {directory!r} does not exist or is read-only")


def _load_model(args):
    """The :class:`scire_jax.io.pretrained.Pretrained` record of --model / --checkpoint."""
    from scire_jax.io.pretrained import load_pretrained

    if args.model is not None and args.checkpoint is not None:
        raise CommandError(f"--model={args.model!r} and --checkpoint={args.checkpoint!r} are not allowed together: "
                           "give one")
    flag, model = ("checkpoint", args.checkpoint) if args.checkpoint is not None else ("model", args.model or DEFAULT_MODEL)
    try:
        return load_pretrained(model)
    except (ValueError, FileNotFoundError, OSError) as error:
        raise CommandError(f"--{flag}={model!r}: {error}") from None


def _mesh_from_args(args):
    """A batch mesh over ``--devices`` local devices (None for one device)."""
    if args.devices is None or args.devices == 1:
        return None
    import jax

    from scire_jax.core.sharding import batch_mesh

    available = jax.local_devices()
    if args.devices > len(available):
        raise CommandError(f"--devices={args.devices} is not allowed: only {len(available)} local device(s) "
                           f"({available[0].platform})")
    return batch_mesh(available[:args.devices])


def _batch_size(args, devices: int) -> int:
    """Chunk size: --batch-size (default min(num, 256)), rounded up to a multiple of the device count."""
    batch = args.batch_size or min(args.num, 256)
    return -(-batch // devices) * devices


def run_sample(args) -> int:
    solver = _solver_from_args(args)
    _check_output(args.out)
    import jax
    import numpy as np

    import scire_jax as sj
    from scire_jax.apps.comparison import sample_in_chunks

    mesh = _mesh_from_args(args)
    model = _load_model(args)
    params, schedule = model.params, model.schedule
    noise_fn = model.noise_fn()
    callback = None
    if args.progress:
        def callback(step, t):
            print(f"step {int(step)} t={float(t):.4f}", file=sys.stderr, flush=True)
    try:
        sample_fn = sj.make_sampler(solver, schedule, noise_fn, callback=callback, mesh=mesh)
        nfe = sj.plan(solver, schedule).nfe
    except ValueError as error:
        raise CommandError(str(error)) from None
    devices = 1 if mesh is None else mesh.size
    if mesh is not None:
        from scire_jax.core.sharding import replicate

        params = replicate(params, mesh)
    batch = _batch_size(args, devices)
    chunks = -(-args.num // batch)
    start = time.perf_counter()
    samples = sample_in_chunks(sample_fn, params, jax.random.key(args.seed),
                               (args.num,) + model.sample_shape, batch,
                               progress="sampling" if chunks > 1 else None)
    samples = np.clip(samples, -1.0, 1.0)
    elapsed = time.perf_counter() - start
    if args.out.endswith(".npz"):
        atomic_write(args.out, lambda p: np.savez(p, samples=samples))
    else:
        from scire_jax.apps.images import image_grid, write_png

        write_png(args.out, image_grid(samples, scale=args.scale, pad=1))
    print(f"wrote {args.out}: {args.num} samples of {'x'.join(map(str, model.sample_shape))}, "
          f"{solver.label()} NFE={nfe}, {elapsed:.1f} s ({args.num / elapsed:.1f} samples/s, compilation "
          f"included; {chunks} batch(es) of {batch} on {devices} device(s))")
    return 0


def _add_compare_parser(subparsers):
    parser = subparsers.add_parser(
        "compare", help="solvers side by side: one labelled grid, classifier FD and error vs a reference",
        description="Sample the same initial noise with every solver at every NFE; write one labelled grid "
                    "(a row per solver, a column per NFE, the reference on the right), and print markdown tables "
                    "of the RMSE against a many-step reference solution of the same network, the classifier FD and "
                    "the fraction of confident classifications (16x16 digit models), and the wall time.")
    _add_model_arguments(parser)
    parser.add_argument("--solvers", nargs="+", default=["scire", "dpm", "ddim"],
                        help="solver specs NAME[:FIELD=VALUE,...], e.g. scire 'scire:order=2,phi=1' "
                             "'dpm:algorithm=dpmsolver' unipc ddim (default: scire dpm ddim)")
    parser.add_argument("--nfe", type=_positive_int("nfe"), nargs="+", default=[5, 10, 20],
                        help="NFE budgets (default 5 10 20)")
    parser.add_argument("--num", type=_positive_int("num"), default=256,
                        help="samples per solver and NFE (default 256; the FD is biased upwards at small counts)")
    parser.add_argument("--reference-steps", type=_positive_int("reference-steps"), default=1000,
                        help="steps of the reference solution (default 1000)")
    parser.add_argument("--error-num", type=_positive_int("error-num"), default=32,
                        help="samples with a reference solution, for the error table (default 32; the reference "
                             "costs 1.5 x --reference-steps network calls per sample)")
    parser.add_argument("--reference", default="dpm:order=3",
                        help="solver spec of the reference solution (default dpm:order=3, DPM-Solver++ 3M)")
    parser.add_argument("--per-cell", type=_positive_int("per-cell"), default=16,
                        help="samples shown per grid cell (default 16)")
    parser.add_argument("--out", default="compare.png", help="output PNG; the tables also go to OUT with .md and .json")
    parser.add_argument("--scale", type=_positive_int("scale"), default=3, help="PNG upscaling factor (default 3)")
    parser.add_argument("--no-metrics", action="store_true", help="skip the classifier metrics")


def run_compare(args) -> int:
    specs = list(args.solvers)
    for spec in specs + [args.reference]:
        try:
            solver_from_spec(spec, max(args.nfe))
        except ValueError as error:
            raise CommandError(str(error)) from None
    if not args.out.endswith(".png"):
        raise CommandError(f"--out={args.out!r} is not allowed: it must end in .png")
    _check_output(args.out)
    import json

    import numpy as np

    import scire_jax as sj
    from scire_jax.apps import comparison

    mesh = _mesh_from_args(args)
    model = _load_model(args)
    params, schedule = model.params, model.schedule
    shape = model.sample_shape
    with_metrics = not args.no_metrics and shape == (16, 16, 1)
    noise_fn = model.noise_fn()
    try:
        result = comparison.compare_solvers(
            noise_fn, params, schedule, specs, args.nfe, num=args.num, shape=shape, seed=args.seed,
            error_num=args.error_num,
            batch_size=_batch_size(args, 1 if mesh is None else mesh.size), reference_steps=args.reference_steps,
            reference_spec=args.reference, with_metrics=with_metrics, progress=True, mesh=mesh)
    except ValueError as error:
        raise CommandError(str(error)) from None
    real_fd = None
    if with_metrics:
        from scire_jax.apps import metrics

        stats = metrics.load_reference_stats()
        real_fd = {key: float(stats[key]) for key in ("fd_real_500", "fd_real_1000") if key in stats}
    tables = comparison.format_tables(result, real_fd)
    if not with_metrics:
        tables += ("\n(classifier metrics skipped: " + ("--no-metrics" if args.no_metrics else
                   f"the shipped digit classifier takes 16x16x1 images, this model makes {shape}") + ")\n")
    image = comparison.comparison_image(result, per_cell=args.per_cell, scale=args.scale)
    base = args.out[:-len(".png")]
    record = {
        "model": model.source, "seed": args.seed, "num": args.num, "error_num": len(result.reference),
        "reference": result.reference_label,
        "reference_self_error": result.reference_self_error, "reference_metrics": result.reference_metrics,
        "runs": [{"spec": spec, "label": result.labels[spec], "nfe_budget": budget,
                  "nfe": result.nfe[(spec, budget)], "seconds": result.seconds[(spec, budget)],
                  **result.errors[(spec, budget)], **result.metrics[(spec, budget)]}
                 for spec in result.specs for budget in result.budgets],
    }
    from scire_jax.apps.images import write_png

    atomic_write_text(base + ".json", json.dumps(record, indent=1) + "\n")
    atomic_write_text(base + ".md", tables)
    write_png(args.out, image)
    print(tables)
    print(f"wrote {args.out} (rows: {', '.join(result.labels[s] for s in specs)}; columns: NFE "
          f"{', '.join(map(str, args.nfe))}, reference), {base}.md and {base}.json")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="scire-jax", description="SciRE-Solver and baseline diffusion samplers in JAX")
    subparsers = parser.add_subparsers(dest="command")
    _add_sample_parser(subparsers)
    _add_compare_parser(subparsers)
    try:
        from scire_jax.apps.convert_cli import add_convert_parser
        add_convert_parser(subparsers)
    except ImportError:  # pragma: no cover
        pass
    try:
        from scire_jax.apps.train import add_train_parser
        add_train_parser(subparsers)
    except ImportError:  # pragma: no cover - the training extra is optional
        pass
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
            from scire_jax.apps.convert_cli import run_convert
            return int(run_convert(args))
        if args.command == "train":
            from scire_jax.apps.train import run_train
            try:
                return int(run_train(args))
            except ValueError as error:
                raise CommandError(str(error)) from None
        if args.command == "compare":
            return run_compare(args)
    except CommandError as error:
        print(f"scire-jax {args.command or 'sample'}: error: {error}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
