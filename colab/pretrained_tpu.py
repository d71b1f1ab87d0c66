# ---
# jupyter:
#   accelerator: TPU
#   colab:
#     gpuType: V28
#     provenance: []
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # Pretrained DDPM on all devices: google/ddpm-cifar10-32 on TPU / GPU
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scire-jax/scire-jax/blob/main/colab/pretrained_tpu.ipynb)
#
# Downloads the diffusers checkpoint [`google/ddpm-cifar10-32`](https://huggingface.co/google/ddpm-cifar10-32),
# converts it to Flax (`sj.load_pretrained(folder)`: weights, noise schedule, sample shape), shards
# the batch over every device with `sj.batch_mesh()` and samples with **SciRE-Solver** (v1,
# multistep, order 3) and **DPM-Solver++ (3M)** at 10 and 20 NFE.
#
# *Runtime → Change runtime type → TPU* (all 8 cores of a v2-8 are used) or *GPU*; it also runs on
# CPU, slowly. Without network access (or with `SCIRE_JAX_SMOKE=1`) a randomly initialised tiny
# `UNet2DModel`-style network with the DDPM linear schedule stands in for the checkpoint, and the
# last cell says so.

# %%
# Install scire-jax: from the checkout this notebook is opened from when there is one (the nearest
# folder at or above the working directory whose pyproject.toml names scire-jax), else the published
# package (`pip install scire-jax`). Nothing is installed when the right scire-jax is importable.
EXTRA_REQUIREMENTS = [("matplotlib", "matplotlib"), ("huggingface_hub", "huggingface_hub")]  # (module, pip requirement)

import importlib
import importlib.util
import pathlib
import re
import subprocess
import sys


def find_checkout(start=None):
    """The nearest folder at or above ``start`` (default: the working directory) holding scire-jax's pyproject.toml."""
    start = pathlib.Path.cwd() if start is None else pathlib.Path(start)
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and re.search(r'^name\s*=\s*"scire-jax"', pyproject.read_text(), re.MULTILINE):
            return folder.resolve()
    return None


def pip_install(*requirements):
    print("pip install", *requirements)
    return subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements]).returncode == 0


CHECKOUT = find_checkout()
spec = importlib.util.find_spec("scire_jax")
INSTALLED = pathlib.Path(spec.origin).resolve().parents[1] if spec is not None and spec.origin else None
if CHECKOUT is not None and INSTALLED != CHECKOUT:
    if not pip_install("-e", str(CHECKOUT)):
        raise RuntimeError(f"could not install scire-jax from the checkout {CHECKOUT} (pip install -e failed; "
                           "see the pip output above)")
    sys.path.insert(0, str(CHECKOUT))  # importable in this kernel right away
elif CHECKOUT is None and spec is None and not pip_install("scire-jax"):
    raise RuntimeError("could not install scire-jax: this notebook is not inside a scire-jax checkout (no "
                       f"pyproject.toml of scire-jax at or above {pathlib.Path.cwd()}) and `pip install scire-jax` "
                       "failed. Clone https://github.com/scire-jax/scire-jax and open the notebook from the "
                       "clone, or install the package yourself, then run this cell again.")
missing = [requirement for module, requirement in EXTRA_REQUIREMENTS if importlib.util.find_spec(module) is None]
if missing and not pip_install(*missing):
    raise RuntimeError(f"could not install {', '.join(missing)} (see the pip output above)")
importlib.invalidate_caches()
try:
    import scire_jax
except ImportError as error:
    raise RuntimeError(f"scire-jax is not importable after the install step: {error}") from error
print(f"scire_jax {scire_jax.__version__} from {pathlib.Path(scire_jax.__file__).parent}")

# %%
import os
import time

# SCIRE_JAX_SMOKE=1 (set by tests/test_notebooks.py) runs a tiny, fast version of this notebook on CPU.
SMOKE = os.environ.get("SCIRE_JAX_SMOKE", "0") == "1"

import jax
import matplotlib.pyplot as plt
import numpy as np

import scire_jax as sj
from scire_jax.apps.images import image_grid

REPO_ID = "google/ddpm-cifar10-32"
NFES = (10,) if SMOKE else (10, 20)
PER_DEVICE = 2 if SMOKE else 16  # samples per device
SEED = 0
print(f"jax {jax.__version__}, scire_jax {sj.__version__}, backend {jax.default_backend()}, "
      f"{jax.device_count()} device(s): {jax.devices()}, smoke mode {SMOKE}")

# %% [markdown]
# ## Download and convert the checkpoint
#
# `snapshot_download` fetches `config.json`, `scheduler_config.json` and the weights (safetensors,
# read without PyTorch; the `.bin` file only if no safetensors exist). `sj.load_pretrained(folder)`
# builds the Flax `UNet2D` from the diffusers config, converts the weights and reads the schedule
# and the prediction type from the scheduler config; the record's `sample_shape` is the shape of
# one sample.

# %%
from pathlib import Path

from scire_jax.io.convert.scheduler import schedule_from_scheduler_config
from scire_jax.io.pretrained import make_apply_fn
from scire_jax.models.unet2d import UNet2D

folder, FALLBACK_REASON = None, None
if SMOKE:
    FALLBACK_REASON = f"SCIRE_JAX_SMOKE=1: {REPO_ID} not downloaded"
else:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(REPO_ID, allow_patterns=["*.json", "*.safetensors"])
        if not any(Path(folder).rglob("*.safetensors")):
            folder = snapshot_download(REPO_ID, allow_patterns=["*.json", "*.bin"])
    except Exception as error:  # no network, no huggingface_hub, hub unavailable, ...
        FALLBACK_REASON = f"could not download {REPO_ID}: {type(error).__name__}: {error}"
        folder = None

if folder is not None:
    start = time.perf_counter()
    model = sj.load_pretrained(folder)
    print(f"converted {REPO_ID} in {time.perf_counter() - start:.1f} s")
    MODEL = REPO_ID
    TRAINED = True
else:
    print(f"{FALLBACK_REASON}.\nNo checkpoint: using a RANDOMLY INITIALISED tiny UNet2DModel-style network with "
          "the DDPM linear schedule instead. Everything below runs the same way, but the samples are not images.")
    module = UNet2D.from_config({
        "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3,
        "block_out_channels": [16, 32], "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8, "attention_head_dim": 16})
    schedule, prediction = schedule_from_scheduler_config(
        {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
         "num_train_timesteps": 1000, "prediction_type": "epsilon"})
    model = sj.Pretrained(apply_fn=make_apply_fn(module), params=module.init_params(jax.random.key(SEED)),
                          schedule=schedule, prediction=prediction, sample_shape=(8, 8, 3), source="random fallback")
    MODEL = "tiny random UNet2D (fallback)"
    TRAINED = False

params, schedule = model.params, model.schedule
count = sum(p.size for p in jax.tree_util.tree_leaves(params))
print(f"{MODEL}: {count / 1e6:.2f} M parameters, prediction={model.prediction!r}, sample shape {model.sample_shape}")

# %% [markdown]
# ## Shard the batch over all devices
#
# `sj.batch_mesh()` is a 1-D mesh over all devices; with `mesh=mesh` the sampler replicates the
# parameters, shards the initial noise, every solver state and the output along the batch axis,
# and runs as **one** `jax.jit` program (SPMD). Sample *i* depends only on `(key, i)`, so the
# samples are the same on 1 or 8 devices.

# %%
mesh = sj.batch_mesh()
devices = mesh.size
BATCH = PER_DEVICE * devices
shape = (BATCH, *model.sample_shape)
noise_fn = model.noise_fn()
print(f"mesh {dict(mesh.shape)}: batch {BATCH} = {PER_DEVICE} per device x {devices} device(s)")

SOLVERS = {
    "SciRE v1 multistep-3": lambda nfe: sj.SciRE(algorithm="v1", method="multistep", order=3, steps=nfe),
    "DPM-Solver++ 3M": lambda nfe: sj.DPMSolver(algorithm="dpmsolver++", method="multistep", order=3,
                                                steps=nfe),
}
print(sj.plan(SOLVERS["SciRE v1 multistep-3"](NFES[0]), schedule).summary())

# %%
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

# %%
shown = min(BATCH, 16)
fig, axes = plt.subplots(len(SOLVERS), len(NFES), figsize=(3.0 * len(NFES), 3.2 * len(SOLVERS)), squeeze=False)
for i, name in enumerate(SOLVERS):
    for j, nfe in enumerate(NFES):
        grid = image_grid(np.clip(samples[name, nfe][:shown], -1.0, 1.0), pad=0)  # uint8 (H, W, C)
        axes[i, j].imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        axes[i, j].set_title(f"{name}\nNFE = {nfe}", fontsize=9)
        axes[i, j].axis("off")
fig.suptitle(MODEL, fontsize=10)
fig.tight_layout()
plt.show()

# %%
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
else:
    print(f"checks passed, but on the FALLBACK model: RANDOM weights, not {REPO_ID} ({FALLBACK_REASON}); "
          "the samples above are not images")
