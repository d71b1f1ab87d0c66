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
# # Classifier-guided ImageNet with SciRE-Solver: OpenAI's guided-diffusion (ADM) on TPU / GPU
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scire-jax/scire-jax/blob/main/colab/imagenet_guided.ipynb)
#
# Downloads OpenAI's released **guided-diffusion** ImageNet model and its noisy classifier (256x256 by
# default, or 64x64), converts both to Flax (`scire-jax convert ... --config`: strict, every key and
# shape checked), and samples **8 classes** with classifier guidance using **SciRE-Solver** (v1,
# multistep, order 3) at 10 and 20 NFE, side by side with **DPM-Solver++ 3M**, from the same initial
# noise. The batch is sharded over all devices (`sj.batch_mesh()`: the 8 cores of a TPU, or one GPU);
# on an accelerator the networks compute in bfloat16 (the solver stays float32).
#
# *Runtime → Change runtime type → TPU* (or *GPU*). The 256x256 files are about 2.2 GB. They are
# downloaded only on Colab; elsewhere (or with `SCIRE_JAX_SMOKE=1`) the tiny **random-weight test
# networks** of the repository (`tests/data/adm`, 32x32, 10 classes) stand in for them, or, without a
# checkout, randomly initialised ones; the last cell says clearly which weights were used.

# %%
# Install scire-jax: from the checkout this notebook is opened from when there is one (the nearest
# folder at or above the working directory whose pyproject.toml names scire-jax), else the published
# package (`pip install scire-jax`). Nothing is installed when the right scire-jax is importable.
EXTRA_REQUIREMENTS = [("matplotlib", "matplotlib")]  # (module, pip requirement); torch reads the .pt files

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
import json
import os
import tempfile
import time
import urllib.request

# SCIRE_JAX_SMOKE=1 (set by tests/test_notebooks.py) runs a tiny, fast version of this notebook on CPU.
SMOKE = os.environ.get("SCIRE_JAX_SMOKE", "0") == "1"
IN_COLAB = importlib.util.find_spec("google.colab") is not None
RESOLUTION = 256  # 256 (ImageNet 256x256, classifier scale 2.5 as the SciRE config) or 64

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import scire_jax as sj
from scire_jax.apps.convert_cli import convert_main
from scire_jax.apps.images import image_grid
from scire_jax.io import adm_loading

ACCELERATOR = jax.default_backend() in ("tpu", "gpu")
DTYPE = jnp.bfloat16 if ACCELERATOR else None  # network compute; the solver stays float32
NFES = (4,) if SMOKE else (10, 20)
SEED = 0
print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s), Colab {IN_COLAB}, "
      f"smoke mode {SMOKE}")

# %% [markdown]
# ## Download and convert the released model and classifier
#
# The `.pt` files are plain PyTorch state dicts (read with `torch.load(weights_only=True)`).
# `convert_main` (= `scire-jax convert FILE DIR --config ARCH`) converts them strictly and writes
# scire-jax checkpoints that record the architecture and the training schedule (256x256: linear betas
# over 1000 steps; 64x64: cosine over 1000 steps). `sj.load_pretrained` then gives the noise
# predictor (the first 3 of the 6 learned-sigma output channels), and `load_classifier` the classifier.

# %%
BASE = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021"
# guided-diffusion's README flags for its 64x64 model (cosine schedule) and classifier; the 256x256
# ones are scire_jax.io.convert.adm.ARCHITECTURES["imagenet256"] / ["imagenet256_classifier"]
GD64 = {"family": "guided_diffusion", "schedule": "cosine", "image_size": 64, "in_channels": 3, "model_channels": 192,
        "out_channels": 6, "num_res_blocks": 3, "attention_resolutions": [2, 4, 8], "dropout": 0.1,
        "channel_mult": [1, 2, 3, 4], "num_classes": 1000, "num_heads": 4, "num_head_channels": 64,
        "num_heads_upsample": -1, "use_scale_shift_norm": True, "resblock_updown": True,
        "use_new_attention_order": True}
GD64_CLASSIFIER = {"family": "guided_diffusion_classifier", "image_size": 64, "in_channels": 3, "model_channels": 128,
                   "out_channels": 1000, "num_res_blocks": 4, "attention_resolutions": [2, 4, 8],
                   "channel_mult": [1, 2, 3, 4], "num_head_channels": 64, "use_scale_shift_norm": True,
                   "resblock_updown": True, "pool": "attention"}
RELEASED = {256: ("256x256_diffusion.pt", "imagenet256", "256x256_classifier.pt", "imagenet256_classifier", 2.5),
            64: ("64x64_diffusion.pt", GD64, "64x64_classifier.pt", GD64_CLASSIFIER, 1.0)}
IMAGENET_CLASSES = [207, 360, 387, 974, 88, 979, 417, 279]  # golden retriever, otter, red panda, geyser, macaw,
#                                                             valley, balloon, arctic fox

WORK = pathlib.Path(tempfile.mkdtemp(prefix="imagenet_guided_"))
FIXTURES = next((folder / "tests" / "data" / "adm" for folder in (CHECKOUT, INSTALLED) if folder is not None
                 and (folder / "tests" / "data" / "adm" / "gd_unet_cond.safetensors").is_file()), None)


def download(name):
    target = pathlib.Path("/content" if IN_COLAB else WORK) / name
    if not target.is_file():
        print(f"downloading {BASE}/{name} ...", flush=True)
        urllib.request.urlretrieve(f"{BASE}/{name}", target)
    return target


def fixture_config(case_id):
    """The test fixtures' constructor kwargs (tests/data/adm/cases.json) plus the family."""
    cases = {case["id"]: case for case in json.loads((FIXTURES / "cases.json").read_text())["cases"]}
    family = {"guided_diffusion.unet.UNetModel": "guided_diffusion",
              "guided_diffusion.unet.EncoderUNetModel": "guided_diffusion_classifier"}[cases[case_id]["class"]]
    return dict(cases[case_id]["constructor_kwargs"], family=family)


WEIGHTS = None  # "released", "fixture" or "random"
if IN_COLAB and not SMOKE:
    if importlib.util.find_spec("torch") is None and not pip_install("torch"):
        raise RuntimeError("reading the released .pt files needs PyTorch (pip install torch failed)")
    model_file, model_config, classifier_file, classifier_config, SCALE = RELEASED[RESOLUTION]
    sources = [(download(model_file), model_config), (download(classifier_file), classifier_config)]
    WEIGHTS, LABELS = "released", np.array(IMAGENET_CLASSES, np.int32)
    MODEL_NAME = f"guided-diffusion ImageNet {RESOLUTION}x{RESOLUTION} ({model_file} + {classifier_file})"
elif FIXTURES is not None:
    sources = [(FIXTURES / "gd_unet_cond.safetensors", fixture_config("gd_unet_cond")),
               (FIXTURES / "gd_classifier.pt", fixture_config("gd_classifier"))]
    WEIGHTS, LABELS, SCALE = "fixture", np.arange(8, dtype=np.int32), 1.0
    MODEL_NAME = f"the random-weight test networks of {FIXTURES} (32x32, 10 classes)"
if WEIGHTS is not None:
    start = time.perf_counter()
    for (source, config), name in zip(sources, ("model", "classifier")):
        summary = convert_main(source, WORK / name, adm_config=config, overwrite=True)
        print(f"converted {source.name}: {summary['model']}, {summary['num_params'] / 1e6:.1f} M parameters")
    model = sj.load_pretrained(WORK / "model", dtype=DTYPE)
    classifier = adm_loading.load_classifier(WORK / "classifier", dtype=DTYPE)
    print(f"converted and loaded in {time.perf_counter() - start:.1f} s")
else:  # no Colab, no checkout with the fixtures: random weights of the fixtures' architectures
    from scire_jax.io.convert.adm import ARCHITECTURES
    from scire_jax.models.adm import dummy_inputs, from_config

    unet = from_config({"image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 6,
                        "num_res_blocks": 1, "attention_resolutions": [2], "channel_mult": [1, 2], "num_classes": 10,
                        "num_head_channels": 16, "use_scale_shift_norm": True, "resblock_updown": True},
                       "guided_diffusion")
    encoder = from_config({"image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 10,
                           "num_res_blocks": 1, "attention_resolutions": [2], "channel_mult": [1, 2],
                           "num_head_channels": 16, "use_scale_shift_norm": True, "resblock_updown": True,
                           "pool": "attention"}, "guided_diffusion_classifier")
    schedule, time_input = adm_loading.schedule_for(ARCHITECTURES["imagenet256"]["schedule"])
    model = sj.Pretrained(adm_loading.make_apply_fn(unet, 3), unet.init(jax.random.key(1), *dummy_inputs(unet)),
                          schedule, "noise", (32, 32, 3), "class", 10, time_input, "guided_diffusion", "random")
    classifier = adm_loading.PretrainedClassifier(adm_loading.make_classifier_apply_fn(encoder),
                                                  encoder.init(jax.random.key(2), *dummy_inputs(encoder)), 10,
                                                  (32, 32, 3), 1.0)
    WEIGHTS, LABELS, SCALE = "random", np.arange(8, dtype=np.int32), 1.0
    MODEL_NAME = "RANDOMLY INITIALISED tiny ADM networks (no checkout with tests/data/adm, not in Colab)"
print(f"{MODEL_NAME}: {model!r}\n{classifier!r}; guidance scale {SCALE}")

# %% [markdown]
# ## Sample 8 classes on all devices
#
# `class_conditional_noise_fn(model, classifier)` is the noise predictor of a class-conditional,
# classifier-guided model: the official guided-diffusion convention
# `eps - scale * sigma_t * grad_x log p(y | x_t)`, one `jax.grad` of the classifier per network
# call. The labels (one per sample), the parameters and the guidance scale are arguments of the
# compiled sampler (`sampling_params`), so other classes or scales reuse it. With `mesh=mesh` the
# batch is sharded over every device and the parameters are replicated.

# %%
mesh = sj.batch_mesh()
devices = mesh.size
if len(LABELS) % devices:
    raise RuntimeError(f"{len(LABELS)} samples do not split over {devices} devices")
shape = (len(LABELS), *model.sample_shape)
noise_fn = adm_loading.class_conditional_noise_fn(model, classifier)
params = adm_loading.sampling_params(model, LABELS, classifier, scale=SCALE)
print(f"mesh {dict(mesh.shape)}: {len(LABELS)} samples of {model.sample_shape}, classes {LABELS.tolist()}")

SOLVERS = {
    "SciRE v1 multistep-3": lambda nfe: sj.SciRE(algorithm="v1", method="multistep", order=3, steps=nfe),
    "DPM-Solver++ 3M": lambda nfe: sj.DPMSolver(algorithm="dpmsolver++", method="multistep", order=3, steps=nfe),
}
key = jax.random.key(SEED)
samples, rows = {}, []
for name, make_solver in SOLVERS.items():
    for nfe in NFES:
        sample_fn = jax.jit(sj.make_sampler(make_solver(nfe), model.schedule, noise_fn, mesh=mesh), static_argnums=2)
        start = time.perf_counter()
        compiled = sample_fn.lower(params, key, shape).compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        x = jax.block_until_ready(compiled(params, key))
        run_s = time.perf_counter() - start
        samples[name, nfe] = np.asarray(x)
        rows.append((name, nfe, compile_s, run_s, len(LABELS) / run_s))

print(f"{'solver':<22} {'NFE':>4} {'compile s':>10} {'run s':>8} {'samples/s':>10}")
for name, nfe, compile_s, run_s, rate in rows:
    print(f"{name:<22} {nfe:>4} {compile_s:>10.2f} {run_s:>8.3f} {rate:>10.2f}")

# %%
fig, axes = plt.subplots(len(SOLVERS) * len(NFES), 1, figsize=(12, 2.0 * len(SOLVERS) * len(NFES)), squeeze=False)
for i, (name, nfe) in enumerate((name, nfe) for name in SOLVERS for nfe in NFES):
    grid = image_grid(np.clip(samples[name, nfe], -1.0, 1.0), columns=len(LABELS), pad=2)  # one row: the 8 classes
    axes[i, 0].imshow(grid)
    axes[i, 0].set_title(f"{name}, NFE = {nfe}", fontsize=9)
    axes[i, 0].axis("off")
fig.suptitle(f"{MODEL_NAME}\nclasses {LABELS.tolist()}, classifier scale {SCALE}", fontsize=9)
fig.tight_layout()
plt.show()

# %%
# Checks (run in CI in smoke mode on the fixture weights).
assert len(samples) == len(SOLVERS) * len(NFES)
for (name, nfe), x in samples.items():
    assert x.shape == shape and np.all(np.isfinite(x)), (name, nfe, x.shape)
assert all(rate > 0 for *_, rate in rows)
if WEIGHTS == "released":
    for (name, nfe), x in samples.items():
        assert np.mean(np.abs(x) <= 1.5) > 0.9, (name, nfe)  # images in [-1, 1]
    print(f"all checks passed on the released weights: {MODEL_NAME}")
elif WEIGHTS == "fixture":
    print(f"checks passed, but on the FIXTURE weights: {MODEL_NAME}, not the released ImageNet model "
          "(smoke mode or not in Colab); the samples above are not images")
else:
    print(f"checks passed, but on RANDOM weights: {MODEL_NAME}; the samples above are not images")
