# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: L4
#     provenance: []
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # SciRE-Solver on EDM's CIFAR-10 model: samples and FID in JAX
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/scire-jax/scire-jax/blob/main/colab/edm_cifar10_fid.ipynb)
#
# Downloads NVIDIA's EDM checkpoint `edm-cifar10-32x32-cond-vp.pkl` (read by scire-jax's safe
# loader: nothing in the pickle is executed), EDM's FID reference statistics
# `fid-refs/cifar10-32x32.npz` and pytorch-fid's Inception weights, samples **10,000** images with
# the SciRE paper's EDM setting (**SciRE v1, singlestep_fixed, order 2, phi = 2/3**) at **12 and 20
# NFE** on the runtime's accelerator, shows a grid and puts the FID beside the paper's numbers
# (12 NFE: 2.29, 20 NFE: 1.94, computed from 50,000 samples).
#
# *Runtime → Change runtime type → GPU* (or TPU). Expected time for 2 x 10k samples: a few minutes
# on an A100 / TPU, about 15 min on an L4, up to an hour on a T4 (estimates: 40 GFLOP per network
# evaluation, 2 x 10k x 16 evaluations on average).
#
# **Smoke mode** (`SCIRE_JAX_SMOKE=1`, or outside Colab): the small random fixture network of the
# checkout's `tests/data/edm`, RANDOM Inception weights, a point-mass reference, a handful of
# samples, no downloads. The numbers are then not FIDs, and the last cell says which mode ran.

# %%
# Install scire-jax: from the checkout this notebook is opened from when there is one (the nearest
# folder at or above the working directory whose pyproject.toml names scire-jax), else the published
# package (`pip install scire-jax`). Nothing is installed when the right scire-jax is importable.
EXTRA_REQUIREMENTS = [("matplotlib", "matplotlib"), ("scipy", "scipy")]  # (module, pip requirement)

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
import urllib.request
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

import scire_jax as sj
from scire_jax.apps import fid, fid_cli
from scire_jax.apps.images import image_grid

IN_COLAB = "google.colab" in sys.modules
# SCIRE_JAX_SMOKE=1 (set by tests/test_notebooks.py), or any runtime outside Colab: the tiny fixture version.
SMOKE = os.environ.get("SCIRE_JAX_SMOKE", "0") == "1" or not IN_COLAB
SEED_SPEC = "scire:algorithm=v1,method=singlestep_fixed,order=2,phi=0.6666666666666666"  # the paper's EDM setting
PUBLISHED = {12: 2.29, 20: 1.94}  # official SciRE README, edm-cifar10-32x32-cond-vp, 50k samples
NFES = (12, 20)
NUM = 6 if SMOKE else 10_000
SEED = 0
mesh = sj.batch_mesh() if jax.device_count() > 1 else None
BATCH = 3 if SMOKE else 1000
print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s); "
      f"{'SMOKE mode' if SMOKE else 'FULL mode'}: {NUM} samples per NFE")

# %% [markdown]
# ## The checkpoint, the reference statistics and the Inception weights
#
# * `edm-cifar10-32x32-cond-vp.pkl`: EDM's class-conditional CIFAR-10 model (VPPrecond + DDPM++
#   SongUNet, 56 M parameters) as NVIDIA released it. `sj.load_pretrained` reads it with a
#   data-only unpickler (allow-listed globals, EDM's `module_src` never executed) into Flax.
# * `fid-refs/cifar10-32x32.npz`: EDM's `mu` / `sigma` of the CIFAR-10 training set.
# * `pt_inception-2015-12-05-6726825d.pth`: pytorch-fid's port of the TF FID Inception (read with
#   `torch.load(weights_only=True)`; Colab has torch).

# %%
EDM_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl"
REF_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"


def download(url, folder=Path("edm_downloads")):
    folder.mkdir(exist_ok=True)
    path = folder / url.rsplit("/", 1)[1]
    if not path.is_file():
        start = time.perf_counter()
        urllib.request.urlretrieve(url, path)
        print(f"downloaded {path.name} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    return path


if SMOKE:
    root = Path(sj.__file__).resolve().parents[1]
    CHECKPOINT = root / "tests" / "data" / "edm" / "network-snapshot-ddpmpp_cond_aug-vp.pkl"
    if not CHECKPOINT.is_file():
        raise RuntimeError(f"smoke mode needs a scire-jax checkout (its tests/data/edm fixtures); {CHECKPOINT} is "
                           "missing. Open the notebook from a clone, or run it in Colab for the full version.")
    # a point-mass reference (mu = 0, sigma = 0) in EDM's fid-refs format: the same loading path as the real one
    REFERENCE = Path("smoke_reference.npz")
    np.savez(REFERENCE, mu=np.zeros(2048), sigma=np.zeros((2048, 2048)))
    inception_params = fid_cli.load_inception(random_weights=True)  # prints the loud warning
else:
    CHECKPOINT, REFERENCE = download(EDM_URL), download(REF_URL)
    inception_params = fid_cli.load_inception(str(download(fid_cli.FID_WEIGHTS_URL)))

start = time.perf_counter()
model = sj.load_pretrained(CHECKPOINT)  # safe: nothing in the pickle is executed
print(f"loaded {Path(CHECKPOINT).name} in {time.perf_counter() - start:.1f} s: {model}")
print(f"{sum(p.size for p in jax.tree_util.tree_leaves(model.params)) / 1e6:.2f} M parameters, "
      f"{model.num_classes} classes, sample shape {model.sample_shape}")

reference = fid.load_reference_statistics(REFERENCE)  # EDM's mu / sigma of the CIFAR-10 training images

# %% [markdown]
# ## Sample with SciRE at 12 and 20 NFE, and compute the FID
#
# `fid_cli.sample_chunks` draws the samples in chunks (sample *i* from `fold_in(key, i)`, its class
# label from another stream of the same key) and keeps every chunk under `chunks/` so that a
# disconnected runtime resumes where it stopped; the samples are quantised to uint8 as EDM's
# `generate.py` writes PNGs. Then the pool3 features of the FID Inception and the Fréchet distance.
# The same runs from the command line: `scire-jax fid --checkpoint ... --solver ... --nfe 12
# --num 10000 --ref cifar10-32x32.npz --inception pt_inception-2015-12-05-6726825d.pth`.

# %%
results, grids = {}, {}
for nfe in NFES:
    solver = fid_cli.solver_for_nfe(SEED_SPEC, nfe, model)
    start = time.perf_counter()
    images, labels, counts = fid_cli.sample_chunks(model, solver, NUM, BATCH, seed=SEED, mesh=mesh,
                                                   out_dir=None if SMOKE else Path("chunks") / f"scire-nfe{nfe}")
    sampled = time.perf_counter() - start
    features = fid.inception_features(images, inception_params, batch_size=NUM if SMOKE else 500, mesh=mesh)
    value = fid.frechet_distance(*fid.feature_statistics(features), *reference)
    results[nfe] = {"fid": value, "nfe": sj.plan(solver, model.schedule).nfe, "seconds": sampled,
                    "samples_per_s": NUM / sampled, "chunks": counts}
    grids[nfe] = images[:64]
    print(f"{solver.label()} NFE {nfe}: {'pseudo-FID (random Inception)' if SMOKE else 'FID'} {value:.3f}, "
          f"sampling {sampled:.1f} s ({NUM / sampled:.1f} samples/s; chunks reused {counts['reused']})")

# %%
fig, axes = plt.subplots(1, len(NFES), figsize=(4.2 * len(NFES), 4.6), squeeze=False)
for axis, nfe in zip(axes[0], NFES):
    axis.imshow(image_grid(grids[nfe].astype(np.float32) / 127.5 - 1.0, columns=8, pad=1))
    axis.set_title(f"SciRE v1-2SF phi=2/3, NFE {nfe}\n{'pseudo-FID' if SMOKE else 'FID'} {results[nfe]['fid']:.2f}",
                   fontsize=9)
    axis.axis("off")
fig.suptitle("SMOKE: fixture network, random Inception (NOT FIDs)" if SMOKE else "EDM CIFAR-10 (cond, VP)")
fig.tight_layout()
plt.show()

print(f"{'NFE':>4} {'this run' + (' (pseudo-FID)' if SMOKE else f' ({NUM} samples)'):>28} {'paper (50k)':>12}")
for nfe in NFES:
    print(f"{nfe:>4} {results[nfe]['fid']:>28.3f} {PUBLISHED[nfe]:>12.2f}")
if not SMOKE:
    print("FIDs from 10k samples are biased upward relative to 50k-sample FIDs; for the paper's protocol run "
          "`scire-jax fid ... --num 50000` (or benchmarks/paper_table.py). The Inception here is pytorch-fid's "
          "port; EDM's reference statistics were computed with EDM's own TF-ported detector.")

# %%
# Checks (run in CI in smoke mode) and the mode that ran.
assert set(results) == set(NFES)
for nfe, result in results.items():
    assert np.isfinite(result["fid"]) and result["nfe"] == nfe, (nfe, result)
    assert grids[nfe].dtype == np.uint8 and grids[nfe].shape[1:] == model.sample_shape
if SMOKE:
    print("checks passed in SMOKE mode: the fixture network and RANDOM Inception weights; the numbers above are "
          "NOT FIDs")
else:
    for nfe, result in results.items():
        assert result["fid"] < 10, (nfe, result)  # a working sampler on this model is far below 10
    print(f"all checks passed: FULL mode, {NUM} samples per NFE of {Path(CHECKPOINT).name} with pytorch-fid's "
          "Inception weights")
