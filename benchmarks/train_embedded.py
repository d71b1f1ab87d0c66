"""Train the models shipped in ``scire_jax/assets/`` (the exact commands that produced them).

Shipped diffusion model ``mnist`` (16x16 MNIST, DDPM noise prediction, EMA weights at step 10,000),
trained in three stages of one run folder (outside the repository); each later stage resumes the
finished run with a larger ``--steps`` (``--extend``: a warm restart of the cosine decay, recorded
in ``stages.json``)::

    # stage 1: the 4,000-step schedule (warm-up 200, cosine decay 1e-3 -> 5e-5)
    nice -n 5 .venv/bin/python benchmarks/train_embedded.py diffusion --out /work/runs/mnist16 --seed 0
    # stage 2: extend to 8,000 steps (from step 4,000 the learning rate follows the 8,000-step
    # schedule: 5.4e-4 decaying to 5e-5)
    nice -n 5 .venv/bin/python benchmarks/train_embedded.py diffusion --out /work/runs/mnist16 --seed 0 \
        --steps 8000 --extend
    # stage 3: extend to 10,000 steps (from step 8,000: 1.4e-4 decaying to 5e-5)
    nice -n 5 .venv/bin/python benchmarks/train_embedded.py diffusion --out /work/runs/mnist16 --seed 0 \
        --steps 10000 --extend
    .venv/bin/python benchmarks/train_embedded.py export --out /work/runs/mnist16

(Stage 1 was itself interrupted at step 3,250 in an earlier session and resumed; resuming follows
the identical trajectory, so the commands above reproduce the shipped weights.  Training
``--steps 10000`` from scratch is a *different* run: its schedule has no restarts.)

Shipped metrics classifier ``classifier_mnist16`` and its reference feature statistics::

    .venv/bin/python benchmarks/train_embedded.py classifier --seed 0

The diffusion config is :data:`DIFFUSION_CONFIG` below (UNet2D with block_out_channels
(32, 64, 64), layers_per_block 1, attention at the 4x4 level and in the mid block, GroupNorm 8
groups; 1.11 M parameters; AdamW lr 1e-3, 200 warm-up steps, cosine decay to 5e-5, clip 1.0,
EMA 0.999, batch 64, 4,000 steps, seed 0; stages 2 and 3 change only ``steps``, to 8,000 and
10,000).  The run is resumable: re-running the ``diffusion`` command continues from the latest
checkpoint in ``--out`` on the identical trajectory.  See ``docs/embedded_model.md`` for the
measured wall time, loss and sample metrics of every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from scire_jax.apps import train as train_lib  # noqa: E402

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scire_jax", "assets")

DIFFUSION_CONFIG = train_lib.TrainConfig(
    dataset="mnist",
    image_size=16,
    model=dict(train_lib.DEFAULT_UNET_CONFIG),
    steps=4000,
    batch_size=64,
    learning_rate=1e-3,
    warmup_steps=200,
    ema_decay=0.999,
    save_every=250,
    sample_every=1000,
    sample_steps=25,
    log_every=50,
)


def evaluate(args) -> int:
    """Sample ``--num`` images per solver and NFE and print the classifier metrics as JSON lines."""
    import jax
    import numpy as np

    import scire_jax as sj
    from scire_jax.apps import images, metrics
    from scire_jax.io.pretrained import load_pretrained

    model = load_pretrained(args.model)
    params, schedule, noise_fn = model.params, model.schedule, model.noise_fn()
    ref = metrics.load_reference_stats()
    print(json.dumps({k: float(ref[k]) for k in ref if k.startswith("fd_")}))
    for nfe in args.nfe:
        for name in args.solvers:
            if name == "scire":
                solver = sj.SciRE(algorithm="v1", method="multistep", order=3, steps=nfe, skip_type="NSR")
            else:
                solver = sj.DDIM(steps=nfe)
            sample_fn = jax.jit(sj.make_sampler(solver, schedule, noise_fn), static_argnums=2)
            t0 = time.perf_counter()
            samples = np.asarray(sample_fn(params, jax.random.key(args.seed), (args.num, *model.sample_shape)))
            elapsed = time.perf_counter() - t0
            result = metrics.sample_metrics(samples)
            result.update(solver=name, nfe=sj.plan(solver, schedule).nfe, seconds=round(elapsed, 1))
            print(json.dumps(result), flush=True)
            if args.grid and name == "scire":
                grid = images.image_grid(np.clip(samples[:64], -1.0, 1.0), scale=3)
                images.write_png(args.grid.replace(".png", f"_nfe{nfe}.png"), grid)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("diffusion", help="train (or resume) the shipped diffusion model")
    p.add_argument("--out", default="runs/mnist16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-wall-min", type=float, default=None)
    p.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) at this step")
    p.add_argument("--steps", type=int, default=None,
                   help="scheduled steps (default: DIFFUSION_CONFIG's); with --extend, a second stage")
    p.add_argument("--extend", action="store_true",
                   help="resume a finished run with a larger --steps (warm restart of the cosine schedule)")
    p = sub.add_parser("export", help="export the EMA weights of --out to scire_jax/assets/mnist")
    p.add_argument("--out", default="runs/mnist16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dest", default=os.path.join(ASSETS, "mnist"))
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p = sub.add_parser("evaluate", help="classifier metrics of samples of a model (default: the shipped 'mnist')")
    p.add_argument("--model", default="mnist")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--nfe", type=int, nargs="+", default=[20])
    p.add_argument("--solvers", nargs="+", default=["scire", "ddim"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", help="also write a PNG grid of the first 64 SciRE samples here")
    p = sub.add_parser("classifier", help="train the metrics classifier and write its assets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)

    if args.what == "classifier":
        from scire_jax.apps import metrics

        info = metrics.build_classifier_assets(seed=args.seed, epochs=args.epochs)
        print(json.dumps(info, indent=2))
        return 0
    if args.what == "evaluate":
        return evaluate(args)
    overrides = {"seed": args.seed}
    if getattr(args, "steps", None) is not None:
        overrides["steps"] = args.steps
    config = train_lib.TrainConfig.from_dict(dict(DIFFUSION_CONFIG.to_dict(), **overrides))
    if args.what == "diffusion":
        t0 = time.perf_counter()
        max_wall = None if args.max_wall_min is None else 60 * args.max_wall_min
        state = train_lib.train(config, args.out, resume=True, stop_at=args.stop_at, max_wall_s=max_wall,
                                extend=args.extend)
        print(f"stopped at step {state.step} after {time.perf_counter() - t0:.0f} s (this invocation); "
              f"mean loss of the last 200 steps {state.losses[-200:].mean():.5f}")
        return 0
    # export: the EMA weights of the latest (or --step) checkpoint; the run folder is only read
    state = train_lib.restore_run(args.out, args.step)
    train_lib.export(state, args.dest, overwrite=True)
    print(f"exported step {state.step} EMA weights to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
