"""Throughput of FID Inception feature extraction (images/s) with random weights.

    python benchmarks/fid_throughput.py                      # batch 250, 32x32 uint8 -> 299x299, 2 timed batches
    python benchmarks/fid_throughput.py --batches 4 --out DIR
    python benchmarks/fid_throughput.py --batch 8 --batches 1  # smoke run

Measures :func:`scire_jax.apps.fid.inception_features` (the public path: host batches, upload,
the jitted network, features back to the host) on whatever JAX's default backend is.  One batch is
run first to compile and warm up and is not timed; then ``--batches`` batches of ``--batch`` random
uint8 images are timed as one call.  Weights are random (:func:`scire_jax.models.inception.init_params`):
the cost of the network does not depend on their values.  Writes ``fid_throughput.json`` and
``fid_throughput.md`` to ``--out`` (default: the current folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence

import numpy as np

# pool3 network at 299x299: XLA cost analysis of one image (2 FLOPs per multiply-add; ~5.5 GMACs).
GFLOP_PER_IMAGE = 11.0


def measure(batch: int = 250, batches: int = 2, size: int = 32, precision: str = "highest", seed: int = 0) -> dict:
    """Time ``inception_features`` on ``batch * batches`` images after one untimed warm-up batch."""
    import jax

    from scire_jax.apps import fid
    from scire_jax.models.inception import init_params

    params = init_params(seed)
    rng = np.random.default_rng(seed)
    warmup = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    images = rng.integers(0, 256, (batch * batches, size, size, 3), dtype=np.uint8)
    start = time.perf_counter()
    fid.inception_features(warmup, params, batch_size=batch, precision=precision)  # compile + first run
    warmup_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    features = fid.inception_features(images, params, batch_size=batch, precision=precision)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert features.shape == (len(images), 2048) and np.isfinite(features).all()
    rate = len(images) / elapsed
    return {
        "images_per_s": rate,
        "seconds_per_batch": elapsed / batches,
        "gflop_per_s": rate * GFLOP_PER_IMAGE,
        # CPU seconds of this process (all threads): on a shared machine, wall-clock rates fall with
        # the load while images per CPU-second do not.
        "process_cpu_s": cpu,
        "images_per_cpu_s": len(images) / cpu,
        "timed_images": len(images),
        "batch": batch,
        "input_size": size,
        "network_size": 299,
        "precision": precision,
        "warmup_s_incl_compile": warmup_s,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "jax": jax.__version__,
        "platform": platform.platform(),
    }


def _markdown(result: dict) -> str:
    return "\n".join([
        "# FID Inception throughput",
        "",
        (f"`benchmarks/fid_throughput.py`: `scire_jax.apps.fid.inception_features`, random weights, uint8 "
         f"{result['input_size']}x{result['input_size']} inputs resized to 299x299, batch {result['batch']}, "
         f"precision `{result['precision']}`, warm-up batch excluded."),
        "",
        ("| backend | devices | images/s | s/batch | GFLOP/s (11.0 GFLOP/image) | images per CPU-second | timed images "
         "| warm-up incl. compile (s) |"),
        "|---|---|---|---|---|---|---|---|",
        (f"| {result['backend']} | {len(result['devices'])} | {result['images_per_s']:.1f} | "
         f"{result['seconds_per_batch']:.2f} | {result['gflop_per_s']:.0f} | {result['images_per_cpu_s']:.2f} | "
         f"{result['timed_images']} | "
         f"{result['warmup_s_incl_compile']:.1f} |"),
        "",
        (f"Host: {result['platform']}, {result['cpu_count']} CPUs (1-min load average at the end: "
         f"{result['load_average_1min']}), jax {result['jax']}."),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=250, help="images per compiled call (default 250)")
    parser.add_argument("--batches", type=int, default=2, help="timed batches after the warm-up (default 2)")
    parser.add_argument("--size", type=int, default=32, help="input height/width before the resize (default 32)")
    parser.add_argument("--precision", default="highest", help="conv precision: highest (default), high, default")
    parser.add_argument("--out", default=".", help="folder of fid_throughput.json/.md (default: current folder)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.batches < 1:
        parser.error("--batch and --batches must be positive")
    result = measure(args.batch, args.batches, args.size, args.precision)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fid_throughput.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    with open(os.path.join(args.out, "fid_throughput.md"), "w") as handle:
        handle.write(_markdown(result))
    print(f"FID Inception features: {result['images_per_s']:.1f} images/s on {result['backend']} "
          f"(batch {args.batch}, {args.size}x{args.size} -> 299x299, {result['timed_images']} timed images, "
          f"{result['seconds_per_batch']:.2f} s/batch, {result['gflop_per_s']:.0f} GFLOP/s, "
          f"{result['images_per_cpu_s']:.2f} images per CPU-second; "
          f"warm-up incl. compile {result['warmup_s_incl_compile']:.1f} s)")
    return result


if __name__ == "__main__":
    main()
