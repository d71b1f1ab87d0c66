"""ADM (guided-diffusion) speed: one SciRE 10-NFE sample of the ImageNet-256 architecture on this machine.

    python benchmarks/adm_speed.py                    # imagenet256, float32, batch 1 (2 CPU cores: ~10-20 min)
    python benchmarks/adm_speed.py --arch imagenet64  # another architecture of scire_jax.io.convert.adm.ARCHITECTURES
    python benchmarks/adm_speed.py --guided           # plus the noisy classifier (its official scale), one grad per NFE
    python benchmarks/adm_speed.py --dtype bfloat16   # bf16 network compute (the solver stays float32)
    python benchmarks/adm_speed.py --quick            # the 32x32 test-fixture architecture (smoke run, < 1 min)
    python benchmarks/adm_speed.py --out DIR          # write DIR/adm_speed.md and DIR/adm_speed.json (default: .)

The network is the released architecture (``ARCHITECTURES[arch]["kwargs"]``, 554 M parameters for
``imagenet256``) with RANDOM weights: shapes from ``jax.eval_shape`` of the module's ``init``, values
``Normal(0, 0.02)`` (GroupNorm scales ``1 + Normal(0, 0.02)``), no torch, no download.  Speed does not
depend on the values.  The sampler is the one ``scire-jax sample`` runs for a class-conditional model
(:func:`scire_jax.io.adm_loading.class_conditional_noise_fn`, the trained discrete schedule, SciRE v1
multistep order 3, one label per sample as an argument).

Measured: trace + lower time, XLA compile time, and the wall time of the compiled sample (one call,
``block_until_ready``), with the time of every solver step (host callback timestamps: each waits for
its step's new state, so the intervals are one network call each).  The report is rewritten after
every phase (and after every step of the run), so an interrupted run still leaves what it measured.
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

REPORT = "adm_speed"  # OUT/adm_speed.md and OUT/adm_speed.json
# --quick: the gd_unet_cond / gd_classifier fixtures' architectures (tests/data/adm/cases.json)
QUICK_UNET = {"image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 2,
              "attention_resolutions": [2, 4], "channel_mult": [1, 1, 2], "num_classes": 10, "num_heads": 4,
              "num_head_channels": 16, "use_scale_shift_norm": True, "resblock_updown": True,
              "family": "guided_diffusion"}
QUICK_CLASSIFIER = {"image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 10, "num_res_blocks": 2,
                    "attention_resolutions": [2, 4], "channel_mult": [1, 1, 2], "num_head_channels": 16,
                    "use_scale_shift_norm": True, "resblock_updown": True, "pool": "attention",
                    "family": "guided_diffusion_classifier"}


def peak_rss_gib() -> float:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / (2 ** 30 if sys.platform == "darwin" else 2 ** 20)


def _load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def random_variables(module, seed: int = 0, std: float = 0.02):
    """``{"params": ...}`` of ``module`` with Normal(0, std) values (norm scales 1 + Normal(0, std)), float32."""
    import jax
    from flax import traverse_util

    from scire_jax.models.adm import abstract_variables

    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(dict(abstract_variables(module)["params"]))
    values = {}
    for path, leaf in flat.items():
        value = rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(std)
        values[path] = jax.numpy.asarray(value + 1.0 if path[-1] == "scale" else value)
    return {"params": traverse_util.unflatten_dict(values)}


def build(arch: str, dtype, guided: bool, quick: bool):
    """``(model record, classifier record or None)`` with random weights."""
    from scire_jax.io import adm_loading
    from scire_jax.io.convert.adm import ARCHITECTURES
    from scire_jax.io.pretrained import Pretrained
    from scire_jax.models.adm import from_config

    if quick:
        entry = {"kwargs": {k: v for k, v in QUICK_UNET.items() if k != "family"}, "family": "guided_diffusion",
                 "image_size": 32, "schedule": ARCHITECTURES["imagenet256"]["schedule"], "classifier": "quick"}
    else:
        if arch not in ARCHITECTURES or ARCHITECTURES[arch]["family"] == "guided_diffusion_classifier":
            raise SystemExit(f"--arch {arch!r}: choose a diffusion model of {sorted(ARCHITECTURES)}")
        entry = ARCHITECTURES[arch]
    module = from_config(entry["kwargs"], entry["family"], dtype=dtype)
    schedule, time_input = adm_loading.schedule_for(entry["schedule"], "trained")
    size = entry["image_size"]
    model = Pretrained(adm_loading.make_apply_fn(module, module.in_channels), random_variables(module), schedule,
                       "noise", (size, size, module.in_channels),
                       "class" if module.num_classes else "none", module.num_classes, time_input, entry["family"],
                       f"random {arch if not quick else 'quick'}")
    classifier = None
    if guided:
        if quick:
            ckwargs, scale = {k: v for k, v in QUICK_CLASSIFIER.items() if k != "family"}, 1.0
        elif entry.get("classifier"):
            ckwargs, scale = ARCHITECTURES[entry["classifier"]]["kwargs"], ARCHITECTURES[entry["classifier"]]["classifier_scale"]
        else:
            raise SystemExit(f"--guided: {arch} has no released classifier")
        cmodule = from_config(ckwargs, "guided_diffusion_classifier", dtype=dtype)
        classifier = adm_loading.PretrainedClassifier(adm_loading.make_classifier_apply_fn(cmodule),
                                                      random_variables(cmodule, seed=1), int(cmodule.out_channels),
                                                      model.sample_shape, float(scale))
    return model, classifier


def _report(record: dict, out: pathlib.Path) -> str:
    lines = ["# ADM speed (scire-jax)", "",
             f"{record['machine']}; jax {record['jax']} ({record['backend']}, {record['devices']} device(s)); "
             f"`{record['arch']}` architecture ({record['parameters'] / 1e6:.1f} M parameters"
             + (f" + classifier {record['classifier_parameters'] / 1e6:.1f} M, guidance scale {record['scale']}"
                if record.get("classifier_parameters") else "")
             + f") with random weights, {record['dtype']} network compute, batch {record['batch']}, "
             f"{record['size']}x{record['size']}; {record['solver']}, trained schedule.", "",
             f"Command: `{record['command']}`", ""]
    if "lower_s" in record:
        lines += [f"- trace + lower: {record['lower_s']:.1f} s", f"- XLA compile: {record['compile_s']:.1f} s "
                  f"(peak RSS {record['compile_peak_rss_gib']:.2f} GiB)"]
    run = record.get("run")
    if run:
        if run.get("complete"):
            lines += [f"- **one sample, {run['nfe']} NFE: {run['run_s']:.1f} s** (compiled beforehand): median "
                      f"{run['median_step_s']:.2f} s per network call (min {min(run['step_s']):.2f}, max "
                      f"{max(run['step_s']):.2f}), {run['run_s'] / run['nfe']:.2f} s per NFE overall; finite: "
                      f"{run['finite']}; peak RSS {run['peak_rss_gib']:.2f} GiB",
                      f"- process CPU time of the run {run['cpu_s']:.1f} s ({run['cpu_s'] / run['nfe']:.1f} CPU-s per NFE; "
                      f"wall ~ CPU / cores when the machine is otherwise idle); 1-min load average "
                      f"{run['load_average'][0]} before, {run['load_average'][1]} after (other processes slow the "
                      "wall time on a shared machine)"]
        else:
            lines += [f"- interrupted after {len(run['step_s'])} step(s): "
                      + ", ".join(f"{s:.1f}" for s in run["step_s"]) + " s per step"]
    text = "\n".join(lines)
    (out / REPORT).with_suffix(".md").write_text(text + "\n")
    (out / REPORT).with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="imagenet256", help="architecture name (default imagenet256)")
    parser.add_argument("--nfe", type=int, default=10, help="SciRE NFE budget (default 10)")
    parser.add_argument("--batch", type=int, default=1, help="samples (default 1)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="network compute dtype (default float32)")
    parser.add_argument("--guided", action="store_true", help="add the released classifier's architecture")
    parser.add_argument("--quick", action="store_true", help="the 32x32 fixture architecture (smoke run)")
    parser.add_argument("--out", default=".", help="output directory (default: the current directory)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import jax
    import jax.numpy as jnp

    import scire_jax as sj
    from scire_jax.io import adm_loading

    start = time.perf_counter()
    model, classifier = build(args.arch, jnp.dtype(args.dtype), args.guided, args.quick)
    build_s = time.perf_counter() - start
    solver = sj.SciRE(steps=args.nfe)
    nfe = sj.plan(solver, model.schedule).nfe
    count = int(sum(p.size for p in jax.tree_util.tree_leaves(model.params)))
    record = {
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs)".replace("  ", " "),
        "jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
        "arch": "quick (32x32 fixture)" if args.quick else args.arch, "parameters": count, "dtype": args.dtype,
        "batch": args.batch, "size": model.sample_shape[0], "solver": f"{solver.label()} ({nfe} NFE)",
        "build_s": build_s,
        "command": "python benchmarks/adm_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if classifier is not None:
        record["classifier_parameters"] = int(sum(p.size for p in jax.tree_util.tree_leaves(classifier.params)))
        record["scale"] = classifier.classifier_scale
    print(_report(record, out), flush=True)

    step_times: List[float] = []

    def on_step(step, t):
        step_times.append(time.perf_counter())
        print(f"  step {int(step)} t={float(t):.4f} at {step_times[-1] - run_start:.1f} s", flush=True)

    labels = adm_loading.class_labels(jax.random.key(0), args.batch, model.num_classes or classifier.num_classes) \
        if (model.conditioning == "class" or classifier is not None) else None
    if labels is not None:
        noise_fn = adm_loading.class_conditional_noise_fn(model, classifier)
        params = adm_loading.sampling_params(model, labels, classifier)
    else:
        noise_fn, params = model.noise_fn(), model.params
    sample_fn = jax.jit(sj.make_sampler(solver, model.schedule, noise_fn, callback=on_step), static_argnums=2)
    key, shape = jax.random.key(0), (args.batch,) + model.sample_shape
    start = time.perf_counter()
    lowered = sample_fn.lower(params, key, shape)
    record["lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    record["compile_s"] = time.perf_counter() - start
    record["compile_peak_rss_gib"] = peak_rss_gib()
    print(_report(record, out), flush=True)

    record["run"] = {"nfe": nfe, "step_s": [], "complete": False}
    run_start, cpu_start, load_start = time.perf_counter(), time.process_time(), _load_average()
    x = jax.block_until_ready(compiled(params, key))
    run_end, cpu_end = time.perf_counter(), time.process_time()
    # the first report comes after the start-up evaluation, each later one after one network call
    stamps = [run_start] + step_times
    steps = [float(s) for s in np.diff(stamps)]
    record["run"].update(step_s=steps, run_s=run_end - run_start, median_step_s=float(np.median(steps)),
                         after_last_step_s=run_end - stamps[-1], finite=bool(np.all(np.isfinite(np.asarray(x)))),
                         cpu_s=cpu_end - cpu_start, load_average=[load_start, _load_average()],
                         peak_rss_gib=peak_rss_gib(), complete=True)
    print(_report(record, out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
