"""The SciRE paper's EDM table: FID vs NFE of SciRE and baselines on an EDM checkpoint, beside the published numbers.

Reproduction (GPU / TPU; the expected runtime is in the README, "EDM and FID")::

    wget https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
    wget https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz
    wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python benchmarks/paper_table.py --checkpoint edm-cifar10-32x32-cond-vp.pkl --ref cifar10-32x32.npz \\
        --inception pt_inception-2015-12-05-6726825d.pth --num 50000 --batch-size 1000 --chunks-dir chunks --out docs

Plumbing run (CPU, no downloads: the fixture network of tests/data/edm, random Inception weights, a
reference set drawn from the same network; the numbers are NOT FIDs of a real model)::

    python benchmarks/paper_table.py --plumbing --num 200 --out docs

For every NFE in ``--nfe`` (default 12, 14, 20, 50, 100) it samples ``--num`` images with

* the seed's configuration: SciRE v1, ``singlestep_fixed``, order 2, ``phi = phi_1(3) = 1 - 1/2 + 1/6 = 2/3``
  (the official README: "SciRE_v1-2 (singlestep_fixed)", "Results obtained with phi_1(m) = phi_1(3)"),
  NSR time grid, ``sigma`` from 80 to 0.002;
* DPM-Solver++ 3M (logSNR grid), UniPC-3 (bh2, logSNR grid) at the same NFE;
* EDM's Heun sampler with ``N = (NFE + 1) // 2`` steps (``2 N - 1`` evaluations: the largest within the
  budget, e.g. 11 for 12);

all on EDM's ``alpha = 1, sigma = t`` coordinates (``load_pretrained``'s default for EDM pickles), the same
seed (noise and class labels of sample ``i`` are the same for every solver), and computes the FID
(:func:`scire_jax.apps.fid_cli.compute_fid`; samples quantised to uint8 as EDM's ``generate.py``).  Every
finished cell is recorded in ``paper_table.partial.json`` in ``--out`` and not run again by a rerun of the same
setting; with ``--chunks-dir`` every run also keeps its chunks in ``CHUNKS_DIR/<solver>-nfe<NFE>/``, so an
interrupted cell resumes too.  Writes ``paper_table.md``, ``paper_table.json`` and ``paper_table.png`` to ``--out`` (default: the
current folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "edm" / "network-snapshot-ddpmpp_cond_aug-vp.pkl"
NFES = (12, 14, 20, 50, 100)
#: (key, label, registry spec); the first is the seed's configuration
SOLVERS = (
    ("scire", "SciRE v1-2 singlestep_fixed, phi = 2/3 (seed's setting)",
     "scire:algorithm=v1,method=singlestep_fixed,order=2,phi=0.6666666666666666"),
    ("dpm++3m", "DPM-Solver++ 3M", "dpm:algorithm=dpmsolver++,method=multistep,order=3"),
    ("unipc3", "UniPC-3 (bh2)", "unipc:order=3,variant=bh2"),
    ("heun", "EDM Heun (N = (NFE+1)//2 steps)", "heun"),
)
#: the official SciRE README, edm-cifar10-32x32-cond-vp, SciRE_v1-2 singlestep_fixed, 50k samples
PUBLISHED = {12: 2.29, 14: 2.16, 20: 1.94, 50: 1.79, 100: 1.76}
PLUMBING_NOTE = ("PLUMBING RUN on the fixture network, random Inception weights: the numbers are NOT FIDs of a "
                 "real model and are comparable with nothing; they only show that the pipeline runs end to end")


REPRODUCTION = """## Reproducing the table on a GPU / TPU

```bash
wget https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
wget https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz
wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
pip install -e ".[bench,torch]"   # torch only reads the .pth Inception weights
python benchmarks/paper_table.py --checkpoint edm-cifar10-32x32-cond-vp.pkl --ref cifar10-32x32.npz \\
    --inception pt_inception-2015-12-05-6726825d.pth --num 50000 --batch-size 1000 --chunks-dir chunks --out docs
```

One cell alone (the seed's configuration at 12 NFE), resumable from `chunks/`:

```bash
scire-jax fid --checkpoint edm-cifar10-32x32-cond-vp.pkl \\
    --solver scire:algorithm=v1,method=singlestep_fixed,order=2,phi=0.6666666666666666 --nfe 12 --num 50000 \\
    --ref cifar10-32x32.npz --inception pt_inception-2015-12-05-6726825d.pth --batch-size 1000 --out-dir chunks/
```

Expected runtime (an estimate, not a measurement: no accelerator was available when this was written).
XLA's cost analysis gives 40.3 GFLOP per evaluation of the 56 M-parameter DDPM++ network at 32x32
and 11.0 GFLOP per Inception image. The full table is 4 solvers x NFE 12, 14, 20, 50, 100 = 779
network evaluations per sample (Heun: 11 + 13 + 19 + 49 + 99), x 50,000 samples = 1.6 EFLOP, plus
0.011 EFLOP of Inception features: about 4.5 h at a sustained 100 TFLOP/s (TF32 on an A100 / H100
class GPU), 9 h at 50 TFLOP/s; one 12-NFE cell is 24 PFLOP, 4-8 min. `--chunks-dir` makes every cell
resumable, and `--solvers` / `--nfe` split the table over several machines (one JSON each).

Where this differs from the paper's protocol: the same checkpoint, solver configuration, NFE and
50,000 samples with random class labels, uint8-quantised like EDM's `generate.py`; the Inception is
pytorch-fid's port of the TF FID network (EDM's `fid-refs` statistics were computed with EDM's own
TF-ported detector; the two agree closely but not bit for bit), the SciRE grid is its NSR grid on
`sigma in [0.002, 80]` without a final denoising step (the official `edm_scire` driver, whose time
range is not in the released code, may differ), and the sample seeds and labels are scire-jax's.
"""


def _reference_images(model, num: int, seed: int, batch_size: int, chunks_dir=None) -> np.ndarray:
    """Plumbing reference: ``num`` samples of the model by EDM Heun at NFE 99 with another seed."""
    from scire_jax.apps import fid_cli

    solver = fid_cli.solver_for_nfe("heun", 99, model)
    out_dir = None if chunks_dir is None else Path(chunks_dir) / "reference-heun-nfe99"
    images, _, _ = fid_cli.sample_chunks(model, solver, num, batch_size, seed, out_dir, progress=None)
    return images


def run_table(checkpoint, reference: str, inception: Optional[str], num: int, nfes: Sequence[int] = NFES,
              batch_size: int = 500, seed: int = 0, chunks_dir=None, plumbing: bool = False,
              solvers: Sequence[str] = tuple(key for key, _, _ in SOLVERS), inception_batch_size: int = 250,
              partial=None, log=print) -> Dict:
    """Every solver at every NFE: ``{"runs": [...], "info": {...}}`` (see the module docstring).

    ``partial``: a JSON file updated after every cell; cells of the same setting already in it are
    not run again (an interrupted table resumes; with ``chunks_dir`` a cell resumes inside, too).
    """
    import jax

    from scire_jax.apps import fid, fid_cli
    from scire_jax.io.pretrained import load_pretrained

    model = load_pretrained(checkpoint)
    model_id = fid_cli.model_digest(model)
    setting = {"checkpoint_digest": model_id, "num": int(num), "seed": int(seed), "batch_size": int(batch_size),
               "plumbing": bool(plumbing), "reference": None if plumbing else str(reference)}
    done: Dict = {}
    previous_seconds = 0.0
    if partial is not None and Path(partial).is_file():
        stored = json.loads(Path(partial).read_text())
        if stored.get("setting") == setting:
            done = {(r["key"], r["budget"]): r for r in stored["runs"]}
            previous_seconds = float(stored.get("seconds", 0.0))
            log(f"resuming from {partial}: {len(done)} cell(s) done")
    params = fid_cli.load_inception(inception, random_weights=plumbing)
    started = time.perf_counter()
    todo = [(key, nfe) for key, _, _ in SOLVERS if key in solvers for nfe in nfes if (key, int(nfe)) not in done]
    mu_sigma = None
    if plumbing:
        reference_label = f"{num} samples of the same network by EDM Heun NFE 99 (seed {seed + 1})"
        if todo:
            log(f"plumbing: reference = {reference_label}")
            mu_sigma = fid.image_statistics(_reference_images(model, num, seed + 1, batch_size, chunks_dir), params,
                                            batch_size=inception_batch_size)
    else:
        reference_label = str(reference)
        mu_sigma = fid.load_reference_statistics(reference, params, batch_size=inception_batch_size)
    runs: List[Dict] = []
    for key, label, spec in SOLVERS:
        if key not in solvers:
            continue
        for nfe in nfes:
            if (key, int(nfe)) in done:
                runs.append(done[key, int(nfe)])
                continue
            solver = fid_cli.solver_for_nfe(spec, nfe, model)
            out_dir = None if chunks_dir is None else Path(chunks_dir) / f"{key}-nfe{nfe}"
            result = fid_cli.compute_fid(model, solver, num, mu_sigma, params, batch_size=batch_size, seed=seed,
                                         out_dir=out_dir, model_id=model_id, inception_batch_size=inception_batch_size)
            result.update(key=key, label=label, budget=int(nfe), registry_spec=spec)
            runs.append(result)
            log(f"{label:55s} NFE {result['nfe']:3d} (budget {nfe:3d}): FID {result['fid']:.4f}  "
                f"[sampling {result['seconds_sampling']:.1f} s, features {result['seconds_features']:.1f} s]")
            if partial is not None:
                Path(partial).write_text(json.dumps({"setting": setting, "runs": runs + [
                    r for k, r in done.items() if r not in runs], "seconds": previous_seconds + time.perf_counter()
                    - started}, indent=2) + "\n")
    info = {"checkpoint": str(checkpoint), "reference": reference_label, "num": int(num), "seed": int(seed),
            "batch_size": int(batch_size), "nfes": [int(n) for n in nfes], "plumbing": bool(plumbing),
            "inception": "random (init_params(0))" if plumbing else str(inception),
            "model": repr(model), "model_digest": model_id,
            "seconds": previous_seconds + time.perf_counter() - started,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "command": " ".join(["python", "benchmarks/paper_table.py", *sys.argv[1:]])}
    return {"runs": runs, "info": info}


def markdown(table: Dict) -> str:
    info, runs = table["info"], table["runs"]
    nfes = info["nfes"]
    plumbing = info["plumbing"]
    title = "FID vs NFE on an EDM checkpoint (the SciRE paper's EDM table)"
    lines = [f"# {title}", ""]
    if plumbing:
        lines += [f"> **{PLUMBING_NOTE}.**", ""]
    lines += [f"Written by `benchmarks/paper_table.py` ({info['command']}); {info['num']} samples per cell, "
              f"seed {info['seed']}, checkpoint `{Path(info['checkpoint']).name}`, reference: {info['reference']}, "
              f"Inception: {info['inception']}; {info['backend']} ({len(info['devices'])} device(s)), "
              f"{info['seconds'] / 60:.1f} min in all.", ""]
    resumed = [run for run in runs if run.get("chunks_reused")]
    if resumed:
        lines[-2] += (f" The samples of {len(resumed)} of the {len(runs)} cells were read back from the chunks an "
                      "interrupted earlier run had written (`--chunks-dir`), so that time excludes their sampling.")
    header = ["solver"] + [f"NFE {n}" for n in nfes]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    labels = {}
    for run in runs:
        labels.setdefault(run["key"], run["label"])
    for key, label in labels.items():
        cells = []
        for n in nfes:
            run = next((r for r in runs if r["key"] == key and r["budget"] == n), None)
            if run is None:
                cells.append("")
            else:
                actual = "" if run["nfe"] == n else f" (NFE {run['nfe']})"
                cells.append(f"{run['fid']:.2f}{actual}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    published = [f"{PUBLISHED[n]:.2f}" if n in PUBLISHED else "" for n in nfes]
    lines.append("| *published (official SciRE README, edm-cifar10-32x32-cond-vp, 50k)* | " + " | ".join(published) + " |")
    lines += ["", "![FID vs NFE](paper_table.png)", ""]
    lines += REPRODUCTION.splitlines() + [""]
    if plumbing:
        lines += [f"**{PLUMBING_NOTE}.** The published row is the seed's result on the real CIFAR-10 model; the "
                  "other rows here are distances between Inception features of RANDOM weights of a 16x16 random "
                  "network's samples and a reference drawn from the same network.", ""]
    return "\n".join(lines)


def plot(table: Dict, path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    info, runs = table["info"], table["runs"]
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for key in dict.fromkeys(run["key"] for run in runs):
        mine = [r for r in runs if r["key"] == key]
        axis.plot([r["nfe"] for r in mine], [r["fid"] for r in mine], marker="o", label=mine[0]["label"])
    if not info["plumbing"]:
        axis.plot(list(PUBLISHED), list(PUBLISHED.values()), "k--", marker="x", label="published (SciRE README)")
    axis.set_xscale("log")
    axis.set_xlabel("NFE")
    axis.set_ylabel("pseudo-FID (random Inception)" if info["plumbing"] else "FID (50k)")
    title = "PLUMBING RUN: fixture network, random Inception (NOT FIDs)" if info["plumbing"] else "FID vs NFE"
    axis.set_title(title, fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring for the reproduction command.")
    parser.add_argument("--checkpoint", default=None, help="EDM checkpoint (.pkl or converted dir)")
    parser.add_argument("--ref", default=None, help="reference statistics (EDM's fid-refs/cifar10-32x32.npz)")
    parser.add_argument("--inception", default=None, help="pt_inception-2015-12-05-6726825d.pth (or .safetensors)")
    parser.add_argument("--num", type=int, default=50000, help="samples per cell (default 50000)")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES), help="NFE budgets (default 12 14 20 50 100)")
    parser.add_argument("--solvers", nargs="+", default=[key for key, _, _ in SOLVERS],
                        choices=[key for key, _, _ in SOLVERS], help="which rows (default all)")
    parser.add_argument("--batch-size", type=int, default=500, help="samples per chunk (default 500)")
    parser.add_argument("--inception-batch-size", type=int, default=250, help="images per Inception batch (default 250)")
    parser.add_argument("--seed", type=int, default=0, help="seed of noise and labels (default 0)")
    parser.add_argument("--chunks-dir", default=None, help="keep every run's chunks here (resumable)")
    parser.add_argument("--plumbing", action="store_true",
                        help="fixture network, random Inception, self-made reference: plumbing only, NOT FIDs")
    parser.add_argument("--out", default=".", help="folder of paper_table.md/.json/.png (default: current folder)")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="only rewrite paper_table.md and .png in --out from an existing paper_table.json")
    args = parser.parse_args(argv)
    if args.render is not None:
        table = json.loads(Path(args.render).read_text())
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot(table, out / "paper_table.png")
        (out / "paper_table.md").write_text(markdown(table))
        print(f"wrote {out / 'paper_table.md'}, paper_table.png from {args.render}")
        return 0
    if args.num < 2 or args.batch_size < 1 or args.inception_batch_size < 1 or any(n < 1 for n in args.nfe):
        parser.error("--num must be >= 2, --batch-size and every --nfe >= 1")
    if args.plumbing:
        if args.inception is not None:
            parser.error("--plumbing uses random Inception weights: drop --inception")
        checkpoint = args.checkpoint or str(FIXTURE)
        print(f"WARNING: {PLUMBING_NOTE}", file=sys.stderr)
    else:
        if args.checkpoint is None or args.ref is None or args.inception is None:
            parser.error("--checkpoint, --ref and --inception are required (or --plumbing)")
        checkpoint = args.checkpoint
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "paper_table.partial.json"
    table = run_table(checkpoint, args.ref, args.inception, args.num, args.nfe, args.batch_size, args.seed,
                      args.chunks_dir, args.plumbing, args.solvers, args.inception_batch_size, partial)
    (out / "paper_table.json").write_text(json.dumps(table, indent=2) + "\n")
    plot(table, out / "paper_table.png")
    (out / "paper_table.md").write_text(markdown(table))
    partial.unlink(missing_ok=True)
    print(f"wrote {out / 'paper_table.md'}, paper_table.json, paper_table.png")
    if args.plumbing:
        print(f"WARNING: {PLUMBING_NOTE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
