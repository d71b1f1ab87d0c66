# ---
# jupyter:
#   colab:
#     provenance: []
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # scire-jax quickstart: sample the embedded digits model
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scire-jax/scire-jax/blob/main/colab/quickstart.ipynb)
#
# [SciRE-Solver](https://arxiv.org/abs/2308.07896) integrates the probability-flow ODE of a
# diffusion model in the noise-to-signal ratio and estimates derivatives by *recursive
# difference*; it produces good samples in 5–20 network evaluations (NFE). This notebook samples
# the small 16×16 MNIST model shipped inside the package with **SciRE-Solver** (v1, multistep,
# order 3) and **DPM-Solver++ (2M)** at NFE 5, 10 and 20, shows the grids side by side, prints a
# solver *plan* and separates compile time from run time.
#
# Runs on any Colab runtime (CPU is enough; GPU/TPU work unchanged).

# %%
# Install scire-jax: from the checkout this notebook is opened from when there is one (the nearest
# folder at or above the working directory whose pyproject.toml names scire-jax), else the published
# package (`pip install scire-jax`). Nothing is installed when the right scire-jax is importable.
EXTRA_REQUIREMENTS = [("matplotlib", "matplotlib")]  # (module, pip requirement)

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

NFES = (5,) if SMOKE else (5, 10, 20)
NUM_SAMPLES = 4 if SMOKE else 16
SEED = 0
print(f"jax {jax.__version__}, scire_jax {sj.__version__}, backend {jax.default_backend()}, "
      f"devices {jax.devices()}, smoke mode {SMOKE}")

# %% [markdown]
# ## The model
#
# `sj.load_pretrained("mnist")` returns a `Pretrained` record: `apply_fn` (a Flax UNet in the
# diffusers `UNet2DModel` layout, NHWC), its `params`, the DDPM noise `schedule` it was trained
# with, what it predicts (`prediction="noise"`) and the `sample_shape` of one sample;
# `model.noise_fn()` wraps it for the samplers. If the embedded model is not available in the
# installed version, a tiny *randomly initialised* UNet stands in, so that the rest of the notebook
# still runs (its samples are textures, not digits, and the last cell says so).

# %%
from scire_jax.io.pretrained import make_apply_fn
from scire_jax.models.unet2d import UNet2D

try:
    model = sj.load_pretrained("mnist")
    MODEL = "embedded MNIST digits model"
    TRAINED = True
except (ValueError, FileNotFoundError, OSError) as error:
    print(f"NOTE: the embedded 'mnist' model is not available here ({error}).\n"
          "Falling back to a tiny RANDOMLY INITIALISED UNet2D with the DDPM linear schedule: the "
          "sampler runs exactly the same way, but the samples are textures, not digits.")
    module = UNet2D.from_config({
        "sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32],
        "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
        "attention_head_dim": 16})
    model = sj.Pretrained(apply_fn=make_apply_fn(module), params=module.init_params(jax.random.key(SEED)),
                          schedule=sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000)),
                          prediction="noise", sample_shape=(16, 16, 1), source="random fallback")
    MODEL = "tiny random UNet2D (fallback)"
    TRAINED = False

params, schedule = model.params, model.schedule
shape = (NUM_SAMPLES, *model.sample_shape)
count = sum(p.size for p in jax.tree_util.tree_leaves(params))
print(f"{MODEL}: {count / 1e6:.2f} M parameters, prediction={model.prediction!r}, "
      f"sample shape {model.sample_shape}")

# %% [markdown]
# ## Solvers and their plans
#
# A solver is a small frozen configuration. Everything that depends only on the schedule and the
# number of steps (times, orders, the SciRE `phi` values, every coefficient) is computed once on
# the host into a *plan*; the sampler is one `lax.scan` over it and calls the network exactly
# `plan.nfe` times.

# %%
noise_fn = model.noise_fn()

SOLVERS = {
    "SciRE v1 multistep-3": lambda nfe: sj.SciRE(algorithm="v1", method="multistep", order=3, steps=nfe),
    "DPM-Solver++ 2M": lambda nfe: sj.DPMSolver(algorithm="dpmsolver++", method="multistep", order=2,
                                                steps=nfe),
}
print(sj.plan(SOLVERS["SciRE v1 multistep-3"](NFES[-1]), schedule).summary())

# %% [markdown]
# ## Sample and time it
#
# `make_sampler` returns `sample_fn(params, key, shape)`; `jax.jit(..., static_argnums=2)` compiles
# it once per solver configuration and shape. Sample *i* starts from the noise
# `normal(fold_in(key, i))`, so all solvers below start from the same `x_T`.

# %%
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

# %%
fig, axes = plt.subplots(len(SOLVERS), len(NFES), figsize=(2.4 * len(NFES), 2.6 * len(SOLVERS)), squeeze=False)
for i, name in enumerate(SOLVERS):
    for j, nfe in enumerate(NFES):
        grid = image_grid(np.clip(samples[name, nfe], -1.0, 1.0), pad=0)  # uint8 (H, W, C)
        axes[i, j].imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        axes[i, j].set_title(f"{name}\nNFE = {nfe}", fontsize=9)
        axes[i, j].axis("off")
fig.suptitle(MODEL, fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# Both solvers integrate the same ODE from the same noise, so their samples should agree more
# closely as the NFE grows.

# %%
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
else:
    print(f"checks passed, but on the FALLBACK model: RANDOM weights ({MODEL}), not the embedded digits model")
