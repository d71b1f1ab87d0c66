"""The ``scire-jax`` command line: ``sample``, ``compare``, ``convert``, ``train``.

``scire-jax sample`` with no arguments draws 64 samples from the embedded default model with SciRE
v1 multistep order 3 at 10 NFE and writes an 8x8 grid to ``samples.png``.

Every failure is one line on stderr and exit status 2 (``--debug`` shows the traceback instead).
Output paths are validated before any work; non-finite samples are an error (nothing is written)
unless ``--allow-nonfinite``.  What a command is doing (loading, compiling, sampling, the reference
solve) is printed to stderr as it starts (``SCIRE_JAX_PROGRESS=0`` silences it).

Seeds (``--seed``) are integers ``0 .. 2**64 - 1``: ``seed < 2**32`` is ``jax.random.key(seed)``,
a larger seed is ``fold_in(key(seed % 2**32), seed >> 32)`` (see :func:`seed_key`), so no two seeds
alias.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Optional, Sequence

from scire_jax.apps.arguments import positive_int as _positive_int
from scire_jax.apps.arguments import seed as _seed
from scire_jax.core.sampling import seed_key
from scire_jax.core.solvers.registry import REGISTRY, solver_fields, solver_from_spec
from scire_jax.io.files import atomic_write, atomic_write_all, check_output_file

DEFAULT_MODEL = "mnist"
#: requests above these sizes print a warning with the expected memory first
LARGE_STEPS = 10_000
LARGE_BYTES = 2 ** 30


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def _status(text: str) -> None:
    """One line on stderr saying what the command does now (silenced by ``SCIRE_JAX_PROGRESS=0``)."""
    if os.environ.get("SCIRE_JAX_PROGRESS", "").strip().lower() in ("0", "false", "no", "off"):
        return
    print(f"scire-jax: {text}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _mebibytes(count: float) -> str:
    return f"{count / 2 ** 30:.1f} GiB" if count >= 2 ** 30 else f"{count / 2 ** 20:.1f} MiB"


def _add_model_arguments(parser):
    parser.add_argument("--model", default=None,
                        help="registered model name or path (default: mnist, the embedded model)")
    parser.add_argument("--checkpoint", default=None,
                        help="a converted folder or orbax checkpoint dir (instead of --model)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="PRNG seed of the initial noise: an integer 0 .. 2**64-1 (default 0; seeds >= 2**32 "
                             "fold their high 32 bits into the key, so no two seeds give the same samples)")
    parser.add_argument("--batch-size", type=_positive_int("batch-size"), default=None,
                        help="samples per network batch; larger --num runs in chunks (default: all at once, "
                             "at most 256)")
    parser.add_argument("--devices", type=_positive_int("devices"), default=None,
                        help="shard each batch over this many local devices (default 1; on CPU, set "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=8 for 8 devices)")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="accept NaN / infinite weights and write non-finite samples (by default both are "
                             "errors and nothing is written)")


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
    _add_class_arguments(parser)


def _add_class_arguments(parser):
    """Class-conditional / classifier-guided sampling and the network dtype (ADM / improved-DDPM models)."""
    parser.add_argument("--class-label", type=int, default=None,
                        help="class of every sample (class-conditional models and --classifier; default: a random "
                             "label per sample, drawn from --seed)")
    parser.add_argument("--classifier", default=None,
                        help="noisy classifier for guidance: a folder from `scire-jax convert X_classifier.pt DIR "
                             "--config imagenetN_classifier`")
    parser.add_argument("--classifier-scale", type=float, default=None,
                        help="guidance scale s: eps - s sigma_t grad log p(y|x_t) (default: the classifier's official "
                             "scale, else 1)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="network compute dtype (default float32; the solver always runs in float32)")
    parser.add_argument("--schedule", choices=("trained", "official_vp"), default=None,
                        help="ADM / improved-DDPM: the training schedule (default) or the official SciRE runner's "
                             "continuous linear VP schedule")


def _class_conditioning(args, model, params, key, batch: int, mesh):
    """``(noise_fn, chunk_params, description)`` for class labels / classifier guidance, else None."""
    from scire_jax.io import adm_loading

    flags = {"--class-label": args.class_label, "--classifier": args.classifier,
             "--classifier-scale": args.classifier_scale}
    if model.conditioning != "class" and all(value is None for value in flags.values()):
        return None
    if args.classifier_scale is not None and args.classifier is None:
        raise CommandError(f"--classifier-scale={args.classifier_scale} is not allowed without --classifier")
    classifier = None
    if args.classifier is not None:
        _status(f"loading classifier {args.classifier!r} ...")
        try:
            classifier = adm_loading.load_classifier(args.classifier, dtype=_dtype_from_args(args))
        except (ValueError, OSError, ImportError) as error:
            raise CommandError(f"--classifier={args.classifier!r}: {error}") from None
    scale = args.classifier_scale
    if scale is None and classifier is not None:  # the official scale of a released classifier, else 1
        scale = classifier.classifier_scale if classifier.classifier_scale is not None else 1.0
    num_classes = model.num_classes or (classifier.num_classes if classifier is not None else None)
    place = None
    if mesh is not None:
        import functools

        from scire_jax.core.sharding import replicate

        place = functools.partial(replicate, mesh=mesh)
    try:
        noise_fn = adm_loading.class_conditional_noise_fn(model, classifier)
        labels = adm_loading.class_labels(key, args.num, num_classes, args.class_label)
        chunk_params = adm_loading.chunked_sampling_params(model, labels, min(batch, args.num), classifier, scale,
                                                           place, model_params=params)
    except ValueError as error:
        raise CommandError(str(error)) from None
    what = f"class {args.class_label}" if args.class_label is not None else "random classes from --seed"
    if classifier is not None:
        what += f", classifier guidance scale {scale:g}"
    return noise_fn, chunk_params, what


def _dtype_from_args(args):
    import jax.numpy as jnp

    return None if getattr(args, "dtype", None) in (None, "float32") else jnp.dtype(args.dtype)


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


def _check_output(path, suffixes=(".png", ".npz")):
    """Validate an output file before any work: its suffix, not a directory, a writable folder."""
    if not path.endswith(tuple(suffixes)):
        raise CommandError(f"--out={path!r} is not allowed: it must end in {' or '.join(suffixes)}")
    try:
        check_output_file(path, "--out")
    except ValueError as error:
        raise CommandError(str(error)) from None


def _load_model(args):
    """The :class:`scire_jax.io.pretrained.Pretrained` record of --model / --checkpoint."""
    from scire_jax.io.pretrained import load_pretrained

    if args.model is not None and args.checkpoint is not None:
        raise CommandError(f"--model={args.model!r} and --checkpoint={args.checkpoint!r} are not allowed together: "
                           "give one")
    flag, model = ("checkpoint", args.checkpoint) if args.checkpoint is not None else ("model", args.model or DEFAULT_MODEL)
    _status(f"loading {flag} {model!r} ...")
    options = {"dtype": _dtype_from_args(args)} if _dtype_from_args(args) is not None else {}
    if getattr(args, "schedule", None) is not None:
        options["schedule"] = args.schedule
    try:
        return load_pretrained(model, allow_nonfinite=bool(getattr(args, "allow_nonfinite", False)), **options)
    except (ValueError, OSError, ImportError) as error:
        raise CommandError(f"--{flag}={model!r}: {error}") from None


def _mesh_from_args(args):
    """A batch mesh over ``--devices`` local devices (None for one device)."""
    if args.devices is None or args.devices == 1:
        return None
    import jax

    from scire_jax.core.sharding import batch_mesh

    available = jax.local_devices()
    if args.devices > len(available):
        hint = (f"; for {args.devices} CPU devices run with XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{args.devices}" if available[0].platform == "cpu" else "")
        raise CommandError(f"--devices={args.devices} is not allowed: only {len(available)} local device(s) "
                           f"({available[0].platform}){hint}")
    return batch_mesh(available[:args.devices])


def _batch_size(args, devices: int) -> int:
    """Chunk size: --batch-size (default min(num, 256)), rounded up to a multiple of the device count."""
    batch = args.batch_size or min(args.num, 256)
    return -(-batch // devices) * devices


def _warn_if_huge(args, sample_shape, steps: int, order: int = 3) -> None:
    """A warning with the expected memory for very many steps or samples (before the slow part starts)."""
    size = math.prod(sample_shape)
    host = args.num * size * 4  # float32 samples kept on the host
    batch = _batch_size(args, 1)
    device = batch * size * 4 * (order + 4)  # x, x_T, the model outputs kept by the solver, the result
    if steps > LARGE_STEPS or host > LARGE_BYTES:
        _status(f"warning: a large request: {steps:,} steps x {args.num:,} samples of {'x'.join(map(str, sample_shape))} "
                f"= {steps * args.num:,} network calls; expected memory: {_mebibytes(host)} of samples on the host, "
                f"{_mebibytes(device)} of solver state per batch of {batch} on the device (plus the network's "
                "activations); planning and compiling many steps take a while")


def _nonfinite_hint(args, solver, model) -> str:
    """The setting that most likely made samples non-finite."""
    phi = getattr(solver, "phi", None)
    if isinstance(phi, (int, float)) and not isinstance(phi, bool) and not 0.1 <= phi <= 10:
        return (f"likely cause: --phi={args.phi} (the SciRE coefficients scale with 1/phi; the official phi is "
                "about 0.6): use the default or a value near 1")
    if getattr(args, "allow_nonfinite", False):
        from scire_jax.io.checkpoints import nonfinite_leaves

        if nonfinite_leaves(model.params):
            return "likely cause: the model's weights hold NaN / inf (accepted by --allow-nonfinite)"
    order = getattr(solver, "order", 1)
    if order >= 3 and args.steps <= 2 * order:
        return (f"likely cause: order {order} with only --steps={args.steps}; try --order 2 or more steps, or "
                "--solver ddim to check the network itself")
    return ("likely cause: the network (its output) or the solver settings; --solver ddim --steps 50 tells them "
            "apart, --allow-nonfinite --out x.npz writes the samples for inspection")


def _check_plan_fits(the_plan, args, solver, model) -> None:
    """Fail before sampling if the plan's coefficients overflow the sampling dtype (the result would be inf/NaN)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    dtype = jnp.result_type(float)
    largest = 0.0
    for leaf in jax.tree_util.tree_leaves(the_plan):
        if isinstance(leaf, np.ndarray) and np.issubdtype(leaf.dtype, np.floating) and leaf.size:
            finite = np.abs(leaf[np.isfinite(leaf)])
            if finite.size:
                largest = max(largest, float(finite.max()))
    if largest > float(jnp.finfo(dtype).max):
        raise CommandError(f"the solver's coefficients reach {largest:.1e}, beyond the range of {jnp.dtype(dtype).name} "
                           f"({float(jnp.finfo(dtype).max):.1e}): every sample would be NaN or inf; "
                           f"{_nonfinite_hint(args, solver, model)}; nothing was sampled")


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
    _warn_if_huge(args, model.sample_shape, args.steps, getattr(solver, "order", 1))
    noise_fn = model.noise_fn()
    def print_step(step, t):
        print(f"step {int(step)} t={float(t):.4f}", file=sys.stderr, flush=True)

    callback = print_step if args.progress else None
    if args.steps > LARGE_STEPS:
        _status(f"planning {args.steps:,} steps ...")
    try:
        sample_fn = sj.make_sampler(solver, schedule, noise_fn, callback=callback, mesh=mesh)
        the_plan = sj.plan(solver, schedule)
    except ValueError as error:
        raise CommandError(str(error)) from None
    nfe = the_plan.nfe
    _check_plan_fits(the_plan, args, solver, model)
    devices = 1 if mesh is None else mesh.size
    if mesh is not None:
        from scire_jax.core.sharding import replicate

        params = replicate(params, mesh)
    batch = _batch_size(args, devices)
    chunks = -(-args.num // min(batch, args.num))
    shape = (args.num,) + model.sample_shape
    key = seed_key(args.seed)
    what = f"{solver.label()} NFE={nfe}, {args.num} samples of {'x'.join(map(str, model.sample_shape))}"
    chunk_params = None
    conditioning = _class_conditioning(args, model, params, key, batch, mesh)
    if conditioning is not None:  # labels (and the classifier) travel in the params, chunk by chunk
        noise_fn, chunk_params, labelled = conditioning
        sample_fn = sj.make_sampler(solver, schedule, noise_fn, callback=callback, mesh=mesh)
        params = chunk_params(0, min(batch, args.num))
        what += f", {labelled}"
    start = time.perf_counter()
    if mesh is None:  # compile ahead, so that compiling and sampling are reported apart
        _status(f"compiling the sampler ({what}, batch {batch}) ...")
        jax.jit(sample_fn, static_argnums=2).lower(params, key, (min(batch, args.num),) + model.sample_shape,
                                                   0).compile()  # the executable sample_in_chunks reuses
        _status(f"compiled in {time.perf_counter() - start:.1f} s; sampling {chunks} batch(es) of {batch} "
                f"({args.num * nfe:,} network calls) ...")
    else:
        _status(f"compiling and sampling ({what}, {chunks} batch(es) of {batch} on {devices} devices) ...")
    samples = sample_in_chunks(sample_fn, params, key, shape, batch, progress="sampling" if chunks > 1 else None,
                               chunk_params=chunk_params)
    elapsed = time.perf_counter() - start
    try:
        sj.check_finite(samples)
    except sj.NonFiniteError as error:
        if not args.allow_nonfinite:
            raise CommandError(f"{error}; {_nonfinite_hint(args, solver, model)}; nothing was written") from None
        _status(f"warning: {str(error).split(':')[0]}; writing them anyway (--allow-nonfinite)")
    samples = np.clip(samples, -1.0, 1.0)
    if args.out.endswith(".npz"):
        atomic_write(args.out, lambda p: np.savez(p, samples=samples))
    else:
        from scire_jax.apps.images import image_grid, write_png

        write_png(args.out, image_grid(np.nan_to_num(samples), scale=args.scale, pad=1))
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


def _compare_outputs(out: str):
    """The three files of ``compare --out``: validated together before any work."""
    if not out.endswith(".png"):
        raise CommandError(f"--out={out!r} is not allowed: it must end in .png")
    base = out[:-len(".png")]
    paths = (out, base + ".md", base + ".json")
    for path in paths:
        try:
            check_output_file(path, "--out" if path == out else f"--out's {path[len(base):]} file")
        except ValueError as error:
            raise CommandError(str(error)) from None
    return paths


def _compare_estimate(args, model, noise_fn, params, schedule, specs, batch) -> None:
    """Print the work ahead of ``compare`` (network calls per stage) and a time estimate from one timed call."""
    import jax
    import jax.numpy as jnp

    import scire_jax as sj

    def nfe(spec, steps):
        return sj.plan(solver_from_spec(spec, steps), schedule).nfe

    error_num = min(args.error_num, args.num)
    reference_calls = error_num * (nfe(args.reference, args.reference_steps)
                                   + nfe(args.reference, max(1, args.reference_steps // 2)))
    run_calls = sum(args.num * nfe(spec, budget) for spec in specs for budget in args.nfe)
    runs = 2 + len(specs) * len(args.nfe)
    _status(f"compare: {runs} sampler runs (the reference solve with {args.reference!r} at {args.reference_steps} "
            f"steps on {error_num} samples and its half-step check, then {len(specs)} solver(s) x {len(args.nfe)} "
            f"NFE budget(s) on {args.num} samples): {reference_calls + run_calls:,} network calls, "
            f"{reference_calls:,} of them for the reference")
    _status("timing one network call to estimate the run time ...")
    size = min(batch, args.num)
    x = jnp.zeros((size,) + tuple(model.sample_shape), jnp.float32)
    t = jnp.full((size,), 0.5 * (schedule.t_max + schedule.t_min), jnp.float32)
    started = time.perf_counter()
    call = jax.jit(noise_fn).lower(params, x, t).compile()
    compile_seconds = time.perf_counter() - started
    jax.block_until_ready(call(params, x, t))
    started = time.perf_counter()
    jax.block_until_ready(call(params, x, t))
    per_call = time.perf_counter() - started
    network = per_call * (-(-reference_calls // size) - (-run_calls // size))
    compiling = runs * 1.5 * compile_seconds  # a sampler compiles in about 1.5 network compilations
    _status(f"estimated {_duration(network + compiling)}: {_duration(network)} of network calls "
            f"({1000 * per_call:.0f} ms per batch of {size}), {_duration(compiling)} of compiling {runs} samplers; "
            f"the reference solve comes first ({_duration(per_call * -(-reference_calls // size))} of network calls)")


def run_compare(args) -> int:
    specs = list(args.solvers)
    for spec in specs + [args.reference]:
        try:
            solver_from_spec(spec, max(args.nfe))
        except ValueError as error:
            raise CommandError(str(error)) from None
    outputs = _compare_outputs(args.out)
    import json

    import numpy as np

    from scire_jax.apps import comparison

    mesh = _mesh_from_args(args)
    model = _load_model(args)
    params, schedule = model.params, model.schedule
    shape = model.sample_shape
    with_metrics = not args.no_metrics and shape == (16, 16, 1)
    noise_fn = model.noise_fn()
    batch = _batch_size(args, 1 if mesh is None else mesh.size)
    try:
        _compare_estimate(args, model, noise_fn, params, schedule, specs, batch)
        _status(f"reference solve ({args.reference!r}, {args.reference_steps} steps), then the solvers; "
                "sampling ...")
        result = comparison.compare_solvers(
            noise_fn, params, schedule, specs, args.nfe, num=args.num, shape=shape, seed=args.seed,
            error_num=args.error_num, batch_size=batch, reference_steps=args.reference_steps,
            reference_spec=args.reference, with_metrics=with_metrics, progress=True, mesh=mesh)
    except ValueError as error:
        raise CommandError(str(error)) from None
    bad = [label for label, x in [(f"reference {result.reference_label}", result.reference)]
           + [(f"{result.labels[spec]} NFE {budget}", result.samples[(spec, budget)])
              for spec in result.specs for budget in result.budgets] if not np.all(np.isfinite(x))]
    if bad:
        message = (f"non-finite samples (NaN or inf) from {len(bad)} run(s): {', '.join(bad[:4])}"
                   f"{', ...' if len(bad) > 4 else ''}")
        if not args.allow_nonfinite:
            raise CommandError(f"{message}; nothing was written (--allow-nonfinite writes the tables anyway)")
        _status(f"warning: {message}; writing anyway (--allow-nonfinite)")
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

    png, markdown, record_path = outputs
    text = json.dumps(record, indent=1) + "\n"

    def write_text(content):
        def write(temporary):
            with open(temporary, "w") as handle:
                handle.write(content)
        return write

    atomic_write_all([(png, lambda temporary: write_png(temporary, image)), (markdown, write_text(tables)),
                      (record_path, write_text(text))])  # all three or none
    print(tables)
    print(f"wrote {args.out} (rows: {', '.join(result.labels[s] for s in specs)}; columns: NFE "
          f"{', '.join(map(str, args.nfe))}, reference), {markdown} and {record_path}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``PROG: error: MESSAGE (see PROG --help)``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = OneLineParser(prog="scire-jax", description="SciRE-Solver and baseline diffusion samplers in JAX")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    subparsers = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    _add_sample_parser(subparsers)
    _add_compare_parser(subparsers)
    try:
        from scire_jax.apps.convert_cli import add_convert_parser
        add_convert_parser(subparsers)
    except ImportError:  # pragma: no cover
        pass
    from scire_jax.apps.fid_cli import add_fid_parser
    add_fid_parser(subparsers)
    from scire_jax.apps.txt2img_cli import add_txt2img_parser
    add_txt2img_parser(subparsers)
    try:
        from scire_jax.apps.train import add_train_parser
        add_train_parser(subparsers)
    except ImportError:  # pragma: no cover - the training extra is optional
        pass
    _add_debug_flags(subparsers)
    return parser


def _add_debug_flags(subparsers) -> None:
    """``--debug`` after any sub-command too (``scire-jax sample --debug``), where it is not defined yet."""
    for subparser in set(subparsers.choices.values()):
        if "--debug" not in subparser._option_string_actions:
            subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                   help="show the traceback of an error (for bug reports)")


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (multi-line messages joined by '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


# What a user can cause and fix: reported as one line.  Anything else is a bug, also one line
# (naming its type and asking for --debug), exit status 2 either way.
USER_ERRORS = (CommandError, ValueError, OSError, ImportError, FloatingPointError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "sample"
    try:
        if args.command in (None, "sample"):
            if args.command is None:
                args = parser.parse_args(["sample"] + (["--debug"] if args.debug else []))
            return run_sample(args)
        if args.command == "convert":
            from scire_jax.apps.convert_cli import run_convert
            return int(run_convert(args))
        if args.command == "txt2img":
            from scire_jax.apps.txt2img_cli import run_txt2img
            return int(run_txt2img(args))
        if args.command == "train":
            from scire_jax.apps.train import run_train
            return int(run_train(args))
        if args.command == "compare":
            return run_compare(args)
        if hasattr(args, "func"):  # sub-commands registered elsewhere that set func=run_...
            return int(args.func(args))
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"scire-jax {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure is one line (exit 2); --debug re-raises
        if getattr(args, "debug", False):
            raise
        if isinstance(error, USER_ERRORS):
            print(f"scire-jax {command}: error: {_one_line(error)}", file=sys.stderr)
        else:
            print(f"scire-jax {command}: error: {type(error).__name__}: {_one_line(error)} (unexpected: rerun with "
                  "--debug and report the traceback)", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
