"""Generate the Colab notebooks of this folder with nbformat (the .ipynb files are build outputs).

    python colab/build_notebooks.py                       # write all notebooks, outputs stripped
    python colab/build_notebooks.py --figures accuracy_study
        # also execute that notebook (full mode, CPU) and keep only its figures (small PNGs)

The notebooks are executed in smoke mode (``SCIRE_JAX_SMOKE=1``) by ``tests/test_notebooks.py``,
which also checks that the committed cells match :func:`notebook_cells` of this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = "scire-jax/scire-jax"
BRANCH = "main"
NAMES = ("quickstart", "pretrained_tpu", "accuracy_study")


def colab_url(name: str) -> str:
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/colab/{name}.ipynb"


def badge(name: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name)})"


def _clean(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _join(*parts: str) -> str:
    return "\n\n".join(_clean(part) for part in parts)


INSTALL_TEMPLATE = """\
# Edit REPO_URL to install from your fork or a branch ("...scire-jax@my-branch").
REPO_URL = "https://github.com/%(repository)s"
EXTRA_REQUIREMENTS = %(requirements)s  # (module, pip requirement)

import importlib.util
import subprocess
import sys

to_install = [] if importlib.util.find_spec("scire_jax") else [f"git+{REPO_URL}"]
to_install += [requirement for module, requirement in EXTRA_REQUIREMENTS if importlib.util.find_spec(module) is None]
if to_install:  # a fresh Colab runtime
    print("pip install", *to_install)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *to_install], check=True)
else:  # e.g. CI, or a local checkout installed with `pip install -e .`
    print("scire_jax and the other requirements are installed: skipping pip install")
"""


def install_cell(packages=()) -> str:
    """First code cell: pip-install the package from the repository (and ``packages``, pairs of
    module and pip requirement) unless they are importable, e.g. in CI or a local editable install."""
    return INSTALL_TEMPLATE % {"repository": REPOSITORY, "requirements": repr(list(packages))}


SETUP_COMMON = '''
    import os
    import time

    # SCIRE_JAX_SMOKE=1 (set by tests/test_notebooks.py) runs a tiny, fast version of this notebook on CPU.
    SMOKE = os.environ.get("SCIRE_JAX_SMOKE", "0") == "1"
'''

GRID_HELPER = '''
    def image_grid(x, columns=None):
        """(N, H, W, C) samples in [-1, 1] -> one (rows*H, columns*W, C) image in [0, 1]."""
        x = np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)
        n, h, w, c = x.shape
        columns = columns or int(np.ceil(np.sqrt(n)))
        rows = -(-n // columns)
        pad = np.ones((rows * columns - n, h, w, c), np.float32)
        x = np.concatenate([x, pad]).reshape(rows, columns, h, w, c)
        x = x.transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)
        return x[..., 0] if c == 1 else x
'''


# ------------------------------------------------------------------------------------------------
# quickstart
# ------------------------------------------------------------------------------------------------
def quickstart():
    return [
        ("markdown", f'''
            # scire-jax quickstart: sample the embedded digits model

            {badge("quickstart")}

            [SciRE-Solver](https://arxiv.org/abs/2308.07896) integrates the probability-flow ODE of a
            diffusion model in the noise-to-signal ratio and estimates derivatives by *recursive
            difference*; it produces good samples in 5–20 network evaluations (NFE). This notebook samples
            the small 16×16 MNIST model shipped inside the package with **SciRE-Solver** (v1, multistep,
            order 3) and **DPM-Solver++ (2M)** at NFE 5, 10 and 20, shows the grids side by side, prints a
            solver *plan* and separates compile time from run time.

            Runs on any Colab runtime (CPU is enough; GPU/TPU work unchanged).
        '''),
        ("code", install_cell()),
        ("code", _join(SETUP_COMMON, '''
            import jax
            import jax.numpy as jnp
            import matplotlib.pyplot as plt
            import numpy as np

            import scire_jax as sj

            NFES = (5,) if SMOKE else (5, 10, 20)
            NUM_SAMPLES = 4 if SMOKE else 16
            SEED = 0
            print(f"jax {jax.__version__}, scire_jax {sj.__version__}, backend {jax.default_backend()}, "
                  f"devices {jax.devices()}, smoke mode {SMOKE}")
        ''')),
        ("markdown", '''
            ## The model

            `load_pretrained("mnist")` returns `(apply_fn, params, schedule, prediction)`: a Flax UNet
            (diffusers `UNet2DModel` layout, NHWC), its weights, the DDPM noise schedule it was trained
            with, and what it predicts (`"noise"`). If the embedded model is not available in the
            installed version, a tiny *randomly initialised* UNet stands in, so that the rest of the
            notebook still runs (its samples are textures, not digits).
        '''),
        ("code", '''
            import json

            from scire_jax.models.unet2d import UNet2D
            from scire_jax.io.pretrained import load_pretrained, make_apply_fn, resolve_path

            try:
                apply_fn, params, schedule, prediction = load_pretrained("mnist")
                stored = json.loads((resolve_path("mnist") / "config.json").read_text())
                size = stored.get("model", stored)["sample_size"]
                channels = int(params["params"]["conv_in"]["kernel"].shape[-2])
                MODEL = "embedded MNIST digits model"
                TRAINED = True
            except (ValueError, FileNotFoundError, KeyError) as error:
                print(f"NOTE: the embedded 'mnist' model is not available here ({error}).\\n"
                      "Falling back to a tiny RANDOMLY INITIALISED UNet2D with the DDPM linear schedule: the "
                      "sampler runs exactly the same way, but the samples are textures, not digits.")
                module = UNet2D.from_config({
                    "sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32],
                    "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
                    "attention_head_dim": 16})
                params = module.init_params(jax.random.key(SEED))
                apply_fn = make_apply_fn(module)
                schedule = sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))
                prediction = "noise"
                size, channels = 16, 1
                MODEL = "tiny random UNet2D (fallback)"
                TRAINED = False

            shape = (NUM_SAMPLES, size, size, channels)
            count = sum(p.size for p in jax.tree_util.tree_leaves(params))
            print(f"{MODEL}: {count / 1e6:.2f} M parameters, prediction={prediction!r}, sample shape {shape[1:]}")
        '''),
        ("markdown", '''
            ## Solvers and their plans

            A solver is a small frozen configuration. Everything that depends only on the schedule and the
            number of steps (times, orders, the SciRE `phi` values, every coefficient) is computed once on
            the host into a *plan*; the sampler is one `lax.scan` over it and calls the network exactly
            `plan.nfe` times.
        '''),
        ("code", '''
            noise_fn = sj.wrap_model(apply_fn, schedule, prediction=prediction)

            SOLVERS = {
                "SciRE v1 multistep-3": lambda nfe: sj.SciRE(algorithm="v1", method="multistep", order=3, steps=nfe),
                "DPM-Solver++ 2M": lambda nfe: sj.DPMSolver(algorithm="dpmsolver++", method="multistep", order=2,
                                                            steps=nfe),
            }
            print(sj.plan(SOLVERS["SciRE v1 multistep-3"](NFES[-1]), schedule).summary())
        '''),
        ("markdown", '''
            ## Sample and time it

            `make_sampler` returns `sample_fn(params, key, shape)`; `jax.jit(..., static_argnums=2)` compiles
            it once per solver configuration and shape. Sample *i* starts from the noise
            `normal(fold_in(key, i))`, so all solvers below start from the same `x_T`.
        '''),
        ("code", '''
            key = jax.random.key(SEED)
            samples, rows = {}, []
            for name, make_solver in SOLVERS.items():
                for nfe in NFES:
                    solver = make_solver(nfe)
                    assert sj.plan(solver, schedule).nfe == nfe
                    sample_fn = jax.jit(sj.make_sampler(solver, schedule, noise_fn), static_argnums=2)
                    start = time.perf_counter()
                    compiled = sample_fn.lower(params, key, shape).compile()
                    compile_s = time.perf_counter() - start
                    start = time.perf_counter()
                    x = jax.block_until_ready(compiled(params, key))
                    run_s = time.perf_counter() - start
                    samples[name, nfe] = np.asarray(x)
                    rows.append((name, nfe, compile_s, run_s, NUM_SAMPLES / run_s))

            print(f"{'solver':<22} {'NFE':>4} {'compile s':>10} {'run s':>8} {'samples/s':>10}")
            for name, nfe, compile_s, run_s, rate in rows:
                print(f"{name:<22} {nfe:>4} {compile_s:>10.2f} {run_s:>8.3f} {rate:>10.1f}")
        '''),
        ("code", _join(GRID_HELPER, '''

            fig, axes = plt.subplots(len(SOLVERS), len(NFES), figsize=(2.4 * len(NFES), 2.6 * len(SOLVERS)),
                                     squeeze=False)
            for i, name in enumerate(SOLVERS):
                for j, nfe in enumerate(NFES):
                    axes[i, j].imshow(image_grid(samples[name, nfe]), cmap="gray", vmin=0, vmax=1)
                    axes[i, j].set_title(f"{name}\\nNFE = {nfe}", fontsize=9)
                    axes[i, j].axis("off")
            fig.suptitle(MODEL, fontsize=10)
            fig.tight_layout()
            plt.show()
        ''')),
        ("markdown", '''
            Both solvers integrate the same ODE from the same noise, so their samples should agree more
            closely as the NFE grows.
        '''),
        ("code", '''
            for nfe in NFES:
                gap = np.sqrt(np.mean((samples["SciRE v1 multistep-3", nfe] - samples["DPM-Solver++ 2M", nfe]) ** 2))
                print(f"NFE {nfe:>3}: RMS difference SciRE vs DPM-Solver++ = {gap:.4f}")

            # Checks (run in CI in smoke mode).
            assert len(samples) == len(SOLVERS) * len(NFES)
            for (name, nfe), x in samples.items():
                assert x.shape == shape, (name, nfe, x.shape)
                assert np.all(np.isfinite(x)), (name, nfe)
            assert not np.allclose(samples["SciRE v1 multistep-3", NFES[0]], samples["DPM-Solver++ 2M", NFES[0]])
            assert all(compile_s > 0 and run_s > 0 for _, _, compile_s, run_s, _ in rows)
            if TRAINED:
                assert np.mean(np.abs(samples["SciRE v1 multistep-3", NFES[-1]]) <= 2.0) > 0.9  # images in [-1, 1]
            print("all checks passed")
        '''),
    ]


# ------------------------------------------------------------------------------------------------
# pretrained_tpu
# ------------------------------------------------------------------------------------------------
def pretrained_tpu():
    return [
        ("markdown", f'''
            # Pretrained DDPM on all devices: google/ddpm-cifar10-32 on TPU / GPU

            {badge("pretrained_tpu")}

            Downloads the diffusers checkpoint [`google/ddpm-cifar10-32`](https://huggingface.co/google/ddpm-cifar10-32),
            converts it to Flax (`load_pretrained(folder)`: weights and noise schedule), shards the batch over
            every device with `sj.batch_mesh()` and samples with **SciRE-Solver** (v1, multistep, order 3) and
            **DPM-Solver++ (3M)** at 10 and 20 NFE.

            *Runtime → Change runtime type → TPU* (all 8 cores of a v2-8 are used) or *GPU*; it also runs on
            CPU, slowly. Without network access (or with `SCIRE_JAX_SMOKE=1`) a randomly initialised tiny
            `UNet2DModel`-style network with the DDPM linear schedule stands in for the checkpoint.
        '''),
        ("code", install_cell(packages=(("huggingface_hub", "huggingface_hub"),))),
        ("code", _join(SETUP_COMMON, '''
            import jax
            import jax.numpy as jnp
            import matplotlib.pyplot as plt
            import numpy as np

            import scire_jax as sj

            REPO_ID = "google/ddpm-cifar10-32"
            NFES = (10,) if SMOKE else (10, 20)
            PER_DEVICE = 2 if SMOKE else 16  # samples per device
            SEED = 0
            print(f"jax {jax.__version__}, scire_jax {sj.__version__}, backend {jax.default_backend()}, "
                  f"{jax.device_count()} device(s): {jax.devices()}, smoke mode {SMOKE}")
        ''')),
        ("markdown", '''
            ## Download and convert the checkpoint

            `snapshot_download` fetches `config.json`, `scheduler_config.json` and the weights (safetensors,
            read without PyTorch; the `.bin` file only if no safetensors exist). `load_pretrained(folder)` builds
            the Flax `UNet2D` from the diffusers config, converts the weights and reads the schedule and the
            prediction type from the scheduler config.
        '''),
        ("code", '''
            import json
            from pathlib import Path

            from scire_jax.io.convert.from_diffusers import find_unet_folder
            from scire_jax.io.convert.scheduler import schedule_from_scheduler_config
            from scire_jax.models.unet2d import UNet2D
            from scire_jax.io.pretrained import load_pretrained, make_apply_fn

            folder = None
            if SMOKE:
                print(f"SCIRE_JAX_SMOKE=1: not downloading {REPO_ID}.")
            else:
                try:
                    from huggingface_hub import snapshot_download

                    folder = snapshot_download(REPO_ID, allow_patterns=["*.json", "*.safetensors"])
                    if not any(Path(folder).rglob("*.safetensors")):
                        folder = snapshot_download(REPO_ID, allow_patterns=["*.json", "*.bin"])
                except Exception as error:  # no network, no huggingface_hub, hub unavailable, ...
                    print(f"could not download {REPO_ID}: {type(error).__name__}: {error}")
                    folder = None

            if folder is not None:
                start = time.perf_counter()
                apply_fn, params, schedule, prediction = load_pretrained(folder)
                print(f"converted {REPO_ID} in {time.perf_counter() - start:.1f} s")
                unet_config = json.loads((find_unet_folder(folder) / "config.json").read_text())
                size, channels = unet_config["sample_size"], unet_config["in_channels"]
                MODEL = REPO_ID
                TRAINED = True
            else:
                print("No checkpoint: using a RANDOMLY INITIALISED tiny UNet2DModel-style network with the DDPM linear "
                      "schedule instead. Everything below runs the same way, but the samples are not images.")
                config = {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3,
                          "block_out_channels": [16, 32], "layers_per_block": 1,
                          "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                          "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
                          "attention_head_dim": 16}
                module = UNet2D.from_config(config)
                params = module.init_params(jax.random.key(SEED))
                apply_fn = make_apply_fn(module)
                schedule, prediction = schedule_from_scheduler_config(
                    {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                     "num_train_timesteps": 1000, "prediction_type": "epsilon"})
                size, channels = config["sample_size"], config["in_channels"]
                MODEL = "tiny random UNet2D (fallback)"
                TRAINED = False

            count = sum(p.size for p in jax.tree_util.tree_leaves(params))
            print(f"{MODEL}: {count / 1e6:.2f} M parameters, prediction={prediction!r}, {size}x{size}x{channels}")
        '''),
        ("markdown", '''
            ## Shard the batch over all devices

            `sj.batch_mesh()` is a 1-D mesh over all devices; with `mesh=mesh` the sampler replicates the
            parameters, shards the initial noise, every solver state and the output along the batch axis,
            and runs as **one** `jax.jit` program (SPMD). Sample *i* depends only on `(key, i)`, so the
            samples are the same on 1 or 8 devices.
        '''),
        ("code", '''
            mesh = sj.batch_mesh()
            devices = mesh.size
            BATCH = PER_DEVICE * devices
            shape = (BATCH, size, size, channels)
            noise_fn = sj.wrap_model(apply_fn, schedule, prediction=prediction)
            print(f"mesh {dict(mesh.shape)}: batch {BATCH} = {PER_DEVICE} per device x {devices} device(s)")

            SOLVERS = {
                "SciRE v1 multistep-3": lambda nfe: sj.SciRE(algorithm="v1", method="multistep", order=3, steps=nfe),
                "DPM-Solver++ 3M": lambda nfe: sj.DPMSolver(algorithm="dpmsolver++", method="multistep", order=3,
                                                            steps=nfe),
            }
            print(sj.plan(SOLVERS["SciRE v1 multistep-3"](NFES[0]), schedule).summary())
        '''),
        ("code", '''
            key = jax.random.key(SEED)
            samples, rows = {}, []
            for name, make_solver in SOLVERS.items():
                for nfe in NFES:
                    solver = make_solver(nfe)
                    sample_fn = jax.jit(sj.make_sampler(solver, schedule, noise_fn, mesh=mesh), static_argnums=2)
                    start = time.perf_counter()
                    compiled = sample_fn.lower(params, key, shape).compile()
                    compile_s = time.perf_counter() - start
                    start = time.perf_counter()
                    x = jax.block_until_ready(compiled(params, key))
                    run_s = time.perf_counter() - start
                    assert len(x.sharding.device_set) == devices
                    samples[name, nfe] = np.asarray(x)
                    rows.append((name, nfe, compile_s, run_s, BATCH / run_s))

            print(f"{'solver':<22} {'NFE':>4} {'compile s':>10} {'run s':>8} {'samples/s':>10}")
            for name, nfe, compile_s, run_s, rate in rows:
                print(f"{name:<22} {nfe:>4} {compile_s:>10.2f} {run_s:>8.3f} {rate:>10.1f}")
        '''),
        ("code", _join(GRID_HELPER, '''

            shown = min(BATCH, 16)
            fig, axes = plt.subplots(len(SOLVERS), len(NFES), figsize=(3.0 * len(NFES), 3.2 * len(SOLVERS)),
                                     squeeze=False)
            for i, name in enumerate(SOLVERS):
                for j, nfe in enumerate(NFES):
                    axes[i, j].imshow(image_grid(samples[name, nfe][:shown]))
                    axes[i, j].set_title(f"{name}\\nNFE = {nfe}", fontsize=9)
                    axes[i, j].axis("off")
            fig.suptitle(MODEL, fontsize=10)
            fig.tight_layout()
            plt.show()
        ''')),
        ("code", '''
            # Checks (run in CI in smoke mode, there on 2 simulated CPU devices).
            assert len(samples) == len(SOLVERS) * len(NFES)
            for (name, nfe), x in samples.items():
                assert x.shape == shape, (name, nfe, x.shape)
                assert np.all(np.isfinite(x)), (name, nfe)
            assert all(rate > 0 for *_, rate in rows)
            if TRAINED:
                for (name, nfe), x in samples.items():
                    assert np.mean(np.abs(x) <= 2.0) > 0.9, (name, nfe)  # images in [-1, 1]
            print("all checks passed")
        '''),
    ]


# ------------------------------------------------------------------------------------------------
# accuracy_study
# ------------------------------------------------------------------------------------------------
def accuracy_study():
    return [
        ("markdown", f'''
            # Accuracy study: error vs NFE against the exact ODE solution

            {badge("accuracy_study")}

            Analytic "models" (`sj.analytic`) have an exact noise prediction, so the error of a sampler can be
            measured against the true solution of the probability-flow ODE:

            1. **Error vs NFE** on a 2-D Gaussian mixture (ground truth: adaptive Dopri8 in float64,
               `analytic.reference_solution`) for DDIM, SciRE-Solver (official `phi`), DPM-Solver++ 2M / 3M
               and UniPC.
            2. **The `phi` ablation** of SciRE: the official per-step schedule vs the constants 2/3 and
               1 − 1/e, and `phi = 1`, which turns the recursive difference into a plain finite difference.
            3. **Recursive difference vs finite difference** (official `phi` vs `phi = 1`).
            4. **Convergence orders**: log-log slopes on a Gaussian, whose flow is known in closed form
               (`analytic.gaussian_flow`).

            Runs on CPU in float64 (`jax_enable_x64`); no accelerator needed.
        '''),
        ("code", install_cell(packages=(("diffrax", "diffrax>=0.6"),))),
        ("code", _join(SETUP_COMMON, '''
            import jax

            jax.config.update("jax_enable_x64", True)  # float64 ground truth and solvers

            import jax.numpy as jnp
            import matplotlib.pyplot as plt
            import numpy as np

            import scire_jax as sj
            from scire_jax.models import analytic

            NUM_SAMPLES = 32 if SMOKE else 512
            NFES = (5, 10, 20) if SMOKE else (5, 6, 8, 10, 12, 15, 20, 30, 50)
            ORDER_NFES = (40, 80, 160)
            schedule = sj.schedules.linear()  # VP, beta in [0.1, 20], t from 1 to 1e-3
            print(f"jax {jax.__version__}, scire_jax {sj.__version__}, backend {jax.default_backend()}, smoke mode {SMOKE}")
        ''')),
        ("markdown", '''
            ## The problem and its ground truth

            Three well-separated, fairly narrow components in 2-D. The same `x_T` (standard normal) is
            integrated by every solver from `t = 1` to `t = 1e-3`; the error is the RMS distance to the
            reference solution.
        '''),
        ("code", '''
            mixture = analytic.GaussianMixture(weights=[0.3, 0.4, 0.3],
                                               means=[[-1.0, 0.5], [1.0, 1.0], [0.5, -1.0]],
                                               stds=[[0.2], [0.3], [0.25]])
            x_T = analytic.prior_sample(jax.random.key(0), (NUM_SAMPLES, 2))
            start = time.perf_counter()
            truth, steps = analytic.reference_solution(mixture, schedule, x_T, schedule.t_max, schedule.t_min,
                                                       return_steps=True)
            print(f"reference solution: {int(steps)} adaptive Dopri8 steps, {time.perf_counter() - start:.1f} s")

            _results = {}


            def solve_error(solver, model, x_start, reference):
                """RMS error of one solve (cached per solver configuration and model)."""
                key = (solver, model)
                if key not in _results:
                    noise_fn = analytic.model_fn(model, schedule)
                    x = jax.jit(lambda x: sj.solve(solver, schedule, noise_fn, None, x))(x_start)
                    _results[key] = (float(jnp.sqrt(jnp.mean((x - reference) ** 2))), sj.plan(solver, schedule).nfe)
                return _results[key]


            def error_curve(make_solver, nfes=NFES, model=mixture, x_start=x_T, reference=truth):
                """(true NFE, error) arrays of make_solver(nfe) over nfes."""
                pairs = [solve_error(make_solver(n), model, x_start, reference) for n in nfes]
                return np.array([p[1] for p in pairs]), np.array([p[0] for p in pairs])


            def nfe_axis(ax, ticks):
                ax.set_xticks(list(ticks), [str(n) for n in ticks])
                ax.xaxis.set_minor_formatter(plt.NullFormatter())
                ax.set_xlabel("NFE")


            def loglog(curves, title):
                fig, ax = plt.subplots(figsize=(5.0, 3.8))
                for label, (nfe, err) in curves.items():
                    ax.loglog(nfe, err, "o-", ms=3, label=label)
                nfe_axis(ax, sorted({int(n) for nfe, _ in curves.values() for n in nfe}))
                ax.set_ylabel("RMS error")
                ax.set_title(title, fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
                plt.show()


            fig, ax = plt.subplots(figsize=(3.6, 3.4))
            data = analytic.sample_data(mixture, jax.random.key(1), 2000)
            ax.scatter(*np.asarray(data).T, s=2, alpha=0.3, label="data")
            ax.scatter(*np.asarray(truth).T, s=8, c="k", label="ODE(x_T)")
            ax.set_aspect("equal")
            ax.legend(fontsize=7)
            ax.set_title("mixture and exact ODE solutions", fontsize=9)
            plt.show()
        '''),
        ("markdown", '''
            ## 1. Error vs NFE

            Each solver uses its usual time grid: SciRE the NSR grid (`k = 3.1`), the others uniform
            log-SNR. DDIM = first-order SciRE = DPM-Solver-1. The RMS error is dominated by the few
            trajectories that start near a boundary between components: where a curve flattens, some of
            them end in the wrong component (their error is then of the order of the distance between
            the means).
        '''),
        ("code", '''
            BASELINES = {
                "DDIM": lambda n: sj.DDIM(steps=n, skip_type="logSNR"),
                "SciRE v1 multistep-3 (official phi)": lambda n: sj.SciRE(order=3, steps=n),
                "DPM-Solver++ 2M": lambda n: sj.DPMSolver(order=2, steps=n),
                "DPM-Solver++ 3M": lambda n: sj.DPMSolver(order=3, steps=n),
                "UniPC-2 (bh2)": lambda n: sj.UniPC(order=2, steps=n),
                "SciRE v1 multistep-2 (official phi)": lambda n: sj.SciRE(order=2, steps=n),
            }
            if SMOKE:
                BASELINES = {k: BASELINES[k] for k in ("DDIM", "SciRE v1 multistep-3 (official phi)", "DPM-Solver++ 2M")}

            start = time.perf_counter()
            baseline_curves = {name: error_curve(make) for name, make in BASELINES.items()}
            print(f"{len(BASELINES) * len(NFES)} solves in {time.perf_counter() - start:.1f} s\\n")
            print(f"{'NFE':<36}" + "".join(f"{n:>9}" for n in NFES))
            for name, (nfe, err) in baseline_curves.items():
                print(f"{name:<36}" + "".join(f"{e:>9.2e}" for e in err))
            loglog(baseline_curves, "Gaussian mixture: error vs NFE")
        ''', True),
        ("markdown", '''
            ## 2. The `phi` ablation

            SciRE's recursive difference divides the finite-difference estimate of the derivative by `phi`.
            The official code uses a per-step schedule of partial sums of the series of `1 − e^{−1}`
            (≈ 0.632); the paper also suggests constants such as 2/3. `phi = 1` is the plain finite
            difference. (Multistep, order 3, NSR grid.)
        '''),
        ("code", '''
            PHIS = {"official schedule": "official", "2/3": 2.0 / 3.0, "1 - 1/e": 1.0 - np.exp(-1.0),
                    "1.0 (finite difference)": 1.0}
            if SMOKE:
                PHIS = {k: PHIS[k] for k in ("official schedule", "1.0 (finite difference)")}

            phi_curves = {f"phi = {label}": error_curve(lambda n, phi=phi: sj.SciRE(order=3, steps=n, phi=phi))
                          for label, phi in PHIS.items()}
            print(f"{'NFE':<36}" + "".join(f"{n:>9}" for n in NFES))
            for name, (nfe, err) in phi_curves.items():
                print(f"{name:<36}" + "".join(f"{e:>9.2e}" for e in err))
            loglog(phi_curves, "SciRE v1 multistep-3: choice of phi")
        ''', True),
        ("markdown", '''
            ## 3. Recursive difference vs plain finite difference

            Ratio of the errors, official `phi` / `phi = 1`, for multistep orders 2 and 3 (< 1: the
            recursive difference is more accurate). On this problem the recursive difference wins at the
            low NFE SciRE is designed for and loses as the NFE grows: `phi ≠ 1` leaves an O(h²) local
            error, so the method is first order (section 4), while the finite difference keeps its order.
        '''),
        ("code", '''
            ORDERS = (3,) if SMOKE else (2, 3)
            fig, ax = plt.subplots(figsize=(6.4, 3.6))
            ratios = {}
            for order in ORDERS:
                nfe, recursive = error_curve(lambda n: sj.SciRE(order=order, steps=n))
                _, finite = error_curve(lambda n: sj.SciRE(order=order, steps=n, phi=1.0))
                ratios[order] = recursive / finite
                ax.semilogx(nfe, ratios[order], "o-", ms=3, label=f"multistep order {order}")
                print(f"order {order}: error ratio official / phi=1: " + ", ".join(
                    f"NFE {n}: {r:.2f}" for n, r in zip(nfe, ratios[order])))
            ax.axhline(1.0, color="k", lw=0.8)
            nfe_axis(ax, NFES)
            ax.set_ylabel("error(official phi) / error(phi = 1)")
            ax.set_title("recursive difference vs finite difference (mixture)", fontsize=10)
            ax.legend(fontsize=8)
            plt.show()
        '''),
        ("markdown", '''
            ## 4. Convergence order on a Gaussian (closed-form flow)

            For Gaussian data `(x − α m) / sqrt(α² s² + σ²)` is constant along the flow, so the exact
            solution is known in closed form. The slope of log(error) vs log(NFE) at 40, 80, 160 NFE is the
            empirical order. Expected (see `tests/test_convergence.py`): DDIM 1; DPM-Solver++ 2M 2; DPM-Solver++
            3M 2 (its first-order start step dominates); UniPC-2 3 (the corrector adds an order); SciRE with the
            official `phi` ≈ 1 (the `1/phi` factor leaves an O(h²) local error); SciRE with `phi = 1` 2.
        '''),
        ("code", '''
            gaussian = analytic.Gaussian(mean=np.array([0.5, -0.3]), std=np.array([0.5, 0.8]))
            x_gauss = jnp.asarray(np.random.default_rng(0).standard_normal((8, 2)))
            exact = analytic.gaussian_flow(gaussian, schedule, x_gauss, schedule.t_max, schedule.t_min)

            ORDER_CASES = {  # name: (solver, expected order)
                "DDIM": (lambda n: sj.DDIM(steps=n, skip_type="logSNR"), 1.0),
                "DPM-Solver++ 2M": (lambda n: sj.DPMSolver(order=2, steps=n), 2.0),
                "DPM-Solver++ 3M": (lambda n: sj.DPMSolver(order=3, steps=n), 2.0),
                "UniPC-2 (bh2)": (lambda n: sj.UniPC(order=2, steps=n, lower_order_final=False), 3.0),
                "SciRE v1 multistep-2, official phi": (lambda n: sj.SciRE(order=2, steps=n), 1.0),
                "SciRE v1 multistep-2, phi = 1": (lambda n: sj.SciRE(order=2, steps=n, phi=1.0), 2.0),
            }
            if SMOKE:
                ORDER_CASES = {k: ORDER_CASES[k] for k in ("DDIM", "DPM-Solver++ 2M", "SciRE v1 multistep-2, official phi",
                                                           "SciRE v1 multistep-2, phi = 1")}

            slopes, order_curves = {}, {}
            for name, (make, expected) in ORDER_CASES.items():
                nfe, err = error_curve(make, ORDER_NFES, gaussian, x_gauss, exact)
                slopes[name] = -np.polyfit(np.log(nfe), np.log(err), 1)[0]
                order_curves[f"{name}: slope {slopes[name]:.2f} (expected {expected:g})"] = (nfe, err)
            for label in order_curves:
                print(label)
            loglog(order_curves, "Gaussian: empirical order = -slope")
        ''', True),
        ("code", '''
            # Checks (run in CI in smoke mode).
            for curves in (baseline_curves, phi_curves, order_curves):
                for name, (nfe, err) in curves.items():
                    assert np.all(np.isfinite(err)) and np.all(err > 0), name
                    assert err[-1] < err[0], (name, err)  # more NFE, smaller error
            ddim_nfe, ddim_err = baseline_curves["DDIM"]
            assert np.all(np.diff(ddim_err) < 0), ddim_err  # DDIM: error decreases monotonically with NFE
            assert list(ddim_nfe) == list(NFES)
            for name, (make, expected) in ORDER_CASES.items():
                assert abs(slopes[name] - expected) <= 0.3, (name, slopes[name], expected)
            # At 160 NFE the finite difference (phi = 1) is far more accurate than the recursive difference.
            official = solve_error(sj.SciRE(order=2, steps=160), gaussian, x_gauss, exact)[0]
            finite = solve_error(sj.SciRE(order=2, steps=160, phi=1.0), gaussian, x_gauss, exact)[0]
            assert official > 3 * finite, (official, finite)
            print("all checks passed")
        '''),
    ]


BUILDERS = {"quickstart": quickstart, "pretrained_tpu": pretrained_tpu, "accuracy_study": accuracy_study}

METADATA = {
    "quickstart": {},
    "pretrained_tpu": {"accelerator": "TPU", "colab": {"gpuType": "V28", "provenance": []}},
    "accuracy_study": {},
}


def notebook_cells(name):
    """``[(cell_type, source), ...]`` of notebook ``name`` (sources dedented and stripped)."""
    return [(cell[0], _clean(cell[1])) for cell in BUILDERS[name]()]


def figure_cells(name):
    """Indices of the cells whose figures are kept by ``--figures`` (third element True)."""
    return {index for index, cell in enumerate(BUILDERS[name]()) if len(cell) > 2 and cell[2]}


def build(name):
    import nbformat

    cells = []
    for kind, source in notebook_cells(name):
        cells.append(nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source))
    metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    metadata.update(METADATA[name])
    notebook = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
    for index, cell in enumerate(notebook.cells):  # stable ids: regenerating gives identical files
        cell["id"] = f"{name[:12]}-{index:02d}"
    nbformat.validate(notebook)
    return notebook


def keep_figures(executed, clean, indices):
    """Copy only the PNG figures of the cells ``indices`` of ``executed`` into ``clean``."""
    for index, (source_cell, target) in enumerate(zip(executed.cells, clean.cells)):
        if target.cell_type != "code" or index not in indices:
            continue
        figures = [o for o in source_cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")
                   and "image/png" in o.get("data", {})]
        for output in figures:
            output["data"] = {"image/png": output["data"]["image/png"], "text/plain": ["<Figure>"]}
            output["metadata"] = {}
            if output["output_type"] == "execute_result":
                output["output_type"] = "display_data"
                output.pop("execution_count", None)
        target.outputs = figures
    return clean


def execute(notebook, timeout=1800):
    import nbclient

    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(HERE)}})
    return client.execute()


def main(argv=None) -> int:
    import copy

    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", nargs="*", default=[], choices=NAMES,
                        help="execute these notebooks (full mode) and keep their figures")
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args(argv)
    for name in NAMES:
        notebook = build(name)
        if name in args.figures:
            os.environ.pop("SCIRE_JAX_SMOKE", None)
            # Small figures: inline PNGs at 72 dpi keep the committed notebook light.
            executed = copy.deepcopy(notebook)
            executed.cells.insert(0, nbformat.v4.new_code_cell(
                "%config InlineBackend.figure_formats = ['png']\n"
                "import matplotlib as mpl; mpl.rcParams['figure.dpi'] = 72"))
            executed = execute(executed)
            executed.cells.pop(0)
            notebook = keep_figures(executed, notebook, figure_cells(name))
        path = Path(args.out) / f"{name}.ipynb"
        nbformat.write(notebook, str(path))
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
