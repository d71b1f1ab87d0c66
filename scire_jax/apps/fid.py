"""Fréchet Inception Distance (FID) in JAX, numerically following pytorch-fid.

FID compares Gaussians fitted to the 2048-d pool3 features of the FID Inception-v3
(:class:`scire_jax.models.inception.FIDInceptionV3`) of two image sets:

    FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))

with ``mu`` the feature mean and ``S`` the unbiased feature covariance.

Pipeline::

    from scire_jax.io.convert.inception import load_inception_params
    params = load_inception_params("pt_inception-2015-12-05-6726825d.pth")
    mu, sigma = feature_statistics(inception_features(to_uint8(samples), params))   # samples in [-1, 1]
    mu_ref, sigma_ref = load_reference_statistics("fid-refs/cifar10-32x32.npz")
    fid = frechet_distance(mu, sigma, mu_ref, sigma_ref)

Image conventions (explicit, nothing is guessed from the values):

* ``uint8`` arrays are ``[0, 255]``, divided by 255 (pytorch-fid's ``ToTensor``);
* float arrays are ``[0, 1]`` unless ``value_range`` says otherwise, e.g. ``value_range=(-1, 1)``
  for diffusion samples; values are not clipped, but data far outside the declared range is
  rejected (a ``[-1, 1]`` set passed as ``[0, 1]`` raises instead of giving a wrong FID);
* NHWC with 3 channels (1-channel images are repeated to RGB, as EDM's ``fid.py`` does).

Reported FIDs (EDM, StyleGAN) are computed from PNGs, i.e. after quantising samples to 8 bits:
:func:`to_uint8` does that exactly as EDM's ``generate.py`` (``x * 127.5 + 128``, clip, truncate).
"""

from __future__ import annotations

import functools
import os
import pathlib
import warnings
import zipfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.sharding import NamedSharding, PartitionSpec

from scire_jax.models.inception import FEATURE_DIM, FIDInceptionV3

__all__ = [
    "IMAGE_EXTENSIONS",
    "feature_statistics",
    "frechet_distance",
    "image_statistics",
    "inception_features",
    "load_reference_statistics",
    "to_uint8",
]

# pytorch-fid's set of image suffixes (read by Pillow).
IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
# Float data may exceed its declared range by this fraction of the range before it is rejected
# (unclipped diffusion samples overshoot a little; a wrongly declared range overshoots by ~100%).
_RANGE_SLACK = 0.1


# -- features ---------------------------------------------------------------------------------------


def to_uint8(images, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Quantise float images to ``uint8`` like EDM's ``generate.py`` before it writes PNGs.

    ``trunc(clip(x * a + b, 0, 255))`` in float32 with ``a = 255 / (hi - lo)``, ``b = 0.5 - lo * a``:
    for ``[-1, 1]`` exactly EDM's ``(x * 127.5 + 128).clip(0, 255).to(torch.uint8)`` (round half up).
    """
    lo, hi = (float(v) for v in value_range)
    scale = np.float32(255.0 / (hi - lo))
    shift = np.float32(0.5 - lo * 255.0 / (hi - lo))
    x = np.asarray(images, np.float32) * scale + shift
    return np.clip(x, 0.0, 255.0).astype(np.uint8)  # the cast truncates, like torch's .to(uint8)


def _scaling(images: np.ndarray, value_range) -> tuple[float, float]:
    """``(offset, span)`` with ``(x - offset) / span`` in ``[0, 1]``; validates dtype and range."""
    if images.dtype == np.uint8:
        if value_range is not None and tuple(float(v) for v in value_range) != (0.0, 255.0):
            raise ValueError(f"uint8 images are always [0, 255]; got value_range={value_range}")
        return 0.0, 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    lo, hi = (0.0, 1.0) if value_range is None else (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    slack = _RANGE_SLACK * (hi - lo)
    low, high = float(images.min()), float(images.max())
    if low < lo - slack or high > hi + slack:
        raise ValueError(f"float images span [{low:.3g}, {high:.3g}], far outside value_range=({lo:g}, {hi:g}); "
                         "pass value_range=(-1, 1) for [-1, 1] data, or uint8 for [0, 255] data")
    return lo, hi - lo


@functools.lru_cache(maxsize=16)
def _extractor(precision, mesh, axis_name):
    """One jitted feature function per (precision, mesh); jax.jit caches one program per batch shape."""
    model = FIDInceptionV3(precision=precision)

    def extract(params, batch, offset, span):
        # Same arithmetic as pytorch-fid's ToTensor for uint8: x.float() / 255.
        x = (batch.astype(jnp.float32) - offset) / span
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        return model.apply({"params": params}, x)

    if mesh is None:
        return jax.jit(extract)
    replicated = NamedSharding(mesh, PartitionSpec())
    batched = NamedSharding(mesh, PartitionSpec(axis_name))
    return jax.jit(extract, in_shardings=(replicated, batched, replicated, replicated), out_shardings=batched)


def inception_features(images, params, batch_size: int = 250, mesh: jax.sharding.Mesh | None = None, *,
                       value_range: tuple[float, float] | None = None, axis_name: str | None = None,
                       precision: str | None = "highest") -> np.ndarray:
    """Pool3 features of NHWC images, in batches.

    Every batch has the same shape (the last one is padded with zeros and its padding dropped), so
    the network is compiled once per image size and dtype; the next batch is dispatched before the
    previous one is copied to the host.

    Args:
      images: ``(N, H, W, C)`` array, ``C`` in {1, 3}: ``uint8`` in ``[0, 255]`` or float in
        ``value_range``.  Any size; resized to 299x299 inside the network.
      params: :class:`~scire_jax.models.inception.FIDInceptionV3` parameters (e.g. from
        :func:`scire_jax.io.convert.inception.load_inception_params`).
      batch_size: images per compiled call (``min(batch_size, N)``, rounded up to a multiple of the
        mesh size).
      mesh: optional device mesh; batches are sharded over its ``axis_name`` axis (default: its
        first axis) and the parameters replicated.  Single-process meshes: the features of every
        batch are gathered to this host.
      value_range: range of float images (default ``(0, 1)``); must be ``None`` or ``(0, 255)`` for uint8.
      axis_name: mesh axis to shard the batch over.
      precision: conv/matmul precision (``"highest"``: float32 even where TF32 is the default).

    Returns:
      ``(N, 2048)`` float32 features.

    Raises:
      ValueError: on a wrong shape, dtype, range or batch size.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be NHWC with 1 or 3 channels, got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("no images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    offset, span = _scaling(images, value_range)
    count = images.shape[0]
    batch = min(batch_size, count)
    if mesh is None:
        params = jax.device_put(params)

        def put_local(chunk):
            return jnp.asarray(chunk)

        put = put_local
    else:
        axis_name = mesh.axis_names[0] if axis_name is None else axis_name
        if axis_name not in mesh.axis_names:
            raise ValueError(f"axis_name={axis_name!r} is not an axis of the mesh {mesh.axis_names}")
        devices = mesh.shape[axis_name]
        batch = -(-batch // devices) * devices  # every device gets the same number of images
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        batch_sharding = NamedSharding(mesh, PartitionSpec(axis_name))

        def put_sharded(chunk):
            return jax.device_put(chunk, batch_sharding)

        put = put_sharded

    fn = _extractor(precision, mesh, axis_name if mesh is not None else None)
    offset, span = np.float32(offset), np.float32(span)
    out = np.empty((count, FEATURE_DIM), np.float32)
    pending = None
    for start in range(0, count, batch):
        chunk = images[start:start + batch]
        valid = chunk.shape[0]
        if valid < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - valid,) + chunk.shape[1:], chunk.dtype)])
        result = fn(params, put(chunk), offset, span)
        if pending is not None:  # copy the previous batch while this one runs
            out[pending[0]:pending[0] + pending[1]] = np.asarray(pending[2])[:pending[1]]
        pending = (start, valid, result)
    assert pending is not None  # count >= 1 was checked above
    out[pending[0]:pending[0] + pending[1]] = np.asarray(pending[2])[:pending[1]]
    return out


# -- statistics and distance ------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of ``(N, D)`` features, in float64.

    Returns:
      ``(mu, sigma)``: ``mu = mean(features, 0)``, ``sigma = numpy.cov(features, rowvar=False)``
      (divides by ``N - 1``), as pytorch-fid's ``calculate_activation_statistics``.
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its singular/ill-conditioned warning (pytorch-fid passes ``disp=False``).

    ``disp`` is deprecated since SciPy 1.16; the root is the same either way, and the fallback
    below checks the result itself.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return np.asarray(scipy.linalg.sqrtm(matrix))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance of ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``, as pytorch-fid computes it.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``, with the square root
    from ``scipy.linalg.sqrtm``.  If that root is not finite (near-singular product), ``eps`` is
    added to both diagonals and the root recomputed (with a warning).  A complex root is accepted
    if its diagonal's imaginary parts are within ``1e-3`` of zero (then the real part is used).

    Args:
      mu1, mu2: ``(D,)`` means; sigma1, sigma2: ``(D, D)`` covariances.
      eps: diagonal offset of the fallback.

    Returns:
      The distance as a Python float (may be slightly negative from rounding when the sets coincide).

    Raises:
      ValueError: on shape mismatches, or a significant imaginary component.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"covariances {sigma1.shape}, {sigma2.shape} do not match means of shape {mu1.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular product of covariances; adding {eps} to their diagonals", RuntimeWarning,
                      stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Rounding leaves a small imaginary part; a large one means the statistics are broken.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def image_statistics(images, params, batch_size: int = 250, mesh: jax.sharding.Mesh | None = None, *,
                     value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``feature_statistics(inception_features(images, params, ...))``: float64 ``(mu, sigma)``."""
    return feature_statistics(inception_features(images, params, batch_size, mesh, value_range=value_range))


# -- reference statistics ---------------------------------------------------------------------------


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    # Recursive, because EDM's generate.py --subdirs writes 000000/*.png, 001000/*.png, ...
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_images(files: Sequence[pathlib.Path]) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - Pillow is a test/app dependency
        raise ImportError("reading image folders needs Pillow (pip install pillow)") from error
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                arrays.append(np.asarray(image.convert("RGB"), np.uint8))
        except Exception as error:  # any decoder error (truncated, not an image) is a bad file
            raise ValueError(f"cannot read image {str(file)!r}: {error}") from error
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(f"image {str(file)!r} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]}, but "
                             f"{str(files[0])!r} is {arrays[0].shape[1]}x{arrays[0].shape[0]}; all must match")
    return np.stack(arrays)


def _folder_statistics(folder: pathlib.Path, params, batch_size, mesh):
    files = _image_files(folder)
    if len(files) < 2:
        raise ValueError(f"folder {str(folder)!r} holds {len(files)} images ({', '.join(IMAGE_EXTENSIONS)}); "
                         "need at least 2")
    # Read a few batches at a time so that large sets never sit in memory as pixels.
    chunk = 8 * batch_size
    features, first_shape = [], None
    for start in range(0, len(files), chunk):
        images = _read_images(files[start:start + chunk])
        first_shape = images.shape[1:] if first_shape is None else first_shape
        if images.shape[1:] != first_shape:
            raise ValueError(f"images in {str(folder)!r} differ in size: {first_shape} and {images.shape[1:]}")
        features.append(inception_features(images, params, batch_size, mesh))
    return feature_statistics(np.concatenate(features))


def _checked_statistics(mu, sigma, where: str):
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != mu.shape * 2:
        raise ValueError(f"{where}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{where}: mu or sigma contains NaN or infinite values")
    return mu, sigma


def load_reference_statistics(path: str | os.PathLike, params=None, *, batch_size: int = 250,
                              mesh: jax.sharding.Mesh | None = None,
                              value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference ``(mu, sigma)`` (float64) from statistics, an image folder or an ``.npz`` of images.

    Args:
      path: one of
        * an ``.npz`` with keys ``mu`` and ``sigma`` (EDM's ``fid-refs/*.npz``, pytorch-fid's
          ``--save-stats`` output): returned as stored;
        * an ``.npz`` of images under ``arr_0`` or ``images`` (NHWC, e.g. guided-diffusion's
          sample batches): Inception statistics of those images;
        * a folder of images (searched recursively; suffixes :data:`IMAGE_EXTENSIONS`, read as RGB
          with Pillow, all the same size): Inception statistics of the images, in sorted path order.
      params: Inception parameters; needed unless ``path`` holds ``mu``/``sigma``.
      batch_size, mesh: as :func:`inception_features`.
      value_range: range of float images in an ``.npz`` (uint8 images are ``[0, 255]``).

    Returns:
      ``(mu, sigma)`` with shapes ``(D,)`` and ``(D, D)``.

    Raises:
      ValueError: missing path, unreadable file, no/unknown keys, bad shapes, non-finite values,
        unreadable or differently sized images, fewer than 2 images, or ``params`` missing.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"reference {str(path)!r} does not exist")

    def need_params(what):
        if params is None:
            raise ValueError(f"{what} needs Inception params to compute statistics "
                             "(scire_jax.io.convert.inception.load_inception_params)")

    if path.is_dir():
        need_params(f"image folder {str(path)!r}")
        return _folder_statistics(path, params, batch_size, mesh)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"reference {str(path)!r} must be an .npz file or a folder of images")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.files)
            if "mu" in keys and "sigma" in keys:
                return _checked_statistics(data["mu"], data["sigma"], f"statistics file {str(path)!r}")
            key = next((k for k in ("arr_0", "images") if k in keys), None)
            images = None if key is None else data[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"cannot read .npz file {str(path)!r}: {error}") from error
    if images is None:
        raise ValueError(f".npz file {str(path)!r} has keys {keys}; expected 'mu' and 'sigma' (statistics) "
                         "or 'arr_0' / 'images' (NHWC images)")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        hint = " (NCHW? transpose to NHWC)" if images.ndim == 4 and images.shape[1] in (1, 3) else ""
        raise ValueError(f"images in {str(path)!r}[{key!r}] must be NHWC with 1 or 3 channels, "
                         f"got shape {images.shape}{hint}")
    if images.shape[0] < 2:
        raise ValueError(f"{str(path)!r}[{key!r}] holds {images.shape[0]} images; need at least 2")
    need_params(f".npz of images {str(path)!r}")
    return image_statistics(images, params, batch_size, mesh, value_range=value_range)
