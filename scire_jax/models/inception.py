"""The FID Inception-v3 network (pool3 features) in Flax linen, NHWC.

This is the network of pytorch-fid's ``InceptionV3(use_fid_inception=True)`` — torchvision's
``Inception3`` with the TensorFlow-FID patches of ``inception-2015-12-05`` — up to the final average
pool, returning the 2048-d "pool3" features that FID statistics are computed from:

* ``Mixed_5b/5c/5d`` (FIDInceptionA), ``Mixed_6b..6e`` (FIDInceptionC) and ``Mixed_7b``
  (FIDInceptionE_1) average-pool their pool branch with ``count_include_pad=False`` (TensorFlow's
  average pool ignores the zero padding);
* ``Mixed_7c`` (FIDInceptionE_2) max-pools its pool branch instead (a quirk of the TF graph);
* every convolution is ``conv (no bias) -> BatchNorm(eps=1e-3, running statistics) -> ReLU``.

Input preprocessing matches pytorch-fid: images in ``[0, 1]`` are resized to 299x299 with bilinear
interpolation (PyTorch ``align_corners=False``, no antialiasing) and mapped to ``[-1, 1]``.

Parameters live in one ``"params"`` collection (the network is inference only): each ``bn`` holds
``scale``, ``bias``, ``mean`` and ``var``.  Module names follow the PyTorch state dict
(``Mixed_6b/branch7x7_2/conv/kernel`` <-> ``Mixed_6b.branch7x7_2.conv.weight``);
:mod:`scire_jax.io.convert.inception` converts the released pytorch-fid weights.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "BasicConv2d",
    "FIDInceptionV3",
    "FrozenBatchNorm",
    "abstract_params",
    "init_params",
    "resize_bilinear",
]

FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3  # torchvision BasicConv2d: BatchNorm2d(eps=0.001)

Precision = None | str | jax.lax.Precision
_Pair = int | tuple[int, int]


def _pair(value: _Pair) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (first, second)


# -- resizing ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` interpolation weights of PyTorch's bilinear ``align_corners=False``.

    Source coordinate of output pixel ``i``: ``max(0, (i + 0.5) * in / out - 0.5)``; its two
    neighbours ``floor`` and ``min(floor + 1, in - 1)`` are weighted linearly.  Computed in float32
    with PyTorch's order of operations: its coordinates are float32, and their rounding (~1e-6 at
    index 300) shows up in the output at the 1e-5 level, which the network then amplifies.  No
    antialiasing (``F.interpolate``'s default), unlike ``jax.image.resize``, which antialiases when
    shrinking.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    source = np.maximum(scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5), f32(0.0))
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = np.clip(source - low.astype(f32), f32(0.0), f32(1.0))
    matrix = np.zeros((out_size, in_size), f32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), f32(1.0) - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def resize_bilinear(images: jax.Array, size: tuple[int, int], precision: Precision = "highest") -> jax.Array:
    """Resize NHWC ``images`` to ``size = (height, width)`` like ``F.interpolate(mode="bilinear")``.

    Implemented as two small matrix products (rows, then columns) with weights built on the host,
    so it is exact up to float32 rounding and cheap for any static input size.
    """
    height, width = images.shape[1], images.shape[2]
    if (height, width) == tuple(size):
        return images
    rows = jnp.asarray(_bilinear_matrix(height, size[0]))
    cols = jnp.asarray(_bilinear_matrix(width, size[1]))
    out = jnp.einsum("oh,nhwc->nowc", rows, images, precision=precision)
    return jnp.einsum("pw,nowc->nopc", cols, out, precision=precision)


# -- layers -----------------------------------------------------------------------------------------


class FrozenBatchNorm(nn.Module):
    """Inference-mode BatchNorm: ``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis.

    The running statistics are ordinary parameters (``mean``, ``var``) so that the whole network is
    one ``"params"`` tree; nothing is ever updated.
    """

    epsilon: float = BN_EPS

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (features,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (features,), jnp.float32)
        # Same association as PyTorch's eval-mode batch_norm: scale folded into 1/sqrt(var + eps).
        multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
        return (x - mean) * multiplier + bias


class BasicConv2d(nn.Module):
    """torchvision's ``BasicConv2d``: conv without bias, BatchNorm (eps 1e-3), ReLU."""

    features: int
    kernel_size: _Pair
    strides: _Pair = 1
    padding: _Pair = 0
    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x):
        pad_h, pad_w = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.strides),
                    padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False, precision=self.precision,
                    name="conv")(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_3x3(x):
    # TF-FID patch: the average ignores the zero padding (count_include_pad=False).
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x):
    # PyTorch MaxPool2d(3, stride=2), floor mode: no padding.
    return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d (FIDInceptionA): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1, concatenated."""

    pool_features: int
    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch1x1 = conv(64, 1, name="branch1x1")(x)
        branch5x5 = conv(48, 1, name="branch5x5_1")(x)
        branch5x5 = conv(64, 5, padding=2, name="branch5x5_2")(branch5x5)
        dbl = conv(64, 1, name="branch3x3dbl_1")(x)
        dbl = conv(96, 3, padding=1, name="branch3x3dbl_2")(dbl)
        dbl = conv(96, 3, padding=1, name="branch3x3dbl_3")(dbl)
        pool = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([branch1x1, branch5x5, dbl, pool], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch3x3 = conv(384, 3, strides=2, name="branch3x3")(x)
        dbl = conv(64, 1, name="branch3x3dbl_1")(x)
        dbl = conv(96, 3, padding=1, name="branch3x3dbl_2")(dbl)
        dbl = conv(96, 3, strides=2, name="branch3x3dbl_3")(dbl)
        return jnp.concatenate([branch3x3, dbl, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e (FIDInceptionC): factorised 7x7 branches and an avgpool branch."""

    channels_7x7: int
    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        c7 = self.channels_7x7
        branch1x1 = conv(192, 1, name="branch1x1")(x)
        b7 = conv(c7, 1, name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        dbl = conv(c7, 1, name="branch7x7dbl_1")(x)
        dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
        dbl = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
        dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
        dbl = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
        pool = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([branch1x1, b7, dbl, pool], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(192, 1, name="branch3x3_1")(x)
        b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
        b7 = conv(192, 1, name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (FIDInceptionE_1, ``pool="avg"``) and Mixed_7c (FIDInceptionE_2, ``pool="max"``)."""

    pool: str = "avg"
    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x):
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch1x1 = conv(320, 1, name="branch1x1")(x)
        b3 = conv(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        dbl = conv(448, 1, name="branch3x3dbl_1")(x)
        dbl = conv(384, 3, padding=1, name="branch3x3dbl_2")(dbl)
        dbl = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
                               conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl)], axis=-1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            # FIDInceptionE_2: max pool 3x3/1, padding 1 (padded with -inf, as PyTorch).
            pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
        pool = conv(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([branch1x1, b3, dbl, pool], axis=-1)


class FIDInceptionV3(nn.Module):
    """FID Inception-v3 up to pool3: NHWC images in ``[0, 1]`` -> ``(N, 2048)`` features.

    Attributes:
      resize_input: resize to 299x299 (bilinear, PyTorch ``align_corners=False``) first.
      normalize_input: map ``[0, 1]`` to ``[-1, 1]`` (``2 x - 1``), the range the network expects.
      precision: matmul/conv precision; ``"highest"`` keeps float32 on accelerators whose default
        is TF32/bf16 passes, so features do not depend on the hardware's default.

    ``__call__(x)`` takes float images ``(N, H, W, 3)`` and returns float32 features ``(N, 2048)``
    (the post-ReLU ``Mixed_7c`` output averaged over space).  With ``resize_input=False`` the input
    must be at least 75x75.
    """

    resize_input: bool = True
    normalize_input: bool = True
    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected NHWC images with 3 channels, got shape {x.shape}")
        x = x.astype(jnp.float32)
        if self.resize_input:
            x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE), self.precision)
        if self.normalize_input:
            x = 2.0 * x - 1.0
        conv = functools.partial(BasicConv2d, precision=self.precision)
        # block 0: 299 -> 149 -> 147 -> 147 -> maxpool 73
        x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
        x = conv(32, 3, name="Conv2d_2a_3x3")(x)
        x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride2(x)
        # block 1: 73 -> 71 -> maxpool 35
        x = conv(80, 1, name="Conv2d_3b_1x1")(x)
        x = conv(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride2(x)
        # block 2: 35x35x192 -> 17x17x768
        x = InceptionA(32, self.precision, name="Mixed_5b")(x)
        x = InceptionA(64, self.precision, name="Mixed_5c")(x)
        x = InceptionA(64, self.precision, name="Mixed_5d")(x)
        x = InceptionB(self.precision, name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, self.precision, name=name)(x)
        # block 3: 17x17x768 -> 8x8x2048 -> global average pool
        x = InceptionD(self.precision, name="Mixed_7a")(x)
        x = InceptionE("avg", self.precision, name="Mixed_7b")(x)
        x = InceptionE("max", self.precision, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def abstract_params(model: FIDInceptionV3 | None = None) -> Any:
    """Shapes/dtypes of the parameter tree (``jax.ShapeDtypeStruct`` leaves), computing nothing."""
    model = FIDInceptionV3() if model is None else model
    dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)["params"]


def init_params(seed: int = 0, model: FIDInceptionV3 | None = None) -> Any:
    """Random parameters for tests and benchmarks (no pretrained meaning).

    Kernels are He-normal (``std = sqrt(2 / fan_in)``), BatchNorm is the identity (scale 1, bias 0,
    mean 0, var 1), so activations stay O(1) through the network.  Drawn with numpy on the host:
    no forward pass is traced or compiled.

    Returns:
      A nested dict of float32 numpy arrays with the structure of :func:`abstract_params`.
    """
    rng = np.random.default_rng(seed)
    defaults = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0}

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return np.full(leaf.shape, defaults[name], np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(model))
