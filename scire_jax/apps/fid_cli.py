"""``scire-jax fid``: sample a model in resumable chunks and print its FID against reference statistics.

Example (the SciRE paper's EDM setting, 12 NFE, on a GPU / TPU)::

    scire-jax fid --checkpoint edm-cifar10-32x32-cond-vp.pkl \\
        --solver scire:algorithm=v1,method=singlestep_fixed,order=2,phi=0.6666666666666666 \\
        --nfe 12 --num 50000 --ref cifar10-32x32.npz \\
        --inception pt_inception-2015-12-05-6726825d.pth --batch-size 500 --out-dir chunks/

What it does:

1. Validates every argument, reads the Inception weights (``--inception``, pytorch-fid's
   ``pt_inception-2015-12-05-6726825d.pth`` or a ``.safetensors`` copy) and the reference
   statistics (``--ref``: EDM's ``fid-refs/*.npz`` with ``mu`` / ``sigma``, an ``.npz`` of images or
   an image folder) before any sampling.  Without Inception weights it stops, unless
   ``--random-inception`` is given (plumbing tests only: the printed number is then not an FID).
2. Loads ``--checkpoint`` with :func:`scire_jax.load_pretrained` (EDM ``*.pkl``, converted
   checkpoints, diffusers folders, ...; ``--schedule`` for EDM / ADM models) and draws ``--num``
   samples in chunks of ``--batch-size`` with a progress bar.  Sample ``i`` starts from
   ``normal(fold_in(key, i))`` and (class-conditional models) has the label
   ``randint(fold_in(split(key)[1], i), num_classes)``, so a chunk does not depend on the others.
3. With ``--out-dir``, every chunk is written as ``chunk-NNNNNN.npz`` (uint8 images as EDM writes
   PNGs, labels and metadata) as soon as it is done; a rerun with the same directory reuses every
   chunk already there.  A chunk of another run (another model, solver, NFE, seed or batch size)
   is refused with one line naming what differs.
4. Quantises the samples to uint8 (EDM's ``generate.py``), computes the pool3 features of the FID
   Inception-v3 (batched, sharded over ``--devices``), and prints ``FID <value> (...)`` on stdout
   (``fid.json`` in ``--out-dir`` too).

Solvers are registry specs (``NAME[:FIELD=VALUE,...]``, see ``scire-jax sample --help``); ``--nfe`` is
the network-evaluation budget: the steps of every solver except EDM's Heun (``heun``), whose
``N`` steps cost ``2 N - 1`` evaluations, so it gets ``N = (nfe + 1) // 2`` (the largest ``N`` within
the budget).  EDM models sample over EDM's noise levels ``sigma in [0.002, 80]`` whatever the schedule.

Every failure is one line on stderr and exit status 2 (``--debug``: the traceback).

Wiring into a parent parser::

    add_fid_parser(subparsers)      # sets func=run_fid
    args = parser.parse_args(); args.func(args)

Standalone: ``python -m scire_jax.apps.fid_cli --checkpoint ... --ref ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from scire_jax.apps.arguments import positive_int as _positive_int
from scire_jax.apps.arguments import seed as _seed

__all__ = ["add_fid_parser", "run_fid", "main", "FIDError", "solver_for_nfe", "sample_labels", "model_digest",
           "run_metadata", "check_chunks", "sample_chunks", "compute_fid", "load_inception", "ENVIRONMENT_INCEPTION",
           "FID_WEIGHTS_URL", "RANDOM_INCEPTION_WARNING"]

#: environment variable naming the Inception weights file when ``--inception`` is not given
ENVIRONMENT_INCEPTION = "SCIRE_JAX_INCEPTION"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
RANDOM_INCEPTION_WARNING = ("WARNING: --random-inception: the Inception network has RANDOM weights; the number "
                            "printed is NOT an FID and is comparable with nothing (plumbing test only)")
CHUNK_FORMAT = {"format": "scire_jax.fid_chunk", "version": 1}
#: metadata fields that must agree for a chunk to be reused
RUN_FIELDS = ("model", "solver", "nfe", "seed", "batch_size", "sample_shape")


class FIDError(ValueError):
    """A user error of ``scire-jax fid``: one line on stderr, exit status 2."""


def _status(text: str, stream=None) -> None:
    if os.environ.get("SCIRE_JAX_PROGRESS", "").strip() not in ("0", "false", "no", "off"):
        print(text, file=sys.stderr if stream is None else stream, flush=True)


# -- solvers, labels, model identity -------------------------------------------------------------------------


def solver_for_nfe(spec: str, nfe: int, model=None):
    """The solver of ``spec`` within ``nfe`` network evaluations (``heun``: ``N = (nfe + 1) // 2`` steps).

    For an EDM model (``model.family == "edm"``) on a non-EDM schedule (``schedule="native"``), the
    solver's ``t_start`` / ``t_end`` default to EDM's noise levels ``sigma in [0.002, 80]``.

    Raises:
      ValueError: an unknown solver or field, or an NFE budget the solver cannot meet.
    """
    from scire_jax.core.solvers.heun import EDMHeun
    from scire_jax.core.solvers.registry import get_solver, parse_spec, solver_from_spec

    if int(nfe) < 1:
        raise ValueError(f"--nfe={nfe} is not allowed: it must be >= 1")
    name, _ = parse_spec(spec)
    steps = (int(nfe) + 1) // 2 if get_solver(name).cls is EDMHeun else int(nfe)
    if get_solver(name).cls is EDMHeun and steps < 2:
        raise ValueError(f"--nfe={nfe} is too small for EDM's Heun sampler (NFE = 2 N - 1 with N >= 2 steps)")
    solver = solver_from_spec(spec, steps)
    if model is not None and getattr(model, "family", None) == "edm" and model.schedule.name != "edm":
        if solver.t_start is None and solver.t_end is None and solver.times is None:
            from scire_jax.io.edm_loading import edm_time_range

            t_start, t_end = edm_time_range(model)
            solver = dataclasses.replace(solver, t_start=t_start, t_end=t_end)
    return solver


def sample_labels(key, first_index, count: int, num_classes: int):
    """Class labels of samples ``first_index .. first_index + count - 1``: ``randint(fold_in(split(key)[1], i))``."""
    import jax
    import jax.numpy as jnp

    labels_key = jax.random.split(key)[1]
    indices = first_index + jnp.arange(count)
    return jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(labels_key, i), (), 0, num_classes))(indices)


def model_digest(model) -> str:
    """SHA-256 (first 16 hex digits) of the model's weights, family, shape and sampling conventions."""
    import hashlib

    from scire_jax.io.checkpoints import digest

    text = json.dumps({"params": digest(model.params)["value"], "family": model.family,
                       "sample_shape": list(model.sample_shape), "schedule": repr(model.schedule),
                       "prediction": model.prediction, "time_input": model.time_input}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_metadata(model, solver, nfe: int, seed: int, batch_size: int, model_id: Optional[str] = None) -> Dict[str, Any]:
    """What a chunk records about its run (:data:`RUN_FIELDS` must agree for reuse)."""
    return {"model": model_digest(model) if model_id is None else model_id, "solver": repr(solver), "nfe": int(nfe),
            "seed": int(seed), "batch_size": int(batch_size), "sample_shape": list(model.sample_shape),
            "source": str(model.source), "label": solver.label()}


# -- chunks --------------------------------------------------------------------------------------------------


def _chunk_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"chunk-{index:06d}.npz"


def _read_chunk(path: Path, run: Dict[str, Any], expected: int):
    """``(images, labels)`` of a chunk written for ``run``, None if it holds fewer than ``expected`` samples."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise FIDError(f"cannot read chunk {str(path)!r} ({type(error).__name__}: {error}); delete it to sample it "
                       "again") from None
    if {k: meta.get(k) for k in CHUNK_FORMAT} != CHUNK_FORMAT:
        raise FIDError(f"{str(path)!r} is not a scire-jax FID chunk of this version")
    for field in RUN_FIELDS:
        if meta.get(field) != run[field]:
            raise FIDError(f"--out-dir {str(path.parent)!r} holds chunks of another run: {path.name} has {field}="
                           f"{meta.get(field)!r}, this run {field}={run[field]!r}; use another (or an empty) --out-dir, "
                           "or delete its chunks")
    if images.shape[0] < expected:
        return None  # written by a run with a smaller --num: sample it again
    return images[:expected], labels[:expected]


def _write_chunk(path: Path, run: Dict[str, Any], first: int, images: np.ndarray, labels: np.ndarray) -> None:
    from scire_jax.io.files import atomic_write

    meta = json.dumps(dict(CHUNK_FORMAT, **run, first_index=int(first), count=int(images.shape[0])), sort_keys=True)

    def write(temporary):
        with open(temporary, "wb") as handle:
            np.savez(handle, images=images, labels=labels, meta=np.array(meta))

    atomic_write(str(path), write)


def _run(model, solver, num, batch_size, seed, mesh, model_id=None):
    """``(chunk size, run metadata)``: the chunk size is rounded up to a multiple of the mesh size."""
    import scire_jax as sj

    devices = 1 if mesh is None else mesh.size
    batch = -(-min(int(batch_size), int(num)) // devices) * devices
    return batch, run_metadata(model, solver, sj.plan(solver, model.schedule).nfe, seed, batch, model_id)


def check_chunks(out_dir, run: Dict[str, Any]) -> int:
    """Refuse (:class:`FIDError`) if ``out_dir`` holds chunks of another run; returns how many chunks it holds."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    paths = sorted(out_dir.glob("chunk-*.npz"))
    for path in paths:
        _read_chunk(path, run, 0)
    return len(paths)


def sample_chunks(model, solver, num: int, batch_size: int, seed: int = 0, out_dir=None, mesh=None,
                  model_id: Optional[str] = None, progress: Optional[bool] = None,
                  stream=None) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
    """Draw ``num`` samples of ``model`` with ``solver`` as uint8 images, in (resumable) chunks.

    Args:
      model: a :class:`~scire_jax.io.pretrained.Pretrained` record (``"none"`` or ``"class"`` conditioning).
      solver: a solver (e.g. :func:`solver_for_nfe`).
      num: number of samples.
      batch_size: samples per chunk (rounded up to a multiple of the mesh size).
      seed: the PRNG seed (:func:`scire_jax.core.sampling.seed_key`).
      out_dir: folder for the chunk files (created; reused chunks are read back), or None.
      mesh: optional batch mesh (:func:`scire_jax.batch_mesh`).
      model_id: the model's identity in chunk metadata (default :func:`model_digest`).
      progress: show the progress bar (None: on a terminal, see :mod:`scire_jax.apps.progress`).

    Returns:
      ``(images, labels, counts)``: ``(num, H, W, C)`` uint8 (EDM's PNG quantisation), ``(num,)`` int32
      labels (-1 for unconditional models) and ``{"reused": chunks read back, "sampled": chunks drawn}``.

    Raises:
      FIDError: chunks of another run in ``out_dir``, unreadable chunks, non-finite samples, a
        text-conditioned model.
    """
    import jax

    import scire_jax as sj
    from scire_jax.apps.fid import to_uint8
    from scire_jax.apps.progress import progress as progress_bar
    from scire_jax.core.sampling import seed_key

    if model.conditioning not in ("none", "class"):
        raise FIDError(f"model {model.source!r} has {model.conditioning!r} conditioning; fid samples unconditional "
                       "and class-conditional models")
    batch, run = _run(model, solver, num, batch_size, seed, mesh, model_id)
    nfe = run["nfe"]
    out_dir = None if out_dir is None else Path(out_dir)
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise FIDError(f"--out-dir {str(out_dir)!r} is a file, not a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
    conditional = model.conditioning == "class"

    def apply_fn(params, x, t_input):  # params = (network variables, labels of this chunk or None)
        return model.apply_fn(params[0], x, t_input, params[1]) if conditional else model.apply_fn(params[0], x, t_input)

    noise_fn = sj.wrap_model(apply_fn, model.schedule, prediction=model.prediction, time_input=model.time_input)
    key = seed_key(int(seed))
    sample_fn = jax.jit(sj.make_sampler(solver, model.schedule, noise_fn, mesh=mesh), static_argnums=2)
    labels_fn = jax.jit(lambda k, first: sample_labels(k, first, batch, int(model.num_classes or 1)))
    params = model.params
    if mesh is not None:
        from scire_jax.core.sharding import replicate

        params = replicate(params, mesh)
    shape = (batch,) + tuple(model.sample_shape)
    starts = list(range(0, int(num), batch))
    images, labels, counts = [], [], {"reused": 0, "sampled": 0}
    found = {}
    if out_dir is not None:
        for index, first in enumerate(starts):
            path = _chunk_path(out_dir, index)
            if path.is_file():
                chunk = _read_chunk(path, run, min(batch, num - first))
                if chunk is not None:
                    found[index] = chunk
        if found:
            _status(f"resuming: {len(found)} of {len(starts)} chunk(s) found in {str(out_dir)!r}", stream)
    reused = sum(len(found[i][0]) for i in found)
    disable = None if progress is None else not progress
    with progress_bar(int(num), "sampling", "sample", disable, initial=reused, file=stream) as bar:
        for index, first in enumerate(starts):
            if index in found:
                chunk_images, chunk_labels = found[index]
                counts["reused"] += 1
            else:
                count = min(batch, num - first)
                chunk_labels = labels_fn(key, first) if conditional else None
                x = np.asarray(sample_fn((params, chunk_labels), key, shape, first))[:count]
                if not np.isfinite(x).all():
                    raise FIDError(f"chunk {index} (samples {first}..{first + count - 1}) holds non-finite values: "
                                   f"the solver ({solver.label()}, NFE {nfe}) or the network diverged; nothing of it "
                                   "was written")
                chunk_images = to_uint8(x)
                chunk_labels = (np.asarray(chunk_labels, np.int32)[:count] if conditional
                                else np.full((count,), -1, np.int32))
                if out_dir is not None:
                    _write_chunk(_chunk_path(out_dir, index), run, first, chunk_images, chunk_labels)
                counts["sampled"] += 1
                bar.update(count)
            images.append(chunk_images)
            labels.append(chunk_labels)
    return np.concatenate(images), np.concatenate(labels), counts


# -- Inception and FID ---------------------------------------------------------------------------------------


def load_inception(path: Optional[str] = None, random_weights: bool = False, stream=None):
    """FID Inception parameters from ``path`` (else ``$SCIRE_JAX_INCEPTION``), or random ones when asked.

    Raises:
      FIDError: no weights and not ``random_weights`` (the message says where to get them), or both.
    """
    if path is None and not random_weights:
        path = os.environ.get(ENVIRONMENT_INCEPTION) or None
    if path is not None and random_weights:
        raise FIDError(f"--inception={path!r} and --random-inception are not allowed together: give one")
    if random_weights:
        from scire_jax.models.inception import init_params

        _status(RANDOM_INCEPTION_WARNING, stream)
        return init_params(0)
    if path is None:
        raise FIDError("no Inception weights: pass --inception pt_inception-2015-12-05-6726825d.pth (pytorch-fid's "
                       f"FID weights, {FID_WEIGHTS_URL}; a .pth needs torch, a .safetensors copy does not) or set "
                       f"${ENVIRONMENT_INCEPTION}; --random-inception runs with random weights for plumbing tests "
                       "(the number is then not an FID)")
    from scire_jax.io.convert.inception import load_inception_params

    if not Path(path).is_file():
        raise FIDError(f"--inception={path!r} does not exist (download: {FID_WEIGHTS_URL})")
    try:
        return load_inception_params(path)
    except ImportError as error:
        raise FIDError(f"--inception={path!r}: reading a .pth needs torch (pip install 'scire-jax[torch]'), or "
                       f"convert it to .safetensors ({error})") from None


def compute_fid(model, solver, num: int, reference: Tuple[np.ndarray, np.ndarray], inception_params, *,
                batch_size: int = 250, seed: int = 0, out_dir=None, mesh=None, inception_batch_size: int = 250,
                model_id: Optional[str] = None, progress: Optional[bool] = None, stream=None) -> Dict[str, Any]:
    """Sample (:func:`sample_chunks`), extract Inception features and return the FID with run details.

    Returns:
      dict: ``fid``, ``num``, ``nfe``, ``solver`` (label), ``spec`` (``repr``), ``seed``, ``batch_size``,
      ``chunks_reused``, ``chunks_sampled``, ``seconds_sampling``, ``seconds_features``.
    """
    import scire_jax as sj
    from scire_jax.apps import fid

    start = time.perf_counter()
    images, _, counts = sample_chunks(model, solver, num, batch_size, seed, out_dir, mesh, model_id, progress, stream)
    sampled = time.perf_counter()
    _status(f"computing Inception features of {len(images):,} samples ...", stream)
    features = fid.inception_features(images, inception_params, batch_size=inception_batch_size, mesh=mesh)
    mu, sigma = fid.feature_statistics(features)
    value = fid.frechet_distance(mu, sigma, *reference)
    return {"fid": float(value), "num": int(num), "nfe": int(sj.plan(solver, model.schedule).nfe),
            "solver": solver.label(), "spec": repr(solver), "seed": int(seed), "batch_size": int(batch_size),
            "chunks_reused": counts["reused"], "chunks_sampled": counts["sampled"],
            "seconds_sampling": sampled - start, "seconds_features": time.perf_counter() - sampled}


# -- command line --------------------------------------------------------------------------------------------




def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="the model: an EDM *.pkl, a converted checkpoint dir, a diffusers folder or a registered "
                             "name (see scire_jax.load_pretrained)")
    parser.add_argument("--solver", default="scire",
                        help="registry spec NAME[:FIELD=VALUE,...], e.g. scire, "
                             "scire:algorithm=v1,method=singlestep_fixed,order=2,phi=0.6666666666666666, dpm, unipc, "
                             "heun (default scire)")
    parser.add_argument("--nfe", type=_positive_int("nfe"), required=True,
                        help="network evaluations per sample (heun: N = (nfe + 1) // 2 steps, NFE 2N - 1)")
    parser.add_argument("--num", type=_positive_int("num"), default=50000, help="number of samples (default 50000)")
    parser.add_argument("--ref", required=True,
                        help="reference statistics: EDM's fid-refs/*.npz (mu, sigma), an .npz of NHWC images or an "
                             "image folder")
    parser.add_argument("--inception", default=None, metavar="PATH",
                        help=f"FID Inception weights (pt_inception-2015-12-05-6726825d.pth or .safetensors; default "
                             f"${ENVIRONMENT_INCEPTION})")
    parser.add_argument("--random-inception", action="store_true",
                        help="random Inception weights: plumbing tests only, the number printed is NOT an FID")
    parser.add_argument("--batch-size", type=_positive_int("batch-size"), default=250,
                        help="samples per chunk (default 250)")
    parser.add_argument("--inception-batch-size", type=_positive_int("inception-batch-size"), default=250,
                        help="images per Inception batch (default 250)")
    parser.add_argument("--seed", type=_seed, default=0, help="PRNG seed of noise and labels (default 0)")
    parser.add_argument("--out-dir", default=None,
                        help="folder for the chunk files: a rerun with the same folder resumes (default: none, "
                             "nothing is kept)")
    parser.add_argument("--schedule", default="trained",
                        help="EDM models: trained (= edm: alpha = 1, sigma = t, as EDM samples) or native (VP / "
                             "iDDPM nets on their VP schedule); ADM models: trained or official_vp")
    parser.add_argument("--devices", type=_positive_int("devices"), default=None,
                        help="shard sampling and Inception over this many local devices (default 1)")


def add_fid_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``fid`` sub-command to an ``argparse`` subparsers object (sets ``func=run_fid``)."""
    parser = subparsers.add_parser("fid", help="sample a model in resumable chunks and print its FID",
                                   description=(__doc__ or "").split("\n\n")[0])
    _add_arguments(parser)
    parser.set_defaults(func=run_fid)
    return parser


def _mesh(devices: Optional[int]):
    if devices is None or devices == 1:
        return None
    import jax

    from scire_jax.core.sharding import batch_mesh

    available = jax.local_devices()
    if devices > len(available):
        raise FIDError(f"--devices={devices} is not allowed: only {len(available)} local device(s) "
                       f"({available[0].platform})")
    return batch_mesh(available[:devices])


def _fid(args) -> Dict[str, Any]:
    import scire_jax as sj

    try:
        from scire_jax.apps import fid
    except ImportError as error:
        raise FIDError(f"scire-jax fid needs scipy for the Frechet distance: pip install scipy ({error})") from None

    if args.num < 2:
        raise FIDError(f"--num={args.num} is not allowed: a covariance needs at least 2 samples")
    try:
        solver = solver_for_nfe(args.solver, args.nfe)  # the spec is checked before anything is loaded
    except ValueError as error:
        raise FIDError(f"--solver={args.solver!r}: {error}") from None
    if not Path(args.ref).exists():
        raise FIDError(f"--ref={args.ref!r} does not exist (EDM's references: "
                       "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz)")
    if args.out_dir is not None and Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise FIDError(f"--out-dir={args.out_dir!r} is a file, not a folder")
    if args.inception is not None and args.random_inception:
        load_inception(args.inception, True)  # "not allowed together"
    inception = args.inception or os.environ.get(ENVIRONMENT_INCEPTION) or None
    if inception is None and not args.random_inception:
        load_inception(None, False)  # the error saying where to get the weights, before anything is loaded
    if inception is not None and not args.random_inception and not Path(inception).is_file():
        raise FIDError(f"--inception={inception!r} does not exist (download: {FID_WEIGHTS_URL})")
    mesh = _mesh(args.devices)
    from scire_jax.io.pretrained import load_pretrained

    _status(f"loading {args.checkpoint!r} ...")
    try:
        model = load_pretrained(args.checkpoint, schedule=args.schedule)
    except (ValueError, OSError, ImportError) as error:
        raise FIDError(f"--checkpoint={args.checkpoint!r}: {error}") from None
    try:
        solver = solver_for_nfe(args.solver, args.nfe, model)
    except ValueError as error:
        raise FIDError(f"--solver={args.solver!r}: {error}") from None
    model_id = model_digest(model)
    batch, run = _run(model, solver, args.num, args.batch_size, args.seed, mesh, model_id)
    if args.out_dir is not None:  # chunks of another run are refused before the slow parts
        check_chunks(args.out_dir, run)
    params = load_inception(args.inception, args.random_inception)
    _status(f"reading reference statistics {args.ref!r} ...")
    reference = fid.load_reference_statistics(args.ref, params, batch_size=args.inception_batch_size, mesh=mesh)
    nfe = sj.plan(solver, model.schedule).nfe
    note = "" if nfe == args.nfe else f" (of a budget of {args.nfe})"
    _status(f"sampling {args.num:,} samples of {'x'.join(map(str, model.sample_shape))} with {solver.label()}, NFE "
            f"{nfe}{note}, in chunks of {batch} ...")
    result = compute_fid(model, solver, args.num, reference, params, batch_size=args.batch_size, seed=args.seed,
                         out_dir=args.out_dir, mesh=mesh, inception_batch_size=args.inception_batch_size,
                         model_id=model_id)
    result.update(checkpoint=str(args.checkpoint), ref=str(args.ref), random_inception=bool(args.random_inception),
                  inception=None if args.random_inception else str(args.inception or os.environ.get(ENVIRONMENT_INCEPTION)))
    if args.out_dir is not None:
        from scire_jax.io.files import atomic_write_text

        atomic_write_text(str(Path(args.out_dir) / "fid.json"), json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def run_fid(args: argparse.Namespace) -> int:
    """Run ``fid`` from parsed arguments: prints the FID line (or one error line) and returns the exit code."""
    try:
        result = _fid(args)
    except (ValueError, OSError, ImportError) as error:
        if getattr(args, "debug", False):
            raise
        message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"scire-jax fid: error: {message}", file=sys.stderr)
        return 2
    what = (f"({result['num']} samples, {result['solver']} NFE {result['nfe']}, seed {result['seed']}, ref "
            f"{Path(result['ref']).name}; sampling {result['seconds_sampling']:.1f} s, features "
            f"{result['seconds_features']:.1f} s; chunks reused {result['chunks_reused']}, sampled "
            f"{result['chunks_sampled']})")
    if result["random_inception"]:
        print(f"pseudo-FID {result['fid']:.6f} {what} -- RANDOM Inception weights: NOT an FID")
        _status(RANDOM_INCEPTION_WARNING)
    else:
        print(f"FID {result['fid']:.6f} {what}")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _OneLineParser(prog="scire-jax fid", description=(__doc__ or "").split("\n\n")[0])
    _add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return run_fid(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
