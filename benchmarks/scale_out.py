"""Scale-out and speed measurements (the committed docs/scale_out.md: `--out docs`).

    python benchmarks/scale_out.py            # everything (a few minutes on 2 CPU cores)
    python benchmarks/scale_out.py --quick    # tiny sizes, for CI smoke tests

Measures:
1. solver overhead at batch 1, 16, 64 on a small UNet2D (32x32x3):
   time(solve) / (NFE x time(one network call));
2. compile time vs steps (10, 50, 200, 1000) and the trace count (1 expected for every steps);
3. memory: XLA's compiled memory statistics (temporary + output bytes) for steps 10 vs 200, and
   with return_trajectory=True (which grows linearly with steps); peak resident set of a process;
4. scaling of the sharded sampler on 1/2/4/8 fake CPU devices (a correctness-of-sharding check:
   fake devices share the same 2 cores, so this is not a speed claim);
5. the same SciRE configuration solved by diffrax (Heun / Tsit5 with StepTo on our NSR grid, at
   equal NFE) on an analytic Gaussian mixture: time ratio and error ratio against the ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


sys.path.insert(0, str(HERE))
from speed import _median_time  # noqa: E402  (one timing helper for both benchmarks)


def small_unet(sample_size=32):
    from scire_jax.models import UNet2D
    return UNet2D.from_config({
        "sample_size": sample_size, "in_channels": 3, "out_channels": 3, "block_out_channels": [32, 64],
        "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8, "attention_head_dim": 16})


def overhead(batches, steps, repeats, sample_size):
    import jax

    import scire_jax as sj

    module = small_unet(sample_size)
    params = module.init_params()
    schedule = sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))
    apply_fn = jax.jit(lambda p, x, t: module.apply(p, x, t))
    noise_fn = sj.wrap_model(lambda p, x, t: module.apply(p, x, t), schedule)
    solver = sj.SciRE(algorithm="v1", method="multistep", order=3, steps=steps)
    rows = []
    for batch in batches:
        shape = (batch, sample_size, sample_size, 3)
        x = jax.random.normal(jax.random.key(0), shape)
        t = jax.numpy.full((batch,), 500.0)
        jax.block_until_ready(apply_fn(params, x, t))
        network = _median_time(lambda: jax.block_until_ready(apply_fn(params, x, t)), repeats)
        sample = jax.jit(sj.make_sampler(solver, schedule, noise_fn), static_argnums=2)
        jax.block_until_ready(sample(params, jax.random.key(1), shape))
        total = _median_time(lambda: jax.block_until_ready(sample(params, jax.random.key(1), shape)), repeats)
        nfe = sj.plan(solver, schedule).nfe
        rows.append({"batch": batch, "nfe": nfe, "network_s": network, "solve_s": total,
                     "overhead_ratio": total / (nfe * network)})
        print(f"overhead batch {batch:3d}: network {network * 1e3:8.2f} ms, solve {total:7.3f} s, "
              f"NFE {nfe}, ratio {total / (nfe * network):.3f}", flush=True)
    return rows


def compile_times(steps_list, repeats=1):
    import jax

    import scire_jax as sj
    from scire_jax.models import analytic

    schedule = sj.schedules.linear()
    model = analytic.GaussianMixture(np.array([0.5, 0.5]), np.array([[1.0] * 8, [-1.0] * 8]),
                                     np.array([[0.3] * 8, [0.5] * 8]))
    noise_fn = analytic.model_fn(model, schedule)
    rows = []
    for steps in steps_list:
        solver = sj.SciRE(algorithm="v1", method="multistep", order=3, steps=steps)
        traces = []

        def sample(params, key, solver=solver, traces=traces):
            traces.append(1)
            return sj.make_sampler(solver, schedule, noise_fn)(params, key, (16, 8))

        best = []
        for _ in range(repeats):
            jax.clear_caches()
            start = time.perf_counter()
            compiled = jax.jit(sample).lower(None, jax.random.key(0)).compile()
            best.append(time.perf_counter() - start)
        compiled(None, jax.random.key(1))
        rows.append({"steps": steps, "compile_s": float(np.min(best)), "traces": len(traces) // repeats,
                     "segments": len(sj.plan(solver, schedule).segments)})
        print(f"compile steps {steps:5d}: {np.min(best):.2f} s, traces {len(traces) // repeats}", flush=True)
    return rows


def memory(steps_list, sample_size):
    import jax

    import scire_jax as sj

    module = small_unet(sample_size)
    params = module.init_params()
    schedule = sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))
    noise_fn = sj.wrap_model(lambda p, x, t: module.apply(p, x, t), schedule)
    rows = []
    for trajectory in (False, True):
        for steps in steps_list:
            solver = sj.SciRE(order=3, steps=steps)

            def sample(params, key, solver=solver, trajectory=trajectory):
                return sj.make_sampler(solver, schedule, noise_fn, return_trajectory=trajectory)(
                    params, key, (16, sample_size, sample_size, 3))

            stats = jax.jit(sample).lower(params, jax.random.key(0)).compile().memory_analysis()
            row = {"steps": steps, "trajectory": trajectory}
            for name in ("temp_size_in_bytes", "output_size_in_bytes", "argument_size_in_bytes"):
                row[name] = int(getattr(stats, name, -1)) if stats is not None else -1
            rows.append(row)
            print(f"memory steps {steps:4d} trajectory {trajectory!s:5}: temp {row['temp_size_in_bytes'] / 2**20:8.2f} MiB, "
                  f"output {row['output_size_in_bytes'] / 2**20:8.2f} MiB", flush=True)
    return rows


def device_scaling(device_counts, quick):
    rows = []
    for count in device_counts:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", JAX_PLATFORMS="cpu")
        code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import scale_out; scale_out._scaling_child({quick!r})"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
        if result.returncode:
            raise RuntimeError(result.stderr[-2000:])
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"devices {count}: {row['samples_per_s']:.1f} samples/s, max |sharded - single| {row['max_difference']:.2e}",
              flush=True)
    return rows


def _scaling_child(quick):
    import jax

    import scire_jax as sj

    size = 16 if quick else 32
    module = small_unet(size)
    params = module.init_params()
    schedule = sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))
    noise_fn = sj.wrap_model(lambda p, x, t: module.apply(p, x, t), schedule)
    solver = sj.SciRE(order=3, steps=5 if quick else 10)
    shape = (8 if quick else 16, size, size, 3)
    sharded = jax.jit(sj.make_sampler(solver, schedule, noise_fn, mesh=sj.batch_mesh()), static_argnums=2)
    single = jax.jit(sj.make_sampler(solver, schedule, noise_fn), static_argnums=2)
    reference = np.asarray(single(params, jax.random.key(0), shape))
    out = jax.block_until_ready(sharded(params, jax.random.key(0), shape))
    seconds = _median_time(lambda: jax.block_until_ready(sharded(params, jax.random.key(0), shape)), 2 if quick else 3)
    print(json.dumps({"devices": jax.device_count(), "batch": shape[0], "seconds": seconds,
                      "samples_per_s": shape[0] / seconds,
                      "max_difference": float(np.max(np.abs(np.asarray(out) - reference)))}))


def diffrax_comparison(nfes, repeats):
    import diffrax
    import jax
    import jax.numpy as jnp

    import scire_jax as sj
    from scire_jax.models import analytic

    jax.config.update("jax_enable_x64", True)
    schedule = sj.schedules.linear()
    model = analytic.GaussianMixture(np.array([0.3, 0.7]), np.array([[1.0] * 4, [-0.5] * 4]),
                                     np.array([[0.3] * 4, [0.6] * 4]))
    noise_fn = analytic.model_fn(model, schedule)
    x_start = jnp.asarray(np.random.default_rng(0).standard_normal((32, 4)))
    truth = analytic.reference_solution(model, schedule, x_start, schedule.t_max, schedule.t_min)

    def rms(x):
        return float(jnp.sqrt(jnp.mean((x - truth) ** 2)))

    def vector_field(nsr, y, args):
        t = schedule.inverse_nsr(nsr)
        return model.noise(schedule.alpha(t) * y, jnp.broadcast_to(t, (y.shape[0],)), schedule)

    rows = []
    for nfe in nfes:
        solver = sj.SciRE(algorithm="v1", method="multistep", order=2, steps=nfe)
        ours = jax.jit(lambda x: sj.solve(solver, schedule, noise_fn, None, x))
        jax.block_until_ready(ours(x_start))
        ours_time = _median_time(lambda: jax.block_until_ready(ours(x_start)), repeats)
        row = {"nfe": nfe, "scire_s": ours_time, "scire_error": rms(ours(x_start))}
        for name, method, stages in (("heun", diffrax.Heun(), 2), ("tsit5", diffrax.Tsit5(), 6)):
            steps = max(nfe // stages, 1)
            grid = sj.timesteps.time_grid(schedule, "NSR", schedule.t_max, schedule.t_min, steps)
            nsr_grid = jnp.asarray(schedule.nsr(grid))

            def run(x, nsr_grid=nsr_grid, method=method):
                y0 = x / schedule.alpha(jnp.asarray(schedule.t_max))
                solution = diffrax.diffeqsolve(diffrax.ODETerm(vector_field), method, t0=nsr_grid[0], t1=nsr_grid[-1],
                                               dt0=None, y0=y0, stepsize_controller=diffrax.StepTo(nsr_grid),
                                               saveat=diffrax.SaveAt(t1=True), max_steps=len(nsr_grid) + 1)
                return solution.ys[-1] * schedule.alpha(jnp.asarray(schedule.t_min))

            compiled = jax.jit(run)
            jax.block_until_ready(compiled(x_start))
            seconds = _median_time(lambda: jax.block_until_ready(compiled(x_start)), repeats)
            row[f"{name}_nfe"] = steps * stages
            row[f"{name}_s"] = seconds
            row[f"{name}_error"] = rms(compiled(x_start))
            row[f"{name}_time_ratio"] = seconds / ours_time
            row[f"{name}_error_ratio"] = row[f"{name}_error"] / row["scire_error"]
        rows.append(row)
        print(f"diffrax NFE {nfe:3d}: SciRE {ours_time * 1e3:.2f} ms err {row['scire_error']:.2e} | "
              f"Heun({row['heun_nfe']}) x{row['heun_time_ratio']:.2f} time, x{row['heun_error_ratio']:.2f} error | "
              f"Tsit5({row['tsit5_nfe']}) x{row['tsit5_time_ratio']:.2f} time, x{row['tsit5_error_ratio']:.2f} error",
              flush=True)
    return rows


def write_markdown(results, path):
    lines = ["# Scale-out and speed measurements", "",
             f"Command: `python benchmarks/scale_out.py{' --quick' if results['quick'] else ''}`. "
             f"Machine: {results['machine']} (shared with other jobs while measured; medians of repeats).", ""]
    lines += ["## Solver overhead (small UNet2D, SciRE v1 multistep order 3)", "",
              "| batch | NFE | network call (ms) | solve (s) | solve / (NFE x network) |", "|---|---|---|---|---|"]
    for r in results["overhead"]:
        lines.append(f"| {r['batch']} | {r['nfe']} | {r['network_s'] * 1e3:.2f} | {r['solve_s']:.3f} | {r['overhead_ratio']:.3f} |")
    lines += ["", "## Compile time vs steps", "", "| steps | compile (s) | traces | scan segments |", "|---|---|---|---|"]
    for r in results["compile"]:
        lines.append(f"| {r['steps']} | {r['compile_s']:.2f} | {r['traces']} | {r['segments']} |")
    first, last = results["compile"][0], results["compile"][-1]
    lines += ["", f"Ratio compile({last['steps']}) / compile({first['steps']}) = {last['compile_s'] / first['compile_s']:.2f}.", ""]
    lines += ["## Memory (XLA compiled memory statistics, batch 16)", "",
              "| steps | trajectory | temp (MiB) | output (MiB) |", "|---|---|---|---|"]
    for r in results["memory"]:
        lines.append(f"| {r['steps']} | {r['trajectory']} | {r['temp_size_in_bytes'] / 2**20:.2f} | "
                     f"{r['output_size_in_bytes'] / 2**20:.2f} |")
    lines += ["", f"Peak resident set of the measuring process: {results['peak_rss_mib']:.0f} MiB.", ""]
    lines += ["## Sharded sampler on fake CPU devices (correctness of sharding, not a speed claim)", "",
              "| devices | batch | samples/s | max abs difference to 1 device |", "|---|---|---|---|"]
    for r in results["scaling"]:
        lines.append(f"| {r['devices']} | {r['batch']} | {r['samples_per_s']:.1f} | {r['max_difference']:.2e} |")
    lines += ["", "## Against diffrax at equal NFE (Gaussian mixture, linear VP, x64, batch 32)", "",
              "| NFE | SciRE v1 2M time (ms) | error | Heun time ratio | Heun error ratio | Tsit5 time ratio | Tsit5 error ratio |",
              "|---|---|---|---|---|---|---|"]
    for r in results["diffrax"]:
        lines.append(f"| {r['nfe']} | {r['scire_s'] * 1e3:.2f} | {r['scire_error']:.2e} | {r['heun_time_ratio']:.2f} | "
                     f"{r['heun_error_ratio']:.2f} | {r['tsit5_time_ratio']:.2f} | {r['tsit5_error_ratio']:.2f} |")
    lines += ["", "Ratios are diffrax / scire-jax (above 1: diffrax slower or less accurate). diffrax integrates the same "
              "ODE (dy/dNSR = eps, y = x / alpha) with StepTo on the NSR grid; Heun uses 2 and Tsit5 6 evaluations per step."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=".", help="output folder (default: the current directory)")
    args = parser.parse_args(argv)
    quick = args.quick
    results = {"quick": quick, "machine": f"{os.cpu_count()} CPU cores, CPU backend"}
    results["overhead"] = overhead((1, 4) if quick else (1, 16, 64), 4 if quick else 10, 2 if quick else 5,
                                   16 if quick else 32)
    results["compile"] = compile_times((10, 50) if quick else (10, 50, 200, 1000))
    results["memory"] = memory((5, 20) if quick else (10, 200), 16 if quick else 32)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["scaling"] = device_scaling((1, 2) if quick else (1, 2, 4, 8), quick)
    results["diffrax"] = diffrax_comparison((12,) if quick else (12, 24, 48), 2 if quick else 5)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_out.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out / "scale_out.md")
    print(f"wrote {out / 'scale_out.md'}")
    return results


if __name__ == "__main__":
    main()
