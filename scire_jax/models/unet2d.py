"""Flax (linen) UNet of the diffusers ``UNet2DModel`` family used by DDPM checkpoints.

The module covers the configurations of ``google/ddpm-cifar10-32``, ``google/ddpm-celebahq-256``,
``google/ddpm-ema-church-256`` / ``-bedroom-256`` and the original DDPM CIFAR-10 / CelebA networks:
a sinusoidal ("positional") time embedding, ``DownBlock2D`` / ``AttnDownBlock2D`` down blocks,
``UpBlock2D`` / ``AttnUpBlock2D`` up blocks, a mid block with self-attention, GroupNorm + SiLU,
``resnet_time_scale_shift="default"`` (the time embedding is added between the two convolutions)
and an optional class embedding.

Conventions:

* **Layout is NHWC.**  ``UNet2D(...).apply(params, x, t)`` takes ``x`` of shape
  ``(batch, height, width, in_channels)`` and returns ``(batch, height, width, out_channels)``.
  (PyTorch / diffusers use NCHW; the weight converter in :mod:`scire_jax.io.convert` transposes the
  kernels, so the *inputs* only need ``jnp.transpose(x, (0, 2, 3, 1))``.)
* ``t`` is the network time (e.g. ``0 .. 999`` for DDPM), shape ``(batch,)`` or a scalar (broadcast
  to the batch); fractional values are used as they are (diffusers truncates Python scalars to int).
* ``class_labels`` (int, shape ``(batch,)``) is required iff the model has a class embedding.
* Dropout is not applied: the module is an inference network (``dropout`` in the config is ignored).
* ``dtype`` is the computation dtype (e.g. ``jnp.bfloat16``); parameters are always created and
  stored in ``param_dtype`` (float32).  The time embedding, GroupNorm statistics and the attention
  softmax are computed in float32.

Parameter names mirror the diffusers state-dict names (``down_blocks_0/resnets_1/conv1/kernel`` is
``down_blocks.0.resnets.1.conv1.weight``), which keeps conversion mechanical.

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = UNet2D.from_config({"sample_size": 8, "block_out_channels": [8, 16],
    ...     "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    ...     "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
    ...     "norm_num_groups": 4, "attention_head_dim": 8})
    >>> x = jnp.zeros((1, 8, 8, 3))
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1,)))
    >>> jax.eval_shape(model.apply, shapes, x, jnp.zeros((1,))).shape
    (1, 8, 8, 3)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["UNet2D", "timestep_embedding", "DOWN_BLOCK_TYPES", "UP_BLOCK_TYPES"]

DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")

Dtype = Any


def timestep_embedding(timesteps, dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1.0,
                       max_period: float = 10000.0):
    """Sinusoidal embedding of (possibly fractional) times, shape ``(batch,) -> (batch, dim)``, float32.

    Frequencies are ``exp(-log(max_period) * k / (dim // 2 - freq_shift))``, ``k = 0 .. dim//2 - 1``;
    the output is ``[sin, cos]`` (``[cos, sin]`` if ``flip_sin_to_cos``), zero-padded for odd ``dim``.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


# -- building blocks ------------------------------------------------------------------------------


def _conv(features, kernel, stride=1, padding=1, dtype=None, param_dtype=jnp.float32, name=None):
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype,
                   param_dtype=param_dtype, name=name)


class _GroupNorm(nn.Module):
    """GroupNorm over NHWC with statistics in float32 (two-pass variance, as PyTorch)."""

    num_groups: int
    epsilon: float
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        dtype = self.dtype or x.dtype
        x32 = x.astype(jnp.float32)
        grouped = x32.reshape(x.shape[:-1] + (self.num_groups, channels // self.num_groups))
        axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
        normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


class _ResnetBlock(nn.Module):
    out_channels: int
    groups: int
    eps: float
    output_scale_factor: float = 1.0
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _GroupNorm(self.groups, self.eps, name="norm1", **kw)(x)
        h = _conv(self.out_channels, 3, name="conv1", **kw)(nn.silu(h))
        if temb is not None:
            t = nn.Dense(self.out_channels, name="time_emb_proj", **kw)(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = _GroupNorm(self.groups, self.eps, name="norm2", **kw)(h)
        h = _conv(self.out_channels, 3, name="conv2", **kw)(nn.silu(h))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, padding=0, name="conv_shortcut", **kw)(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class _Attention(nn.Module):
    """Spatial self-attention block (GroupNorm, q/k/v projections, residual)."""

    head_dim: Optional[int]
    groups: Optional[int]
    eps: float
    rescale_output_factor: float = 1.0
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, height, width, channels = x.shape
        head_dim = channels if self.head_dim is None else self.head_dim
        heads = channels // head_dim
        h = x
        if self.groups is not None:
            h = _GroupNorm(self.groups, self.eps, name="group_norm", **kw)(h)
        h = h.reshape(batch, height * width, channels)

        def heads_of(y):
            return y.reshape(batch, height * width, heads, head_dim)

        q = heads_of(nn.Dense(heads * head_dim, name="to_q", **kw)(h))
        k = heads_of(nn.Dense(heads * head_dim, name="to_k", **kw)(h))
        v = heads_of(nn.Dense(heads * head_dim, name="to_v", **kw)(h))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (head_dim ** -0.5)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, height * width, heads * head_dim)
        out = nn.Dense(channels, name="to_out_0", **kw)(out)
        out = out.reshape(batch, height, width, channels) + x
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out


class _Downsample(nn.Module):
    channels: int
    padding: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.padding == 0:  # asymmetric (0, 1) padding of the original DDPM code
            pad = ((0, 1), (0, 1))
        else:
            pad = ((self.padding, self.padding), (self.padding, self.padding))
        return _conv(self.channels, 3, stride=2, padding=pad, name="conv", dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)


class _Upsample(nn.Module):
    channels: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest neighbour
        return _conv(self.channels, 3, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class _TimestepEmbedding(nn.Module):
    features: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Dense(self.features, name="linear_1", **kw)(x)
        return nn.Dense(self.features, name="linear_2", **kw)(nn.silu(x))


class _DownBlock(nn.Module):
    out_channels: int
    num_layers: int
    attention: bool
    add_downsample: bool
    downsample_padding: int
    groups: int
    eps: float
    head_dim: Optional[int]
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, emb):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        states = []
        for j in range(self.num_layers):
            h = _ResnetBlock(self.out_channels, self.groups, self.eps, name=f"resnets_{j}", **kw)(h, emb)
            if self.attention:
                h = _Attention(self.head_dim, self.groups, self.eps, name=f"attentions_{j}", **kw)(h)
            states.append(h)
        if self.add_downsample:
            h = _Downsample(self.out_channels, self.downsample_padding, name="downsamplers_0", **kw)(h)
            states.append(h)
        return h, states


class _UpBlock(nn.Module):
    out_channels: int
    num_layers: int
    attention: bool
    add_upsample: bool
    groups: int
    eps: float
    head_dim: Optional[int]
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, skips, emb):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        skips = list(skips)
        for j in range(self.num_layers):
            h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
            h = _ResnetBlock(self.out_channels, self.groups, self.eps, name=f"resnets_{j}", **kw)(h, emb)
            if self.attention:
                h = _Attention(self.head_dim, self.groups, self.eps, name=f"attentions_{j}", **kw)(h)
        if self.add_upsample:
            h = _Upsample(self.out_channels, name="upsamplers_0", **kw)(h)
        return h


class _MidBlock(nn.Module):
    groups: int
    eps: float
    head_dim: Optional[int]
    attn_groups: int
    add_attention: bool
    output_scale_factor: float
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, emb):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = h.shape[-1]
        h = _ResnetBlock(channels, self.groups, self.eps, self.output_scale_factor, name="resnets_0", **kw)(h, emb)
        if self.add_attention:
            h = _Attention(self.head_dim, self.attn_groups, self.eps, self.output_scale_factor,
                           name="attentions_0", **kw)(h)
        return _ResnetBlock(channels, self.groups, self.eps, self.output_scale_factor, name="resnets_1", **kw)(h, emb)


# -- configuration ----------------------------------------------------------------------------------

# config key -> (default, allowed values or None).  Keys absent here are ignored by from_config.
_FIXED_VALUES = {
    "time_embedding_type": ("positional", ("positional",)),
    "resnet_time_scale_shift": ("default", ("default",)),
    "act_fn": ("silu", ("silu", "swish")),
    "downsample_type": ("conv", ("conv",)),
    "upsample_type": ("conv", ("conv",)),
    "mid_block_type": ("UNetMidBlock2D", ("UNetMidBlock2D", None)),
    "class_embed_type": (None, (None, "timestep", "identity")),
}


def _as_tuple(value, key, item_type):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"config[{key!r}]={value!r} is not supported: expected a list")
    if not all(isinstance(v, item_type) and not isinstance(v, bool) for v in value):
        raise ValueError(f"config[{key!r}]={value!r} is not supported: expected a list of {item_type.__name__}")
    return tuple(value)


def _positive_int(value, key, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config[{key!r}]={value!r} is not supported: expected a positive integer")
    return int(value)


class UNet2D(nn.Module):
    """DDPM-style UNet (diffusers ``UNet2DModel`` family), NHWC; see the module docstring.

    Build it with :meth:`from_config` from a diffusers ``config.json`` dict; :meth:`to_config`
    gives that dict back (diffusers key names, JSON-serialisable).
    """

    sample_size: Optional[int] = None
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Tuple[int, ...] = (224, 448, 672, 896)
    layers_per_block: int = 2
    down_block_types: Tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    up_block_types: Tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    mid_block: bool = True
    add_attention: bool = True
    attention_head_dim: Optional[int] = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: Optional[int] = None
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    time_embedding_dim: Optional[int] = None
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    center_input_sample: bool = False
    num_class_embeds: Optional[int] = None
    class_embed_type: Optional[str] = None
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    # -- config ------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], dtype: Optional[Dtype] = None,
                    param_dtype: Dtype = jnp.float32) -> UNet2D:
        """Build from a diffusers ``UNet2DModel`` config dict (unknown keys are ignored).

        Raises:
          ValueError: naming the key, for values outside the supported family (e.g.
            ``time_embedding_type="fourier"``, ``resnet_time_scale_shift="scale_shift"``,
            block types other than (Attn)Down/UpBlock2D, inconsistent channel / group counts).
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        cfg = dict(config)
        class_name = cfg.get("_class_name")
        if class_name is not None and class_name != "UNet2DModel":
            raise ValueError(f"config['_class_name']={class_name!r} is not supported: expected 'UNet2DModel'")
        for key, (default, allowed) in _FIXED_VALUES.items():
            value = cfg.get(key, default)
            if value not in allowed:
                raise ValueError(f"config[{key!r}]={value!r} is not supported; allowed: {list(allowed)}")
        block_out = _as_tuple(cfg.get("block_out_channels", cls.block_out_channels), "block_out_channels", int)
        down = _as_tuple(cfg.get("down_block_types", cls.down_block_types), "down_block_types", str)
        up = _as_tuple(cfg.get("up_block_types", cls.up_block_types), "up_block_types", str)
        for key, types, allowed in (("down_block_types", down, DOWN_BLOCK_TYPES), ("up_block_types", up, UP_BLOCK_TYPES)):
            for value in types:
                if value not in allowed:
                    raise ValueError(f"config[{key!r}] contains {value!r}, which is not supported; allowed: {list(allowed)}")
        if not block_out or len(down) != len(block_out) or len(up) != len(block_out):
            raise ValueError(
                f"config['block_out_channels']={list(block_out)!r} must be non-empty with one entry per down block "
                f"({len(down)}) and per up block ({len(up)})")
        for c in block_out:
            _positive_int(c, "block_out_channels")
        groups = _positive_int(cfg.get("norm_num_groups", 32), "norm_num_groups")
        attn_groups = _positive_int(cfg.get("attn_norm_num_groups"), "attn_norm_num_groups", allow_none=True)
        for c in block_out:
            if c % groups:
                raise ValueError(f"config['norm_num_groups']={groups} does not divide block_out_channels {list(block_out)}")
        if attn_groups is not None and block_out[-1] % attn_groups:
            raise ValueError(f"config['attn_norm_num_groups']={attn_groups} does not divide {block_out[-1]}")
        head_dim = _positive_int(cfg.get("attention_head_dim", 8), "attention_head_dim", allow_none=True)
        if head_dim is not None:
            attn_channels = [c for c, kind in zip(block_out, down) if kind.startswith("Attn")]
            attn_channels += [c for c, kind in zip(block_out[::-1], up) if kind.startswith("Attn")]
            if cfg.get("mid_block_type", "UNetMidBlock2D") is not None and cfg.get("add_attention", True):
                attn_channels.append(block_out[-1])
            for c in attn_channels:
                if c % head_dim:
                    raise ValueError(f"config['attention_head_dim']={head_dim} does not divide the {c} channels of an attention block")
        padding = cfg.get("downsample_padding", 1)
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
            raise ValueError(f"config['downsample_padding']={padding!r} is not supported: expected an int >= 0")
        eps = cfg.get("norm_eps", 1e-5)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"config['norm_eps']={eps!r} is not supported: expected a positive number")
        sample_size = cfg.get("sample_size")
        if isinstance(sample_size, (list, tuple)):
            if len(sample_size) != 2 or sample_size[0] != sample_size[1]:
                raise ValueError(f"config['sample_size']={sample_size!r} is not supported: expected a square size")
            sample_size = sample_size[0]
        sample_size = _positive_int(sample_size, "sample_size", allow_none=True)
        class_type = cfg.get("class_embed_type")
        num_class = _positive_int(cfg.get("num_class_embeds"), "num_class_embeds", allow_none=True)
        if class_type == "identity" and cfg.get("time_embedding_dim") not in (None, block_out[0] * 4):
            raise ValueError("config['class_embed_type']='identity' requires the default time_embedding_dim")
        scale = cfg.get("mid_block_scale_factor", 1.0)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
            raise ValueError(f"config['mid_block_scale_factor']={scale!r} is not supported: expected a positive number")
        freq_shift = cfg.get("freq_shift", 0)
        if not isinstance(freq_shift, (int, float)) or isinstance(freq_shift, bool):
            raise ValueError(f"config['freq_shift']={freq_shift!r} is not supported: expected a number")
        if block_out[0] // 2 - freq_shift == 0:
            raise ValueError(f"config['freq_shift']={freq_shift!r} is not supported with {block_out[0]} channels")
        return cls(
            sample_size=sample_size,
            in_channels=_positive_int(cfg.get("in_channels", 3), "in_channels"),
            out_channels=_positive_int(cfg.get("out_channels", 3), "out_channels"),
            block_out_channels=tuple(int(c) for c in block_out),
            layers_per_block=_positive_int(cfg.get("layers_per_block", 2), "layers_per_block"),
            down_block_types=down,
            up_block_types=up,
            mid_block=cfg.get("mid_block_type", "UNetMidBlock2D") is not None,
            add_attention=bool(cfg.get("add_attention", True)),
            attention_head_dim=head_dim,
            norm_num_groups=groups,
            attn_norm_num_groups=attn_groups,
            norm_eps=float(eps),
            flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)),
            freq_shift=freq_shift,
            time_embedding_dim=_positive_int(cfg.get("time_embedding_dim"), "time_embedding_dim", allow_none=True),
            downsample_padding=int(padding),
            mid_block_scale_factor=float(scale),
            center_input_sample=bool(cfg.get("center_input_sample", False)),
            num_class_embeds=num_class,
            class_embed_type=class_type,
            dtype=dtype,
            param_dtype=param_dtype,
        )

    def to_config(self) -> dict:
        """The diffusers-style config dict (JSON-serialisable) that :meth:`from_config` accepts."""
        return {
            "_class_name": "UNet2DModel",
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "center_input_sample": self.center_input_sample,
            "time_embedding_type": "positional",
            "time_embedding_dim": self.time_embedding_dim,
            "freq_shift": self.freq_shift,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "down_block_types": list(self.down_block_types),
            "mid_block_type": "UNetMidBlock2D" if self.mid_block else None,
            "up_block_types": list(self.up_block_types),
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "mid_block_scale_factor": self.mid_block_scale_factor,
            "downsample_padding": self.downsample_padding,
            "downsample_type": "conv",
            "upsample_type": "conv",
            "act_fn": "silu",
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "attn_norm_num_groups": self.attn_norm_num_groups,
            "norm_eps": self.norm_eps,
            "resnet_time_scale_shift": "default",
            "add_attention": self.add_attention,
            "class_embed_type": self.class_embed_type,
            "num_class_embeds": self.num_class_embeds,
        }

    def init_params(self, rng=None, batch: int = 1):
        """Random float32 parameters (jit-compiled init on a ``(batch, S, S, in_channels)`` input)."""
        rng = jax.random.key(0) if rng is None else rng
        size = self.sample_size or 2 ** (len(self.block_out_channels) - 1)
        x = jnp.zeros((batch, size, size, self.in_channels), jnp.float32)
        t = jnp.zeros((batch,), jnp.float32)
        labels = jnp.zeros((batch,), jnp.int32) if self.has_class_embedding else None
        return jax.jit(self.init)(rng, x, t, labels)

    @property
    def has_class_embedding(self) -> bool:
        return self.class_embed_type is not None or self.num_class_embeds is not None

    # -- forward -------------------------------------------------------------------------------
    @nn.compact
    def __call__(self, x, t, class_labels=None):
        """Predict from ``x`` (NHWC) at network time ``t`` (``(batch,)`` or scalar); see module doc."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"UNet2D expects NHWC input with {self.in_channels} channels, got shape {x.shape}")
        levels = len(self.block_out_channels)
        if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(f"spatial size {x.shape[1:3]} must be divisible by {2 ** (levels - 1)}")
        batch = x.shape[0]
        compute_dtype = self.dtype or x.dtype
        if self.center_input_sample:
            x = 2 * x - 1.0
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (batch,))
        base = self.block_out_channels[0]
        temb_dim = self.time_embedding_dim or base * 4
        t_feat = timestep_embedding(t, base, self.flip_sin_to_cos, self.freq_shift)
        emb = _TimestepEmbedding(temb_dim, name="time_embedding", **kw)(t_feat.astype(compute_dtype))
        if self.has_class_embedding:
            if class_labels is None:
                raise ValueError("this UNet2D has a class embedding: pass class_labels")
            if self.class_embed_type is None:
                class_emb = nn.Embed(self.num_class_embeds, temb_dim, name="class_embedding", **kw)(
                    jnp.asarray(class_labels).astype(jnp.int32))
            elif self.class_embed_type == "timestep":
                feat = timestep_embedding(jnp.asarray(class_labels).reshape(-1), base, self.flip_sin_to_cos, self.freq_shift)
                class_emb = _TimestepEmbedding(temb_dim, name="class_embedding", **kw)(feat.astype(compute_dtype))
            else:  # identity
                class_emb = jnp.asarray(class_labels, compute_dtype)
            emb = emb + class_emb
        elif class_labels is not None:
            raise ValueError("class_labels given, but this UNet2D has no class embedding")

        groups, eps = self.norm_num_groups, self.norm_eps
        block_kw = dict(groups=groups, eps=eps, head_dim=self.attention_head_dim, **kw)
        h = _conv(base, 3, name="conv_in", **kw)(x.astype(compute_dtype))
        skips = [h]
        for i, (kind, channels) in enumerate(zip(self.down_block_types, self.block_out_channels)):
            h, states = _DownBlock(channels, self.layers_per_block, kind == "AttnDownBlock2D",
                                   add_downsample=i < levels - 1, downsample_padding=self.downsample_padding,
                                   name=f"down_blocks_{i}", **block_kw)(h, emb)
            skips.extend(states)

        if self.mid_block:
            h = _MidBlock(attn_groups=self.attn_norm_num_groups or groups, add_attention=self.add_attention,
                          output_scale_factor=self.mid_block_scale_factor, name="mid_block", **block_kw)(h, emb)

        for i, (kind, channels) in enumerate(zip(self.up_block_types, self.block_out_channels[::-1])):
            count = self.layers_per_block + 1
            states, skips = skips[-count:], skips[:-count]
            h = _UpBlock(channels, count, kind == "AttnUpBlock2D", add_upsample=i < levels - 1,
                         name=f"up_blocks_{i}", **block_kw)(h, states, emb)

        h = _GroupNorm(groups, eps, name="conv_norm_out", **kw)(h)
        return _conv(self.out_channels, 3, name="conv_out", **kw)(nn.silu(h))
