"""Flax (linen) port of diffusers' ``AutoencoderKL`` (the Stable Diffusion VAE), NHWC.

``Encoder``: conv_in, ``DownEncoderBlock2D`` blocks (resnets without time embedding, stride-2
convolution with diffusers' asymmetric ``(0, 1)`` padding), a mid block (resnet, single-head
spatial self-attention, resnet), GroupNorm + SiLU, conv_out to ``2 * latent_channels`` (mean and
log-variance), then the 1x1 ``quant_conv``.  ``Decoder``: ``post_quant_conv``, conv_in, mid block,
``UpDecoderBlock2D`` blocks (``layers_per_block + 1`` resnets, nearest x2 upsampling + conv),
GroupNorm + SiLU, conv_out.  All norms use eps 1e-6, as diffusers.

Latent scaling is the caller's business, as in diffusers' pipelines: the UNet works on
``scaling_factor * (encode(x).mean - shift_factor)``; decode ``latents / scaling_factor + shift_factor``
(``shift_factor`` is ``None`` / 0 for Stable Diffusion 1.x / 2.x / SDXL).

Usage::

    vae = AutoencoderKL.from_config(config)
    posterior = vae.apply(params, images_nhwc, method=AutoencoderKL.encode)    # DiagonalGaussian
    images = vae.apply(params, latents_nhwc, method=AutoencoderKL.decode)      # about [-1, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scire_jax.models.unet2d import _conv, _Downsample, _GroupNorm, _MidBlock, _ResnetBlock, _Upsample

__all__ = ["AutoencoderKL", "DiagonalGaussian"]

Dtype = Any
_EPS = 1e-6


class DiagonalGaussian(NamedTuple):
    """The encoder's posterior ``N(mean, exp(logvar))``; ``logvar`` is clipped to ``[-30, 20]`` as diffusers."""

    mean: jax.Array
    logvar: jax.Array

    @property
    def std(self):
        return jnp.exp(0.5 * self.logvar)

    def mode(self):
        return self.mean

    def sample(self, rng):
        noise = jax.random.normal(rng, self.mean.shape, jnp.float32).astype(self.mean.dtype)
        return self.mean + self.std * noise


class _Encoder(nn.Module):
    block_out_channels: Tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    groups: int
    mid_attention: bool
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _conv(self.block_out_channels[0], 3, name="conv_in", **kw)(x)
        last = len(self.block_out_channels) - 1
        for i, channels in enumerate(self.block_out_channels):
            h = _DownEncoderBlock(channels, self.layers_per_block, i < last, self.groups, name=f"down_blocks_{i}",
                                  **kw)(h)
        h = _MidBlock(self.groups, _EPS, None, self.groups, self.mid_attention, 1.0, name="mid_block", **kw)(h, None)
        h = _GroupNorm(self.groups, _EPS, name="conv_norm_out", **kw)(h)
        return _conv(2 * self.latent_channels, 3, name="conv_out", **kw)(nn.silu(h))


class _DownEncoderBlock(nn.Module):
    out_channels: int
    num_layers: int
    add_downsample: bool
    groups: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(self.num_layers):
            h = _ResnetBlock(self.out_channels, self.groups, _EPS, name=f"resnets_{j}", **kw)(h, None)
        if self.add_downsample:
            h = _Downsample(self.out_channels, 0, name="downsamplers_0", **kw)(h)
        return h


class _UpDecoderBlock(nn.Module):
    out_channels: int
    num_layers: int
    add_upsample: bool
    groups: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(self.num_layers):
            h = _ResnetBlock(self.out_channels, self.groups, _EPS, name=f"resnets_{j}", **kw)(h, None)
        if self.add_upsample:
            h = _Upsample(self.out_channels, name="upsamplers_0", **kw)(h)
        return h


class _Decoder(nn.Module):
    block_out_channels: Tuple[int, ...]
    layers_per_block: int
    out_channels: int
    groups: int
    mid_attention: bool
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _conv(self.block_out_channels[-1], 3, name="conv_in", **kw)(z)
        h = _MidBlock(self.groups, _EPS, None, self.groups, self.mid_attention, 1.0, name="mid_block", **kw)(h, None)
        last = len(self.block_out_channels) - 1
        for i, channels in enumerate(self.block_out_channels[::-1]):
            h = _UpDecoderBlock(channels, self.layers_per_block + 1, i < last, self.groups, name=f"up_blocks_{i}",
                                **kw)(h)
        h = _GroupNorm(self.groups, _EPS, name="conv_norm_out", **kw)(h)
        return _conv(self.out_channels, 3, name="conv_out", **kw)(nn.silu(h))


def _int(value, key, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"VAE config[{key!r}]={value!r} is not supported: expected an integer >= {minimum}")
    return int(value)


class AutoencoderKL(nn.Module):
    """diffusers ``AutoencoderKL`` (NHWC); :meth:`encode` -> :class:`DiagonalGaussian`, :meth:`decode` -> image.

    ``__call__(x)`` reconstructs ``x`` through the posterior mean (it exists so that ``init`` creates
    every parameter).  Build with :meth:`from_config` from a diffusers ``vae/config.json`` dict.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: Optional[int] = None
    scaling_factor: float = 0.18215
    shift_factor: Optional[float] = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any], dtype: Optional[Dtype] = None,
                    param_dtype: Dtype = jnp.float32) -> AutoencoderKL:
        """Build from a diffusers ``AutoencoderKL`` config dict (unknown keys are ignored).

        Raises:
          ValueError: naming the key, for block types other than ``DownEncoderBlock2D`` /
            ``UpDecoderBlock2D``, activations other than SiLU, latent mean/std normalisation, or
            inconsistent channel / group counts.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"VAE config must be a dict, got {type(config).__name__}")
        cfg = dict(config)
        class_name = cfg.get("_class_name")
        if class_name is not None and class_name != "AutoencoderKL":
            raise ValueError(f"VAE config['_class_name']={class_name!r} is not supported: expected 'AutoencoderKL'")
        block_out = cfg.get("block_out_channels", (64,))
        if isinstance(block_out, (str, bytes)) or not isinstance(block_out, Sequence) or not block_out:
            raise ValueError(f"VAE config['block_out_channels']={block_out!r} is not supported: expected a list")
        block_out = tuple(_int(c, "block_out_channels") for c in block_out)
        for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            types = cfg.get(key, (allowed,) * len(block_out))
            if isinstance(types, str) or len(types) != len(block_out) or any(t != allowed for t in types):
                raise ValueError(f"VAE config[{key!r}]={types!r} is not supported: "
                                 f"expected {len(block_out)} x {allowed!r}")
        if cfg.get("act_fn", "silu") not in ("silu", "swish"):
            raise ValueError(f"VAE config['act_fn']={cfg['act_fn']!r} is not supported; allowed: ['silu']")
        for key in ("latents_mean", "latents_std"):
            if cfg.get(key) is not None:
                raise ValueError(f"VAE config[{key!r}] is not supported (per-channel latent normalisation)")
        groups = _int(cfg.get("norm_num_groups", 32), "norm_num_groups")
        for c in block_out:
            if c % groups:
                raise ValueError(f"VAE config['norm_num_groups']={groups} does not divide block_out_channels "
                                 f"{list(block_out)}")
        sample_size = cfg.get("sample_size")
        if isinstance(sample_size, (list, tuple)):
            sample_size = sample_size[0]
        scaling = cfg.get("scaling_factor", 0.18215)
        if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not scaling > 0:
            raise ValueError(f"VAE config['scaling_factor']={scaling!r} is not supported: expected a positive number")
        shift = cfg.get("shift_factor")
        return cls(
            in_channels=_int(cfg.get("in_channels", 3), "in_channels"),
            out_channels=_int(cfg.get("out_channels", 3), "out_channels"),
            block_out_channels=block_out,
            layers_per_block=_int(cfg.get("layers_per_block", 1), "layers_per_block"),
            latent_channels=_int(cfg.get("latent_channels", 4), "latent_channels"),
            norm_num_groups=groups,
            sample_size=None if sample_size is None else _int(sample_size, "sample_size"),
            scaling_factor=float(scaling),
            shift_factor=None if shift is None else float(shift),
            use_quant_conv=bool(cfg.get("use_quant_conv", True)),
            use_post_quant_conv=bool(cfg.get("use_post_quant_conv", True)),
            mid_block_add_attention=bool(cfg.get("mid_block_add_attention", True)),
            dtype=dtype,
            param_dtype=param_dtype,
        )

    def to_config(self) -> dict:
        """A diffusers config dict (JSON-serialisable) for this model."""
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL", "in_channels": self.in_channels, "out_channels": self.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(self.block_out_channels), "layers_per_block": self.layers_per_block,
            "act_fn": "silu", "latent_channels": self.latent_channels, "norm_num_groups": self.norm_num_groups,
            "sample_size": self.sample_size, "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
            "use_quant_conv": self.use_quant_conv, "use_post_quant_conv": self.use_post_quant_conv,
            "mid_block_add_attention": self.mid_block_add_attention,
        }

    @property
    def downsample_factor(self) -> int:
        """Image pixels per latent pixel along each axis (``2 ** (len(block_out_channels) - 1)``, 8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = _Encoder(self.block_out_channels, self.layers_per_block, self.latent_channels,
                                self.norm_num_groups, self.mid_block_add_attention, **kw)
        self.decoder = _Decoder(self.block_out_channels, self.layers_per_block, self.out_channels,
                                self.norm_num_groups, self.mid_block_add_attention, **kw)
        if self.use_quant_conv:
            self.quant_conv = _conv(2 * self.latent_channels, 1, padding=0, **kw)
        if self.use_post_quant_conv:
            self.post_quant_conv = _conv(self.latent_channels, 1, padding=0, **kw)

    def encode(self, x) -> DiagonalGaussian:
        """Images ``(batch, H, W, in_channels)`` (about ``[-1, 1]``) -> posterior over ``(batch, H/f, W/f, latent)``."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"AutoencoderKL.encode expects NHWC images with {self.in_channels} channels, "
                             f"got {x.shape}")
        factor = self.downsample_factor
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"image size {x.shape[1:3]} must be divisible by {factor}")
        moments = self.encoder(x.astype(self.dtype or x.dtype))
        if self.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return DiagonalGaussian(mean, jnp.clip(logvar, -30.0, 20.0))

    def decode(self, z):
        """Latents ``(batch, h, w, latent_channels)`` (unscaled) -> images ``(batch, h*f, w*f, out_channels)``."""
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"AutoencoderKL.decode expects NHWC latents with {self.latent_channels} channels, "
                             f"got {z.shape}")
        z = z.astype(self.dtype or z.dtype)
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x):
        return self.decode(self.encode(x).mean)

    def abstract_params(self):
        """Shapes of the ``"params"`` collection (``jax.eval_shape``; nothing is computed)."""
        f = self.downsample_factor
        x = jax.ShapeDtypeStruct((1, f, f, self.in_channels), jnp.float32)
        return jax.eval_shape(lambda x: self.init(jax.random.key(0), x), x)["params"]
