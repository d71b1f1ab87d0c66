"""Stable Diffusion speed: one 512x512 image, SciRE at 20 NFE, the full-size SD 1.5 architecture, on this machine.

    python benchmarks/sd_speed.py                 # full size, float32, batch 1 (CPU: ~15-25 min on 2 cores)
    python benchmarks/sd_speed.py --skip-run      # compile times only (10 vs 50 steps)
    python benchmarks/sd_speed.py --quick         # tiny components, 16x16 (smoke run, < 1 min)
    python benchmarks/sd_speed.py --out DIR       # write DIR/sd_speed.md and DIR/sd_speed.json (default: .)

The architecture is diffusers' Stable Diffusion 1.5 (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text encoder
123 M parameters; configs written below) with RANDOM weights: shapes from ``jax.eval_shape`` of each
module's ``init``, values ``Normal(0, 0.02)`` (norm scales ``1 + Normal(0, 0.02)``), no torch, no
download (:func:`scire_jax.apps.pipelines.random_sd_pipeline`).  Speed does not depend on the values.

Measured, through :func:`scire_jax.apps.pipelines.lower_text_to_image` (the program
:func:`~scire_jax.apps.pipelines.text_to_image` runs: CLIP text encoder, the solver with one guided UNet
call per step on the doubled batch, guidance 7.5, the VAE decoder):

(a) compile time of the jitted pipeline at 10 and 50 steps (SciRE v1 3M): trace + lower, and XLA
    compile, each timed; target compile(50) / compile(10) <= 1.3 (one ``lax.scan`` per plan segment);
(b) one image at 20 NFE: wall time of the run (compiled beforehand), the time of every solver step
    (host callback timestamps), images/s;
(c) peak resident memory (``ru_maxrss``) after each phase, and the parameter bytes.

The report is rewritten after every phase, so an interrupted run still leaves what it measured.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import resource
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

# diffusers' stable-diffusion-v1-5 configs (unet/config.json, vae/config.json, text_encoder/config.json,
# scheduler/scheduler_config.json), the keys the Flax ports read.
SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 768,
    "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "center_input_sample": False,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu",
    "sample_size": 512, "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD15_TEXT = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 768,
    "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2,
}
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon",
                  "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False}

# --quick: the tiny components of tests/test_pipelines.py
TINY_UNET = {"sample_size": 8, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
             "attention_head_dim": 2, "norm_num_groups": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
TINY_VAE = {"block_out_channels": [32, 64], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}
TINY_TEXT = {"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}

REPORT = "sd_speed"  # OUT/sd_speed.md and OUT/sd_speed.json
PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE = 7.5


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / (2 ** 30 if sys.platform == "darwin" else 2 ** 20)


def current_rss_gib() -> Optional[float]:
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return None


def _report(record: dict, out: pathlib.Path) -> str:
    lines = ["# Stable Diffusion speed (scire-jax)", "",
             f"{record['machine']}; jax {record['jax']} ({record['backend']}, {record['devices']} device(s)); "
             f"{record['architecture']} with random weights, {record['dtype']}, batch {record['batch']}, "
             f"{record['size']}x{record['size']}, guidance {GUIDANCE} (UNet batch {2 * record['batch']}).", "",
             "Parameters: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in record["parameters"].items())
             + f" ({record['parameter_gib']:.2f} GiB float32); built in {record['build_s']:.1f} s.", ""]
    compile_rows = record.get("compile", [])
    if compile_rows:
        lines += ["## (a) Compile time vs steps (SciRE v1 3M)", "",
                  "| steps | NFE | trace + lower s | XLA compile s | total s | peak RSS GiB |", "|---|---|---|---|---|---|"]
        for row in compile_rows:
            lines.append(f"| {row['steps']} | {row['nfe']} | {row['lower_s']:.1f} | {row['compile_s']:.1f} | "
                         f"{row['lower_s'] + row['compile_s']:.1f} | {row['peak_rss_gib']:.2f} |")
        if "compile_ratio" in record:
            lines += ["", f"compile(50) / compile(10): **{record['compile_ratio']:.2f}** (XLA compile only; target "
                          f"<= 1.3), {record['total_ratio']:.2f} with tracing."]
        lines.append("")
    run = record.get("run")
    if run:
        lines += [f"## (b) One image, SciRE at {run['nfe']} NFE", ""]
        if run.get("complete"):
            lines += [f"wall time **{run['run_s']:.1f} s** (compiled beforehand in {run['compile_s']:.1f} s): "
                      f"{run['images_per_s']:.4f} images/s; median solver step {run['median_step_s']:.2f} s "
                      f"(one guided UNet call on batch {2 * record['batch']}), min {min(run['step_s']):.2f} s, max "
                      f"{max(run['step_s']):.2f} s; VAE decoder {run['after_last_step_s']:.1f} s; peak RSS "
                      f"**{run['peak_rss_gib']:.2f} GiB** (process peak, compilation included)."]
        else:
            lines += [f"interrupted after {len(run['step_s'])} step(s): "
                      + ", ".join(f"{s:.1f}" for s in run["step_s"]) + " s per step."]
        lines.append("")
    text = "\n".join(lines)
    (out / REPORT).with_suffix(".md").write_text(text + "\n")
    (out / REPORT).with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny components at 16x16 (smoke run)")
    parser.add_argument("--skip-run", action="store_true", help="compile times only")
    parser.add_argument("--nfe", type=int, default=20, help="NFE of the timed image (default 20)")
    parser.add_argument("--compile-steps", type=int, nargs="+", default=[10, 50],
                        help="steps whose compile time is measured (default 10 50)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="network computation dtype (default float32)")
    parser.add_argument("--out", default=".", help="output directory (default: the current directory)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import jax

    import scire_jax as sj
    from scire_jax.apps import pipelines

    configs = (TINY_UNET, TINY_VAE, TINY_TEXT) if args.quick else (SD15_UNET, SD15_VAE, SD15_TEXT)
    start = time.perf_counter()
    pipe = pipelines.random_sd_pipeline(*configs, SD15_SCHEDULER, std=0.02,
                                        dtype=None if args.dtype == "float32" else args.dtype)
    build_s = time.perf_counter() - start
    params = pipelines.place_params(pipe.params)
    counts = {name: int(sum(p.size for p in jax.tree_util.tree_leaves(tree))) for name, tree in pipe.params.items()}
    pipe = dataclasses.replace(pipe, params={})  # keep one copy of the weights (the placed one)
    record = {
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs)".replace("  ", " "),
        "jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
        "architecture": "tiny SD components" if args.quick else "Stable Diffusion 1.5",
        "dtype": args.dtype, "batch": 1, "size": pipe.image_size, "parameters": counts,
        "parameter_gib": sum(counts.values()) * 4 / 2 ** 30, "build_s": build_s, "build_peak_rss_gib": peak_rss_gib(),
        "command": "python benchmarks/sd_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(_report(record, out), flush=True)

    def lowered(steps):
        return pipelines.lower_text_to_image(pipe, params, [PROMPT], key=jax.random.key(0),
                                             solver=sj.SciRE(steps=steps), guidance_scale=GUIDANCE,
                                             callback=None if steps != args.nfe else _record_step)

    step_times: List[float] = []

    def _record_step(step, t):
        step_times.append(time.perf_counter())
        print(f"  step {int(step)} t={float(t):.4f} at {step_times[-1] - run_start:.1f} s", flush=True)

    record["compile"] = []
    for steps in args.compile_steps:
        jax.clear_caches()
        start = time.perf_counter()
        low, _ = lowered(steps)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        low.compile()
        compile_s = time.perf_counter() - start
        record["compile"].append({"steps": steps, "nfe": sj.plan(sj.SciRE(steps=steps), pipe.schedule).nfe,
                                  "lower_s": lower_s, "compile_s": compile_s, "peak_rss_gib": peak_rss_gib()})
        print(f"steps {steps}: trace + lower {lower_s:.1f} s, compile {compile_s:.1f} s", flush=True)
        _report(record, out)
    by_steps = {row["steps"]: row for row in record["compile"]}
    if 10 in by_steps and 50 in by_steps:
        record["compile_ratio"] = by_steps[50]["compile_s"] / by_steps[10]["compile_s"]
        record["total_ratio"] = ((by_steps[50]["compile_s"] + by_steps[50]["lower_s"])
                                 / (by_steps[10]["compile_s"] + by_steps[10]["lower_s"]))
    print(_report(record, out), flush=True)

    if not args.skip_run:
        jax.clear_caches()
        start = time.perf_counter()
        low, call_args = lowered(args.nfe)
        compiled = low.compile()
        compile_s = time.perf_counter() - start
        nfe = sj.plan(sj.SciRE(steps=args.nfe), pipe.schedule).nfe
        record["run"] = {"nfe": nfe, "compile_s": compile_s, "step_s": [], "complete": False}
        _report(record, out)
        run_start = time.perf_counter()
        with pipelines.reporting_steps_to(_record_step):
            images = jax.block_until_ready(compiled(*call_args))
        run_end = time.perf_counter()
        assert images.shape == (1, pipe.image_size, pipe.image_size, 3)
        # A report waits for its step's new state: the start-up step (its state does not change) reports at
        # once, each later one after the UNet call its update needs, so the intervals between reports are
        # one guided UNet call each (the first also holds the text encoder); the decoder runs after the last.
        steps = list(np.diff(step_times))
        record["run"].update(step_s=steps, run_s=run_end - run_start, images_per_s=1.0 / (run_end - run_start),
                             median_step_s=float(np.median(steps)),
                             after_last_step_s=run_end - step_times[-1], peak_rss_gib=peak_rss_gib(),
                             current_rss_gib=current_rss_gib(), complete=True)
    print(_report(record, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
