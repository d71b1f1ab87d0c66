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
# # Stable Diffusion with SciRE-Solver on all devices (TPU / GPU)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scire-jax/scire-jax/blob/main/colab/stable_diffusion_tpu.ipynb)
#
# Text-to-image with Stable Diffusion 1.5 in JAX: the diffusers weights are converted to Flax
# (`load_sd_pipeline`, no PyTorch), the 8 prompts are split over every device (`sj.batch_mesh()`,
# parameters replicated) and each image is one jitted program (CLIP text encoder, one guided UNet call
# per step on the doubled batch, the solver, the VAE decoder). **SciRE-Solver** at 10 and 20 NFE runs
# beside **DPM-Solver++ 2M**, from the same initial noise.
#
# *Runtime → Change runtime type → TPU* (or *GPU*). The weights (about 2 GB, fp16 safetensors) are
# downloaded only on Colab; elsewhere (or with `SCIRE_JAX_SMOKE=1`, or without network access) tiny
# **random** components stand in for them, and the last cell says clearly which weights were used.
# Set `SCIRE_JAX_SD_FOLDER` to a local diffusers folder to use real weights outside Colab.

# %%
# Install scire-jax: from the checkout this notebook is opened from when there is one (the nearest
# folder at or above the working directory whose pyproject.toml names scire-jax), else the published
# package (`pip install scire-jax`). Nothing is installed when the right scire-jax is importable.
EXTRA_REQUIREMENTS = [("matplotlib", "matplotlib"), ("tokenizers", "tokenizers")]  # (module, pip requirement)

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

# SCIRE_JAX_SMOKE=1 (set by tests/test_notebooks.py; SCIRE_SMOKE=1 works too) runs a tiny version on CPU.
SMOKE = "1" in (os.environ.get("SCIRE_JAX_SMOKE", "0"), os.environ.get("SCIRE_SMOKE", "0"))
IN_COLAB = "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ
LOCAL_FOLDER = os.environ.get("SCIRE_JAX_SD_FOLDER")  # a diffusers SD 1.x / 2.x folder on disk (optional)

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import scire_jax as sj
from scire_jax.apps import pipelines

REPO_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # or "stabilityai/stable-diffusion-2-1-base"
PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolor painting of a fox in the snow",
           "a cozy cabin in the mountains at sunset, oil painting", "a bowl of ramen, studio photo",
           "a lighthouse on a cliff during a storm", "a red vintage car in a narrow street, film photo",
           "a castle made of glass, fantasy art", "a portrait of a cat wearing a tiny hat"]
NEGATIVE = "blurry, low quality"
GUIDANCE = 7.5
NFES = (10,) if SMOKE else (10, 20)
SEED = 0
print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): {jax.devices()}; "
      f"smoke mode {SMOKE}, Colab {IN_COLAB}")

# %% [markdown]
# ## The pipeline: real weights on Colab, tiny random components elsewhere
#
# `snapshot_download` fetches only what the Flax pipeline reads: the configs, the tokenizer files and
# the fp16 safetensors of the UNet, VAE and text encoder (widened to float32 by the loader; the
# networks then compute in bfloat16 on TPU / GPU). The smoke stand-in has the same structure with
# 2-level UNet / VAE and a 2-layer text encoder built by `pipelines.random_sd_pipeline` (random
# normal weights, a tiny CLIP tokenizer): it exercises every step, but its "images" are noise.

# %%
COMPUTE_DTYPE = jnp.bfloat16 if jax.default_backend() in ("tpu", "gpu") else None  # None: float32
folder, FALLBACK_REASON = LOCAL_FOLDER, None
if folder is None and SMOKE:
    FALLBACK_REASON = "SCIRE_JAX_SMOKE=1: no download"
elif folder is None and not IN_COLAB:
    FALLBACK_REASON = "not running on Colab: the weights are only downloaded there (set SCIRE_JAX_SD_FOLDER)"
elif folder is None:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(REPO_ID, allow_patterns=[
            "model_index.json", "scheduler/*.json", "tokenizer/*", "unet/config.json", "vae/config.json",
            "text_encoder/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors"])
    except Exception as error:  # no network, hub unavailable, ...
        FALLBACK_REASON = f"could not download {REPO_ID}: {type(error).__name__}: {error}"
        folder = None

if folder is not None:
    from scire_jax.io.convert.sd import load_sd_pipeline

    start = time.perf_counter()
    pipe = load_sd_pipeline(folder, dtype=COMPUTE_DTYPE, variant=None if LOCAL_FOLDER else "fp16")
    print(f"converted {LOCAL_FOLDER or REPO_ID} in {time.perf_counter() - start:.1f} s")
    MODEL, REAL_WEIGHTS = LOCAL_FOLDER or REPO_ID, True
else:
    print(f"{FALLBACK_REASON}.\nUsing TINY RANDOM Stable Diffusion components instead: everything below runs the "
          "same way, but the images are noise.")
    pipe = pipelines.random_sd_pipeline(
        {"sample_size": 8, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
         "attention_head_dim": 2, "norm_num_groups": 8,
         "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D",
                                                                                        "CrossAttnUpBlock2D"]},
        {"block_out_channels": [32, 64], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
         "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
         "scaling_factor": 0.18215},
        {"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
         "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu"},
        seed=SEED, std=0.1, dtype=COMPUTE_DTYPE)
    MODEL, REAL_WEIGHTS = "tiny random SD components (smoke)", False

count = {name: sum(p.size for p in jax.tree_util.tree_leaves(tree)) for name, tree in pipe.params.items()}
print(f"{MODEL}: " + ", ".join(f"{name} {n / 1e6:.1f} M" for name, n in count.items())
      + f" parameters; prediction={pipe.prediction!r}, images {pipe.image_size}x{pipe.image_size}")

# %% [markdown]
# ## Split the prompts over all devices
#
# `sj.batch_mesh()` is a 1-D mesh over all devices. `place_params` replicates the parameters once;
# with `mesh=mesh` each device encodes its prompts, evaluates the guided UNet on its own doubled
# batch and decodes its images (`jax.shard_map`), while the solver runs as one SPMD program. Image
# *i* starts from `normal(fold_in(key, i))`: the same images on 1 or 8 devices.

# %%
mesh = sj.batch_mesh()
params = pipelines.place_params(pipe.params, mesh)
SOLVERS = {
    "SciRE (v1 3M)": lambda nfe: sj.SciRE(steps=nfe),
    "DPM-Solver++ 2M": lambda nfe: sj.DPMSolver(algorithm="dpmsolver++", order=2, steps=nfe),
}
print(f"mesh {dict(mesh.shape)}: {len(PROMPTS)} prompts, {len(PROMPTS) / mesh.size:g} per device")
print(sj.plan(SOLVERS["SciRE (v1 3M)"](NFES[0]), pipe.schedule).summary())

# %%
images, rows = {}, []
for name, make_solver in SOLVERS.items():
    for nfe in NFES:
        solver = make_solver(nfe)
        start = time.perf_counter()
        lowered, args = pipelines.lower_text_to_image(pipe, params, PROMPTS, NEGATIVE, key=jax.random.key(SEED),
                                                      solver=solver, guidance_scale=GUIDANCE, mesh=mesh)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))[:len(PROMPTS)]
        run_s = time.perf_counter() - start
        images[name, nfe] = np.asarray(out)
        rows.append((name, nfe, compile_s, run_s, len(PROMPTS) / run_s))

print(f"{'solver':<18} {'NFE':>4} {'compile s':>10} {'run s':>8} {'images/s':>9}")
for name, nfe, compile_s, run_s, rate in rows:
    print(f"{name:<18} {nfe:>4} {compile_s:>10.1f} {run_s:>8.2f} {rate:>9.2f}")

# %%
runs = list(images)
fig, axes = plt.subplots(len(runs), len(PROMPTS), figsize=(1.6 * len(PROMPTS), 1.8 * len(runs)), squeeze=False)
for i, (name, nfe) in enumerate(runs):
    for j in range(len(PROMPTS)):
        axes[i, j].imshow(images[name, nfe][j], interpolation="nearest")
        axes[i, j].set_xticks([])
        axes[i, j].set_yticks([])
        if j == 0:
            axes[i, j].set_ylabel(f"{name}\nNFE {nfe}", fontsize=8)
fig.suptitle(MODEL + ("" if REAL_WEIGHTS else " -- RANDOM weights: not real images"), fontsize=9)
fig.tight_layout()
plt.show()

# %%
# Checks (run in CI in smoke mode, there on 2 simulated CPU devices), and which weights were used.
size = pipe.image_size
for (name, nfe), x in images.items():
    assert x.shape == (len(PROMPTS), size, size, 3), (name, nfe, x.shape)
    assert np.all(np.isfinite(x)) and x.min() >= 0.0 and x.max() <= 1.0, (name, nfe)
assert all(rate > 0 for *_, rate in rows)
assert len({nfe for _, nfe in images}) == len(NFES)
if REAL_WEIGHTS:
    print(f"REAL WEIGHTS: {MODEL} ({jax.device_count()} {jax.default_backend()} device(s)); all checks passed")
else:
    print(f"checks passed, but on RANDOM smoke weights, NOT {REPO_ID} ({FALLBACK_REASON}); the images above are "
          "noise")
