"""Sample-quality metrics for the digit models: a small in-repo classifier and a "classifier FD".

There are no Inception weights in this repository, so the Fréchet *Inception* distance (FID) cannot
be computed.  Its stand-in here is the **classifier FD**: the Fréchet distance between Gaussians
fitted to the penultimate-layer features (64-d) of :class:`DigitClassifier` — a tiny CNN trained
in-repo on the same digits — for the samples and for the real data.  Numbers are only comparable
with each other (same classifier, same reference statistics, same sample count), never with FIDs.

Shipped assets (``scire_jax/assets/``):

* ``classifier_mnist16/``: orbax checkpoint of the classifier for 16x16 MNIST (see
  :func:`scire_jax.apps.data.load`), trained by ``benchmarks/train_embedded.py classifier``;
* ``classifier_mnist16_stats.npz``: mean ``mu`` and covariance ``sigma`` of the classifier features
  of all 5,000 real images, plus reference scales (means over 10 random splits, with ``*_std``):
  ``fd_real_halves`` (FD between two random halves of 2,500 real images each), ``fd_real_500`` /
  ``fd_real_1000`` (FD of 500 / 1,000 real images against the stats of the other 4,500 / 4,000) and ``fd_noise`` (1,000 Gaussian-noise images against the full stats).

Metrics of a batch of samples (:func:`sample_metrics`):

* ``confident``: fraction of samples whose top softmax probability exceeds 0.9;
* ``class_entropy``: entropy (nats) of the histogram of predicted classes (``ln 10 = 2.303`` for a
  perfectly balanced set; low values flag mode collapse);
* ``fd``: the classifier FD against the shipped reference statistics.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DigitClassifier",
    "ASSETS",
    "classifier_features",
    "feature_stats",
    "frechet_distance",
    "load_classifier",
    "load_reference_stats",
    "sample_metrics",
    "train_classifier",
    "build_classifier_assets",
]

ASSETS = str(importlib.resources.files("scire_jax").joinpath("assets"))
CONFIDENCE = 0.9


def _classifier_cls():
    import flax.linen as nn

    class DigitClassifier(nn.Module):
        """conv32-conv32-pool-conv64-pool-dense(features)-dense(10) on NHWC images in ``[-1, 1]``.

        ``__call__`` returns ``(logits, features)``; ``features`` (post-ReLU penultimate layer) are
        what the classifier FD compares.
        """

        features: int = 64
        num_classes: int = 10
        dropout: float = 0.3

        @nn.compact
        def __call__(self, x, train: bool = False):
            h = nn.relu(nn.Conv(32, (3, 3))(x))
            h = nn.relu(nn.Conv(32, (3, 3))(h))
            h = nn.avg_pool(h, (2, 2), (2, 2))
            h = nn.relu(nn.Conv(64, (3, 3))(h))
            h = nn.avg_pool(h, (2, 2), (2, 2))
            h = h.reshape(h.shape[0], -1)
            features = nn.relu(nn.Dense(self.features)(h))
            dropped = nn.Dropout(self.dropout, deterministic=not train)(features)
            return nn.Dense(self.num_classes)(dropped), features

    return DigitClassifier


DigitClassifier = _classifier_cls()


# ---------------------------------------------------------------------------------------------
# Training (used once to build the shipped assets)
# ---------------------------------------------------------------------------------------------
def _shift_augment(key, x, max_shift: int = 1):
    """Random integer translations by up to ``max_shift`` pixels (background-padded)."""
    n, h, w, _ = x.shape
    pad = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), constant_values=-1.0)
    shifts = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)
    return jax.vmap(lambda img, s: jax.lax.dynamic_slice(img, (s[0], s[1], 0), (h, w, img.shape[-1])))(pad, shifts)


def train_classifier(
    dataset: str = "mnist",
    image_size: Optional[int] = 16,
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    holdout: float = 0.2,
    verbose: bool = True,
) -> Tuple[Any, Dict[str, Any]]:
    """Train :class:`DigitClassifier` on the train split; return ``(params, info)``.

    ``info`` holds the config and the held-out accuracy (split: :func:`scire_jax.apps.data.split` with
    ``holdout`` and ``seed``).
    """
    import optax

    from scire_jax.apps import data as data_lib

    images, labels = data_lib.load(dataset, image_size)
    x_train, y_train, x_test, y_test = data_lib.split(images, labels, holdout=holdout, seed=seed)
    model = DigitClassifier()
    key = jax.random.PRNGKey(seed)
    params = model.init(jax.random.fold_in(key, 0), jnp.zeros((1,) + images.shape[1:]))["params"]
    steps_per_epoch = len(x_train) // batch_size
    total = epochs * steps_per_epoch
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, total // 20), total, learning_rate * 0.02)
    tx = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = tx.init(params)
    data = jnp.asarray(x_train)
    targets = jnp.asarray(y_train)

    @jax.jit
    def step(params, opt_state, idx, step_key):
        k_aug, k_drop = jax.random.split(step_key)
        x = _shift_augment(k_aug, data[idx])

        def loss_fn(p):
            logits, _ = model.apply({"params": p}, x, train=True, rngs={"dropout": k_drop})
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    n = 0
    for epoch in range(epochs):
        order = np.random.default_rng([seed, 11, epoch]).permutation(len(x_train))
        for i in range(steps_per_epoch):
            idx = jnp.asarray(order[i * batch_size:(i + 1) * batch_size])
            params, opt_state, loss = step(params, opt_state, idx, jax.random.fold_in(key, 1000 + n))
            n += 1
        if verbose and (epoch % 5 == 4 or epoch == epochs - 1):
            acc = accuracy(params, x_test, y_test)
            print(f"classifier epoch {epoch + 1}/{epochs}  loss {float(loss):.4f}  held-out accuracy {acc:.4f}", flush=True)
    info = {
        "dataset": dataset,
        "image_size": image_size,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "holdout": holdout,
        "heldout_accuracy": accuracy(params, x_test, y_test),
        "features": DigitClassifier().features,
    }
    return params, info


@jax.jit
def _apply(params, x):
    logits, features = DigitClassifier().apply({"params": params}, x)
    return jax.nn.softmax(logits), features


def _batched(params, x, batch: int = 500):
    probs, feats = [], []
    x = np.asarray(x, np.float32)
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        if len(chunk) < batch and len(x) > batch:  # pad to a fixed shape: one compilation
            padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], np.float32)])
            p, f = _apply(params, jnp.asarray(padded))
            p, f = p[:len(chunk)], f[:len(chunk)]
        else:
            p, f = _apply(params, jnp.asarray(chunk))
        probs.append(np.asarray(p, np.float64))
        feats.append(np.asarray(f, np.float64))
    return np.concatenate(probs), np.concatenate(feats)


def accuracy(params, images, labels) -> float:
    probs, _ = _batched(params, images)
    return float(np.mean(probs.argmax(-1) == np.asarray(labels)))


# ---------------------------------------------------------------------------------------------
# Features, statistics, Fréchet distance
# ---------------------------------------------------------------------------------------------
def classifier_features(images, params=None) -> Tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, 10), features (N, 64))`` of NHWC images in ``[-1, 1]`` (float64)."""
    if params is None:
        params = load_classifier()[0]
    return _batched(params, images)


def feature_stats(features) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``(N, D)`` features."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm_psd(matrix):
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` (symmetric-eigendecomposition form)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    values = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_sqrt = np.sum(np.sqrt(np.clip(values, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


# ---------------------------------------------------------------------------------------------
# Shipped assets
# ---------------------------------------------------------------------------------------------
def _asset_paths(name: str) -> Tuple[str, str]:
    return os.path.join(ASSETS, f"classifier_{name}"), os.path.join(ASSETS, f"classifier_{name}_stats.npz")


@functools.lru_cache(maxsize=4)
def load_classifier(name: str = "mnist16"):
    """``(params, info)`` of the shipped classifier ``name`` (``"mnist16"``)."""
    from scire_jax.io import checkpoints

    path, _ = _asset_paths(name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no shipped classifier {name!r} at {path}")
    params, config, extra = checkpoints.restore(path)
    return params, dict(config, **(extra or {}))


@functools.lru_cache(maxsize=4)
def load_reference_stats(name: str = "mnist16") -> Dict[str, np.ndarray]:
    """The shipped reference statistics (``mu``, ``sigma``, reference FDs) of classifier ``name``."""
    _, path = _asset_paths(name)
    with np.load(path) as stats:
        return {key: stats[key] for key in stats.files}


def sample_metrics(samples, name: str = "mnist16") -> Dict[str, float]:
    """Classifier metrics of NHWC samples in ``[-1, 1]`` (values outside are clipped).

    Returns ``{"confident", "class_entropy", "fd", "n"}``; see the module docstring.  The FD is
    biased upwards for small ``n``: compare with ``fd_real_500`` / ``fd_real_1000`` of the reference
    stats at ``n = 500`` / ``1000``.
    """
    params, _ = load_classifier(name)
    samples = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    probs, feats = _batched(params, samples)
    ref = load_reference_stats(name)
    histogram = np.bincount(probs.argmax(-1), minlength=probs.shape[-1]) / len(probs)
    nonzero = histogram[histogram > 0]
    mu, sigma = feature_stats(feats)
    return {
        "confident": float(np.mean(probs.max(-1) > CONFIDENCE)),
        "class_entropy": float(-np.sum(nonzero * np.log(nonzero))),
        "fd": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
        "n": int(len(samples)),
    }


def reference_stats(params, images, seed: int = 0, repeats: int = 10) -> Dict[str, Any]:
    """Reference feature statistics of real ``images`` and the FD scales of real data.

    ``mu``/``sigma``: all images.  FD scales, each the mean (and ``*_std`` the standard deviation)
    over ``repeats`` random splits, because a single split varies by about a factor 3:
    ``fd_real_halves``: two random halves against each other; ``fd_real_{500,1000}``: that many
    random real images against the stats of the remaining ones (the procedure used for samples, so
    the natural yardstick at that sample count).  ``fd_noise``: 1,000 clipped Gaussian-noise
    images against ``mu``/``sigma``.
    """
    _, feats = _batched(params, images)
    mu, sigma = feature_stats(feats)
    rng = np.random.default_rng([seed, 23])
    half = len(images) // 2
    scales: Dict[str, list] = {"fd_real_halves": [], "fd_real_500": [], "fd_real_1000": []}
    for _ in range(repeats):
        order = rng.permutation(len(images))
        scales["fd_real_halves"].append(
            frechet_distance(*feature_stats(feats[order[:half]]), *feature_stats(feats[order[half:]])))
        for n in (500, 1000):
            scales[f"fd_real_{n}"].append(
                frechet_distance(*feature_stats(feats[order[:n]]), *feature_stats(feats[order[n:]])))
    out: Dict[str, Any] = {"mu": mu, "sigma": sigma, "num_reference": len(images), "repeats": repeats}
    for key, values in scales.items():
        out[key] = float(np.mean(values))
        out[key + "_std"] = float(np.std(values))
    noise = rng.standard_normal((1000,) + images.shape[1:]).clip(-1, 1).astype(np.float32)
    _, noise_feats = _batched(params, noise)
    out["fd_noise"] = frechet_distance(*feature_stats(noise_feats), mu, sigma)
    return out


def build_classifier_assets(name: str = "mnist16", dataset: str = "mnist", image_size: int = 16, seed: int = 0,
                            epochs: int = 20, out_dir: str = ASSETS) -> Dict[str, Any]:
    """Train the classifier and write its checkpoint and reference statistics into ``out_dir``."""
    from scire_jax.apps import data as data_lib
    from scire_jax.io import checkpoints

    params, info = train_classifier(dataset, image_size, seed=seed, epochs=epochs)
    images, _ = data_lib.load(dataset, image_size)
    stats = reference_stats(params, images, seed=seed)
    info.update({key: float(value) for key, value in stats.items() if key.startswith("fd_")})
    ckpt_path = os.path.join(out_dir, f"classifier_{name}")
    config = {"model": "DigitClassifier", "features": info["features"], "dataset": dataset, "image_size": image_size}
    checkpoints.save(ckpt_path, jax.device_get(params), config, info, overwrite=True)
    np.savez(os.path.join(out_dir, f"classifier_{name}_stats.npz"), heldout_accuracy=info["heldout_accuracy"], **stats)
    load_classifier.cache_clear()
    load_reference_stats.cache_clear()
    return info
