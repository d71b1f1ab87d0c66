"""Flax (linen) ports of OpenAI's ADM (guided-diffusion) UNet, its noisy classifier and the improved-DDPM UNet.

Three modules mirror the PyTorch classes that SciRE-Solver samples from:

* :class:`UNetModel` -- guided-diffusion ``UNetModel`` (ImageNet 128/256/512, LSUN bedroom):
  FiLM ResBlocks (``use_scale_shift_norm``), residual up/down-sampling (``resblock_updown``),
  attention heads by count (``num_heads``) or by width (``num_head_channels``), legacy or new QKV
  order, optional class embedding (``num_classes``), fractional ``channel_mult`` (512 px).
* :class:`EncoderUNetModel` -- guided-diffusion ``EncoderUNetModel``, the noisy classifier
  (``pool`` = ``"attention"`` as released, or ``"adaptive"``, ``"spatial"``, ``"spatial_v2"``).
* :class:`IDDPMUNetModel` -- improved-diffusion ``UNetModel`` (ImageNet-64).  Compared with ADM it
  has no ``image_size``, ``num_head_channels``, ``resblock_updown``, ``use_new_attention_order`` or
  ``use_fp16``; attention is always the legacy (heads first) order, channel multipliers are
  integers and the input convolution always has ``model_channels`` outputs.  With those settings
  it is exactly the ADM network, so it is a configured :class:`UNetModel`.

Conventions:

* **Layout is NHWC.**  ``module.apply(variables, x, t, y)`` takes ``x`` of shape
  ``(batch, height, width, in_channels)`` (the PyTorch originals use NCHW: transpose the *inputs*
  with ``jnp.transpose(x, (0, 2, 3, 1))``; the converter transposes the weights).  The UNets return
  ``(batch, height, width, out_channels)``, the classifier ``(batch, num_classes)`` logits.
* ``t`` is the network time, shape ``(batch,)`` or scalar, fractional values allowed (guided
  diffusion: ``0 .. 999``; improved-DDPM ImageNet-64 was trained with ``t * 1000 / 4000``).
* ``y`` (integer labels, ``(batch,)``) is required iff ``num_classes`` is set.
* Learned sigma: all released UNets have ``out_channels = 2 * in_channels``.  The noise
  prediction (eps) is ``out[..., :in_channels]``; ``out[..., in_channels:]`` is the variance
  interpolation ``v`` (``frac = (v + 1) / 2`` between ``log beta_t`` and the clipped posterior log
  variance).  The caller slices; the sampler uses only eps.
* ``dtype`` is the compute dtype of the torso (input/middle/output blocks: convolutions, attention,
  activations) -- e.g. ``jnp.bfloat16`` or ``jnp.float16``, which reproduces the originals'
  ``convert_to_fp16()``.  As there, the time/label embeddings, the ``emb_layers`` projections, the
  output head and the classifier pool run in float32 (float64 if ``dtype`` is float64), GroupNorm
  statistics and the attention softmax are float32, and outputs come back in float32.
  ``param_dtype`` (default float32) is the storage dtype of the parameters.
* Dropout is never applied (inference network); ``use_checkpoint`` is accepted and ignored.

Parameter names mirror the PyTorch state-dict names with ``.`` -> ``_`` at index positions
(``input_blocks_4_1/qkv/kernel`` is ``input_blocks.4.1.qkv.weight``); see :func:`torch_key`.

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = UNetModel.from_config({"image_size": 16, "in_channels": 3, "model_channels": 32,
    ...     "out_channels": 6, "num_res_blocks": 1, "attention_resolutions": [2], "channel_mult": [1, 2],
    ...     "num_head_channels": 16, "use_scale_shift_norm": True, "resblock_updown": True, "num_classes": 10})
    >>> variables = abstract_variables(model)  # shapes only; convert_adm gives real weights
    >>> x, t, y = jnp.zeros((2, 16, 16, 3)), jnp.array([10.0, 500.5]), jnp.array([1, 7])
    >>> out = jax.eval_shape(model.apply, variables, x, t, y)
    >>> out.shape, out.dtype  # eps = out[..., :3], learned-variance v = out[..., 3:]
    ((2, 16, 16, 6), dtype('float32'))
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "UNetModel",
    "EncoderUNetModel",
    "IDDPMUNetModel",
    "FAMILIES",
    "from_config",
    "timestep_embedding",
    "dummy_inputs",
    "abstract_variables",
    "torch_key",
    "torch_state_dict_shapes",
]

Dtype = Any
GROUPS = 32  # normalization() in the originals is always GroupNorm(32, channels), eps 1e-5
GN_EPS = 1e-5
POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


def _wide(dtype) -> Any:
    """float32, or float64 when computing in float64 (the originals' ``.float()`` precision)."""
    return jnp.promote_types(jnp.dtype(dtype), jnp.float32)


def _frequencies(half: int, max_period: float) -> np.ndarray:
    """The float32 frequency table of ``timestep_embedding``.

    The originals build it in float32 (``exp(-log(P) * arange(half) / half)``).  The argument is
    formed in float32 exactly as torch does; ``exp`` is evaluated in float64 and rounded once, so the
    table is the correctly rounded float32 value (torch's float32 exp agrees for the fixture sizes and
    differs by at most one ulp in a few entries of large tables).
    """
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def timestep_embedding(t, dim: int, max_period: float = 10000.0, dtype=jnp.float32):
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` (cos half first), zero-padded for odd ``dim``.

    Args:
      t: times, shape ``(batch,)``; fractional values allowed.
      dim: embedding width (``model_channels``).
      max_period: lowest frequency is ``1 / max_period``.
      dtype: computation dtype (float32; float64 promotes the float32 frequency table as the
        originals' float64 runs do).

    Returns:
      ``(batch, dim)`` array of ``dtype``.
    """
    half = dim // 2
    freqs = jnp.asarray(_frequencies(half, max_period)).astype(dtype)
    args = jnp.asarray(t).astype(dtype)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


# -- building blocks ------------------------------------------------------------------------------


class GroupNorm32(nn.Module):
    """GroupNorm(32 groups, eps 1e-5) over the last axis; statistics in float32 (float64 for float64).

    The originals run GroupNorm on ``x.float()`` and cast back, so the output has the input dtype.
    Works on ``(batch, ..., channels)`` inputs, including ``(batch, channels)``.
    """

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        wide = _wide(x.dtype)
        grouped = x.astype(wide).reshape(x.shape[:-1] + (GROUPS, channels // GROUPS))
        axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)  # two-pass, as torch
        normed = ((grouped - mean) * jax.lax.rsqrt(var + GN_EPS)).reshape(x.shape)
        return (normed * scale.astype(wide) + bias.astype(wide)).astype(x.dtype)


def _conv(features, name, dtype, param_dtype, kernel=3, stride=1):
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   dtype=dtype, param_dtype=param_dtype, name=name)


def _avg_pool2(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).astype(x.dtype)


def _nearest_up2(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _attention(q, k, v):
    """Softmax attention over ``(batch, tokens, heads, head_dim)``, scale ``head_dim ** -0.5``.

    ``jax.nn.dot_product_attention`` computes the logits and softmax in float32 (the originals
    compute the softmax in float32 too); it casts float64 logits to float32, so float64 (used to
    check the port to 1e-9) takes an explicit float64 path.
    """
    if q.dtype == jnp.float64:
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
    if q.dtype == jnp.float16 and jax.default_backend() == "cpu":
        # XLA:CPU rejects the F16_F16_F32 dot algorithm that dot_product_attention requests for
        # float16; the logits are float32 either way, so run it on float32 copies.
        f32 = [a.astype(jnp.float32) for a in (q, k, v)]
        return jax.nn.dot_product_attention(*f32).astype(jnp.float16)
    return jax.nn.dot_product_attention(q, k, v)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (``op``), or 2x2 average pooling without ``use_conv``."""

    use_conv: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.use_conv:
            return _conv(x.shape[-1], "op", self.dtype, self.param_dtype, stride=2)(x)
        return _avg_pool2(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution (``conv``) if ``use_conv``."""

    use_conv: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _nearest_up2(x)
        if self.use_conv:
            x = _conv(x.shape[-1], "conv", self.dtype, self.param_dtype)(x)
        return x


class ResBlock(nn.Module):
    """ADM residual block: GN-SiLU-conv, time embedding (added, or FiLM with ``use_scale_shift_norm``),
    GN-SiLU-(dropout)-conv, plus a (1x1 projected) skip; optionally resamples both paths (``up``/``down``)."""

    out_channels: int
    use_scale_shift_norm: bool
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        pd = self.param_dtype
        h = nn.silu(GroupNorm32(pd, name="in_layers_0")(x))
        if self.up or self.down:  # resample between the activation and the convolution, as the original
            resample = _nearest_up2 if self.up else _avg_pool2
            h, x = resample(h), resample(x)
        h = _conv(self.out_channels, "in_layers_2", self.dtype, pd)(h)
        width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        # emb_layers stay in the wide dtype (nn.Linear is not converted by convert_to_fp16).
        emb_out = nn.Dense(width, dtype=emb.dtype, param_dtype=pd, name="emb_layers_1")(nn.silu(emb))
        emb_out = emb_out.astype(h.dtype)[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = GroupNorm32(pd, name="out_layers_0")(h) * (1 + scale) + shift
        else:
            h = GroupNorm32(pd, name="out_layers_0")(h + emb_out)
        h = _conv(self.out_channels, "out_layers_3", self.dtype, pd)(nn.silu(h))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, "skip_connection", self.dtype, pd, kernel=1)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Spatial self-attention: GN, ``qkv`` projection (a 1x1 conv1d in torch), attention, ``proj_out``, residual.

    ``new_order=False`` is ``QKVAttentionLegacy`` (channels grouped per head as ``[q, k, v]``);
    ``new_order=True`` is ``QKVAttention`` (``[q | k | v]``, each split into heads).
    """

    num_heads: int
    new_order: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hgt, wdt, c = x.shape
        heads = self.num_heads
        h = GroupNorm32(self.param_dtype, name="norm")(x).reshape(b, hgt * wdt, c)
        qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(h)
        if self.new_order:
            q, k, v = jnp.moveaxis(qkv.reshape(b, hgt * wdt, 3, heads, c // heads), 2, 0)
        else:
            q, k, v = jnp.moveaxis(qkv.reshape(b, hgt * wdt, heads, 3, c // heads), 3, 0)
        a = _attention(q, k, v).reshape(b, hgt * wdt, c)
        a = nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="proj_out")(a)
        return x + a.reshape(b, hgt, wdt, c).astype(x.dtype)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling of the classifier: the mean token attends over ``[mean, pixels]``.

    Only the mean token's output is used, so only its query is computed (same result).
    """

    spatial_dim: int
    num_head_channels: int
    output_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hgt, wdt, c = x.shape
        if hgt * wdt != self.spatial_dim ** 2:
            raise ValueError(f"attention pool expects {self.spatial_dim}x{self.spatial_dim} features "
                             f"(image_size // 2**(levels-1)), got {hgt}x{wdt}")
        pos = self.param("positional_embedding", nn.initializers.normal(c ** -0.5),
                         (c, self.spatial_dim ** 2 + 1), self.param_dtype)
        tokens = x.reshape(b, hgt * wdt, c)
        tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
        tokens = tokens + pos.T.astype(tokens.dtype)[None]
        qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv_proj")(tokens)
        heads = c // self.num_head_channels
        q, k, v = jnp.moveaxis(qkv.reshape(b, hgt * wdt + 1, 3, heads, self.num_head_channels), 2, 0)
        a = _attention(q[:, :1], k, v).reshape(b, 1, c)
        return nn.Dense(self.output_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="c_proj")(a)[:, 0]


# -- layout ----------------------------------------------------------------------------------------


def _heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    return num_heads if num_head_channels == -1 else channels // num_head_channels


def _layout(m) -> Tuple[int, List[list], list, List[list], int]:
    """The block structure of the originals' constructors: ``(input_ch, input_blocks, middle, output_blocks, ds)``.

    Each block is a list of layer specs ``("conv", ch)``, ``("res", out, up, down)``,
    ``("attn", heads, ch)``, ``("down",)``, ``("up",)``.  ``output_blocks`` is empty for the encoder.
    """
    mc = m.model_channels
    heads_up = m.num_heads if m.num_heads_upsample == -1 else m.num_heads_upsample
    ch = input_ch = int(m.channel_mult[0] * mc) if m.input_ch_from_mult else mc
    blocks: List[list] = [[("conv", ch)]]
    chans = [ch]
    ds = 1
    for level, mult in enumerate(m.channel_mult):
        for _ in range(m.num_res_blocks):
            ch = int(mult * mc)
            layers: List[tuple] = [("res", ch, False, False)]
            if ds in m.attention_resolutions:
                layers.append(("attn", _heads(ch, m.num_heads, m.num_head_channels), ch))
            blocks.append(layers)
            chans.append(ch)
        if level != len(m.channel_mult) - 1:
            blocks.append([("res", ch, False, True)] if m.resblock_updown else [("down",)])
            chans.append(ch)
            ds *= 2
    middle = [("res", ch, False, False), ("attn", _heads(ch, m.num_heads, m.num_head_channels), ch),
              ("res", ch, False, False)]
    encoder_ds = ds
    outputs: List[list] = []
    if m.has_decoder:
        for level, mult in list(enumerate(m.channel_mult))[::-1]:
            for i in range(m.num_res_blocks + 1):
                chans.pop()
                ch = int(mc * mult)
                layers: List[tuple] = [("res", ch, False, False)]
                if ds in m.attention_resolutions:
                    layers.append(("attn", _heads(ch, heads_up, m.num_head_channels), ch))
                if level and i == m.num_res_blocks:
                    layers.append(("res", ch, True, False) if m.resblock_updown else ("up",))
                    ds //= 2
                outputs.append(layers)
    return input_ch, blocks, middle, outputs, encoder_ds


def _run_block(prefix: str, layers, h, emb, m):
    """Apply one ``TimestepEmbedSequential`` (children named ``{prefix}_{j}``)."""
    kw = dict(dtype=m.dtype, param_dtype=m.param_dtype)
    for j, spec in enumerate(layers):
        name = f"{prefix}_{j}"
        if spec[0] == "conv":
            h = _conv(spec[1], name, m.dtype, m.param_dtype)(h)
        elif spec[0] == "res":
            h = ResBlock(spec[1], m.use_scale_shift_norm, up=spec[2], down=spec[3], name=name, **kw)(h, emb)
        elif spec[0] == "attn":
            h = AttentionBlock(spec[1], m.use_new_attention_order, name=name, **kw)(h)
        elif spec[0] == "down":
            h = Downsample(m.conv_resample, name=name, **kw)(h)
        else:
            h = Upsample(m.conv_resample, name=name, **kw)(h)
    return h


def _time_embedding(m, t, batch, wide):
    t = jnp.asarray(t)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (batch,))
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {t.shape}")
    emb = timestep_embedding(t, m.model_channels, dtype=wide)
    emb = nn.Dense(4 * m.model_channels, dtype=wide, param_dtype=m.param_dtype, name="time_embed_0")(emb)
    return nn.Dense(4 * m.model_channels, dtype=wide, param_dtype=m.param_dtype, name="time_embed_2")(nn.silu(emb))


def _check_input(m, x):
    if x.ndim != 4 or x.shape[-1] != m.in_channels:
        raise ValueError(f"x must be NHWC with {m.in_channels} channels, got shape {x.shape}")
    factor = 2 ** (len(m.channel_mult) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(f"height and width must be multiples of {factor}, got {x.shape[1:3]}")


# -- configuration ---------------------------------------------------------------------------------

# Official constructor keywords: name -> default (_REQUIRED: positional in the original).
_REQUIRED = object()
_ADM_KEYS = {
    "image_size": _REQUIRED, "in_channels": _REQUIRED, "model_channels": _REQUIRED, "out_channels": _REQUIRED,
    "num_res_blocks": _REQUIRED, "attention_resolutions": _REQUIRED, "dropout": 0.0, "channel_mult": (1, 2, 4, 8),
    "conv_resample": True, "dims": 2, "num_classes": None, "use_checkpoint": False, "use_fp16": False,
    "num_heads": 1, "num_head_channels": -1, "num_heads_upsample": -1, "use_scale_shift_norm": False,
    "resblock_updown": False, "use_new_attention_order": False,
}
_ENCODER_KEYS = {**{k: v for k, v in _ADM_KEYS.items() if k != "num_classes"}, "pool": "adaptive"}
_IDDPM_KEYS = {
    "in_channels": _REQUIRED, "model_channels": _REQUIRED, "out_channels": _REQUIRED, "num_res_blocks": _REQUIRED,
    "attention_resolutions": _REQUIRED, "dropout": 0.0, "channel_mult": (1, 2, 4, 8), "conv_resample": True,
    "dims": 2, "num_classes": None, "use_checkpoint": False, "num_heads": 1, "num_heads_upsample": -1,
    "use_scale_shift_norm": False,
}


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _normalise(kwargs: Mapping[str, Any], spec: Mapping[str, Any], what: str) -> Dict[str, Any]:
    """Check keys and value types of official constructor kwargs; returns them with defaults filled in."""
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{what} config must be a dict of constructor kwargs, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - set(spec))
    if unknown:
        raise ValueError(f"{what} config has unknown keys {unknown}; allowed: {sorted(spec)}")
    missing = sorted(k for k, v in spec.items() if v is _REQUIRED and k not in kwargs)
    if missing:
        raise ValueError(f"{what} config is missing required keys {missing}")
    cfg = {k: kwargs.get(k, v) for k, v in spec.items()}

    def bad(key, expected):
        raise ValueError(f"{what} config[{key!r}]={cfg[key]!r} is not supported: expected {expected}")

    for key in ("in_channels", "model_channels", "out_channels", "num_res_blocks", "num_heads"):
        if key in cfg and not (_is_int(cfg[key]) and cfg[key] > 0):
            bad(key, "a positive integer")
    if "image_size" in cfg and cfg["image_size"] is not None and not (_is_int(cfg["image_size"]) and cfg["image_size"] > 0):
        bad("image_size", "a positive integer")
    if cfg.get("num_classes") is not None and not (_is_int(cfg["num_classes"]) and cfg["num_classes"] > 0):
        bad("num_classes", "None or a positive integer")
    for key in ("num_head_channels", "num_heads_upsample"):
        if key in cfg and not (_is_int(cfg[key]) and (cfg[key] == -1 or cfg[key] > 0)):
            bad(key, "-1 or a positive integer")
    if cfg["dims"] != 2:
        bad("dims", "2 (only 2-D models are supported)")
    if isinstance(cfg["dropout"], bool) or not isinstance(cfg["dropout"], (int, float)) or not 0 <= cfg["dropout"] < 1:
        bad("dropout", "a number in [0, 1) (ignored at inference)")
    for key in ("conv_resample", "use_checkpoint", "use_fp16", "use_scale_shift_norm", "resblock_updown",
                "use_new_attention_order"):
        if key in cfg and not isinstance(cfg[key], (bool, np.bool_)):
            bad(key, "a bool")
    attn = cfg["attention_resolutions"]
    if isinstance(attn, (str, bytes)) or not isinstance(attn, (Sequence, set, frozenset, tuple)) or \
            not all(_is_int(a) and a > 0 for a in attn):
        bad("attention_resolutions", "a list of downsample factors (1, 2, 4, ...), not pixel sizes or a string")
    mult = cfg["channel_mult"]
    if isinstance(mult, (str, bytes)) or not isinstance(mult, Sequence) or not mult or \
            not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and v > 0
                    for v in mult):
        bad("channel_mult", "a non-empty list of positive numbers")
    if "pool" in cfg and cfg["pool"] not in POOLS:
        bad("pool", f"one of {list(POOLS)}")
    cfg["attention_resolutions"] = tuple(sorted(int(a) for a in attn))
    cfg["channel_mult"] = tuple(int(v) if float(v).is_integer() else float(v) for v in mult)
    return cfg


def _validate_layout(module, what: str) -> None:
    """Channel / head counts that the PyTorch constructors reject (or that fail there at run time)."""
    input_ch, inputs, middle, outputs, ds = _layout(module)
    if input_ch % GROUPS:
        raise ValueError(f"{what} config: {input_ch} input channels is not a multiple of the {GROUPS} GroupNorm groups")
    for block in inputs + [middle] + outputs:
        for spec in block:
            if spec[0] == "res" and spec[1] % GROUPS:
                raise ValueError(f"{what} config: {spec[1]} channels is not a multiple of the {GROUPS} GroupNorm groups")
            if spec[0] == "attn":
                heads, ch = spec[1], spec[2]
                if module.num_head_channels != -1 and ch % module.num_head_channels:
                    raise ValueError(f"{what} config: attention over {ch} channels is not divisible by "
                                     f"num_head_channels={module.num_head_channels}")
                if ch % heads:
                    raise ValueError(f"{what} config: attention over {ch} channels is not divisible into {heads} heads")
    if getattr(module, "pool", None) == "attention":
        if module.num_head_channels == -1:
            raise ValueError(f"{what} config: pool='attention' needs num_head_channels != -1")
        if module.image_size is None or module.image_size % ds:
            raise ValueError(f"{what} config: image_size={module.image_size} is not divisible by {ds}")


# -- the networks ----------------------------------------------------------------------------------


class UNetModel(nn.Module):
    """guided-diffusion (ADM) ``UNetModel``, NHWC; see the module docstring.

    Build it with :meth:`from_config` from the official constructor kwargs.

    ``__call__(x, t, y=None)``:
      x: ``(batch, height, width, in_channels)``; t: ``(batch,)`` or scalar network time;
      y: ``(batch,)`` integer labels iff ``num_classes`` is set.
      Returns ``(batch, height, width, out_channels)`` in float32 (float64 for ``dtype=float64``);
      with learned sigma, eps is ``out[..., :in_channels]``.
    """

    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_resolutions: Tuple[int, ...] = ()
    channel_mult: Tuple[float, ...] = (1, 2, 4, 8)
    conv_resample: bool = True
    num_classes: Optional[int] = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    image_size: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    family = "guided_diffusion"
    has_decoder = True
    input_ch_from_mult = True  # improved-DDPM: the input conv always has model_channels outputs

    @classmethod
    def from_config(cls, kwargs: Mapping[str, Any], dtype: Dtype = jnp.float32,
                    param_dtype: Dtype = jnp.float32) -> UNetModel:
        """Build from the official ``guided_diffusion.unet.UNetModel`` constructor kwargs.

        Args:
          kwargs: e.g. ``released_configs.json[...]["model"]["constructor_kwargs"]``.  ``dropout``,
            ``use_checkpoint`` and ``use_fp16`` are accepted and ignored (choose ``dtype`` instead).
          dtype: compute dtype of the torso.
          param_dtype: parameter storage dtype.

        Raises:
          ValueError: unknown or missing keys, or values the original would reject.
        """
        cfg = _normalise(kwargs, _ADM_KEYS, "guided-diffusion UNetModel")
        module = cls(**{k: v for k, v in cfg.items() if k not in ("dropout", "dims", "use_checkpoint", "use_fp16")},
                     dtype=dtype, param_dtype=param_dtype)
        _validate_layout(module, "guided-diffusion UNetModel")
        return module

    def to_config(self) -> Dict[str, Any]:
        """The official constructor kwargs (JSON-serialisable) equivalent to this module."""
        return {
            "image_size": self.image_size, "in_channels": self.in_channels, "model_channels": self.model_channels,
            "out_channels": self.out_channels, "num_res_blocks": self.num_res_blocks,
            "attention_resolutions": list(self.attention_resolutions), "dropout": 0.0,
            "channel_mult": list(self.channel_mult), "conv_resample": self.conv_resample, "dims": 2,
            "num_classes": self.num_classes, "use_checkpoint": False, "use_fp16": False,
            "num_heads": self.num_heads, "num_head_channels": self.num_head_channels,
            "num_heads_upsample": self.num_heads_upsample, "use_scale_shift_norm": self.use_scale_shift_norm,
            "resblock_updown": self.resblock_updown, "use_new_attention_order": self.use_new_attention_order,
        }

    @nn.compact
    def __call__(self, x, t, y=None):
        x = jnp.asarray(x)
        _check_input(self, x)
        if (y is None) != (self.num_classes is None):
            raise ValueError("y (class labels) must be given if and only if the model is class-conditional "
                             f"(num_classes={self.num_classes})")
        wide = _wide(self.dtype)
        emb = _time_embedding(self, t, x.shape[0], wide)
        if self.num_classes is not None:
            y = jnp.asarray(y)
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
            emb = emb + nn.Embed(self.num_classes, 4 * self.model_channels, dtype=wide,
                                 param_dtype=self.param_dtype, name="label_emb")(y)
        input_ch, inputs, middle, outputs, _ = _layout(self)
        h = x.astype(self.dtype)
        skips = []
        for i, layers in enumerate(inputs):
            h = _run_block(f"input_blocks_{i}", layers, h, emb, self)
            skips.append(h)
        h = _run_block("middle_block", middle, h, emb, self)
        for i, layers in enumerate(outputs):
            h = _run_block(f"output_blocks_{i}", layers, jnp.concatenate([h, skips.pop()], axis=-1), emb, self)
        h = nn.silu(GroupNorm32(self.param_dtype, name="out_0")(h.astype(wide)))
        return _conv(self.out_channels, "out_2", wide, self.param_dtype)(h)


class IDDPMUNetModel(UNetModel):
    """improved-diffusion ``UNetModel`` (ImageNet-64), NHWC; same call as :class:`UNetModel`.

    Legacy attention with ``num_heads`` heads, no residual resampling; the input convolution has
    ``model_channels`` outputs whatever ``channel_mult[0]``.  Build with :meth:`from_config`.
    """

    family = "improved_ddpm"
    input_ch_from_mult = False

    @classmethod
    def from_config(cls, kwargs: Mapping[str, Any], dtype: Dtype = jnp.float32,
                    param_dtype: Dtype = jnp.float32) -> IDDPMUNetModel:
        """Build from the official ``improved_diffusion.unet.UNetModel`` constructor kwargs.

        Raises:
          ValueError: unknown keys (e.g. ``num_head_channels``, which this family lacks), missing
            keys, fractional ``channel_mult``, ``channel_mult[0] != 1`` or ``conv_resample=False``
            (both fail in the original code).
        """
        what = "improved-DDPM UNetModel"
        cfg = _normalise(kwargs, _IDDPM_KEYS, what)
        if not all(isinstance(v, int) for v in cfg["channel_mult"]) or cfg["channel_mult"][0] != 1:
            raise ValueError(f"{what} config['channel_mult']={list(cfg['channel_mult'])!r} is not supported: "
                             "expected integers starting with 1 (the original fails otherwise)")
        if not cfg["conv_resample"]:
            raise ValueError(f"{what} config['conv_resample']=False is not supported: the original's "
                             "average-pooling Downsample cannot be constructed")
        module = cls(**{k: v for k, v in cfg.items() if k not in ("dropout", "dims", "use_checkpoint")},
                     dtype=dtype, param_dtype=param_dtype)
        _validate_layout(module, what)
        return module

    def to_config(self) -> Dict[str, Any]:
        config = super().to_config()
        return {k: config[k] for k in _IDDPM_KEYS}


class EncoderUNetModel(nn.Module):
    """guided-diffusion ``EncoderUNetModel`` (noisy ImageNet classifier), NHWC.

    ``__call__(x, t)``: x ``(batch, height, width, in_channels)``, t ``(batch,)`` or scalar; returns
    ``(batch, out_channels)`` float32 logits.  Guidance uses
    ``grad_x sum_i log_softmax(logits)[i, y_i]`` (unscaled; multiply by the classifier scale).
    """

    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 1000
    num_res_blocks: int = 2
    attention_resolutions: Tuple[int, ...] = ()
    channel_mult: Tuple[float, ...] = (1, 2, 4, 8)
    conv_resample: bool = True
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    pool: str = "adaptive"
    image_size: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    family = "guided_diffusion_classifier"
    has_decoder = False
    input_ch_from_mult = True
    num_classes = None

    @classmethod
    def from_config(cls, kwargs: Mapping[str, Any], dtype: Dtype = jnp.float32,
                    param_dtype: Dtype = jnp.float32) -> EncoderUNetModel:
        """Build from the official ``guided_diffusion.unet.EncoderUNetModel`` constructor kwargs.

        Raises:
          ValueError: unknown or missing keys, an unknown ``pool``, ``pool="attention"`` without
            ``num_head_channels``, or channel counts the original would reject.
        """
        what = "guided-diffusion EncoderUNetModel"
        cfg = _normalise(kwargs, _ENCODER_KEYS, what)
        module = cls(**{k: v for k, v in cfg.items() if k not in ("dropout", "dims", "use_checkpoint", "use_fp16")},
                     dtype=dtype, param_dtype=param_dtype)
        _validate_layout(module, what)
        return module

    def to_config(self) -> Dict[str, Any]:
        """The official constructor kwargs (JSON-serialisable) equivalent to this module."""
        return {
            "image_size": self.image_size, "in_channels": self.in_channels, "model_channels": self.model_channels,
            "out_channels": self.out_channels, "num_res_blocks": self.num_res_blocks,
            "attention_resolutions": list(self.attention_resolutions), "dropout": 0.0,
            "channel_mult": list(self.channel_mult), "conv_resample": self.conv_resample, "dims": 2,
            "use_checkpoint": False, "use_fp16": False, "num_heads": self.num_heads,
            "num_head_channels": self.num_head_channels, "num_heads_upsample": self.num_heads_upsample,
            "use_scale_shift_norm": self.use_scale_shift_norm, "resblock_updown": self.resblock_updown,
            "use_new_attention_order": self.use_new_attention_order, "pool": self.pool,
        }

    @nn.compact
    def __call__(self, x, t):
        x = jnp.asarray(x)
        _check_input(self, x)
        wide = _wide(self.dtype)
        emb = _time_embedding(self, t, x.shape[0], wide)
        _, inputs, middle, _, ds = _layout(self)
        spatial = self.pool.startswith("spatial")
        means = []
        h = x.astype(self.dtype)
        for i, layers in enumerate(inputs):
            h = _run_block(f"input_blocks_{i}", layers, h, emb, self)
            if spatial:
                means.append(h.astype(wide).mean(axis=(1, 2)))
        h = _run_block("middle_block", middle, h, emb, self).astype(wide)
        kw = dict(dtype=wide, param_dtype=self.param_dtype)
        if spatial:
            h = jnp.concatenate(means + [h.mean(axis=(1, 2))], axis=-1)
            if self.pool == "spatial":
                h = nn.relu(nn.Dense(2048, name="out_0", **kw)(h))
                return nn.Dense(self.out_channels, name="out_2", **kw)(h)
            h = nn.Dense(2048, name="out_0", **kw)(h)
            h = nn.silu(GroupNorm32(self.param_dtype, name="out_1")(h))
            return nn.Dense(self.out_channels, name="out_3", **kw)(h)
        h = nn.silu(GroupNorm32(self.param_dtype, name="out_0")(h))
        if self.pool == "adaptive":
            h = h.mean(axis=(1, 2), keepdims=True)
            return _conv(self.out_channels, "out_3", wide, self.param_dtype, kernel=1)(h)[:, 0, 0]
        if self.image_size is None:
            raise ValueError("pool='attention' needs image_size (its positional embedding has one entry per pixel)")
        return AttentionPool2d(self.image_size // ds, self.num_head_channels, self.out_channels, name="out_2",
                               **kw)(h)


FAMILIES = {
    "guided_diffusion": UNetModel,
    "guided_diffusion_classifier": EncoderUNetModel,
    "improved_ddpm": IDDPMUNetModel,
}


def from_config(kwargs: Mapping[str, Any], family: Optional[str] = None, dtype: Dtype = jnp.float32,
                param_dtype: Dtype = jnp.float32) -> nn.Module:
    """Build the network of ``family`` from official constructor kwargs.

    Args:
      kwargs: constructor kwargs; may carry the family under ``"family"`` instead of the argument.
      family: ``"guided_diffusion"``, ``"guided_diffusion_classifier"`` or ``"improved_ddpm"``.
      dtype, param_dtype: see the module docstring.

    Returns:
      A :class:`UNetModel`, :class:`EncoderUNetModel` or :class:`IDDPMUNetModel`.
    """
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"config must be a dict of constructor kwargs, got {type(kwargs).__name__}")
    kwargs = dict(kwargs)
    given = kwargs.pop("family", None)
    if family is not None and given is not None and family != given:
        raise ValueError(f"family {family!r} contradicts config['family']={given!r}")
    family = family or given
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; allowed: {sorted(FAMILIES)}")
    return FAMILIES[family].from_config(kwargs, dtype=dtype, param_dtype=param_dtype)


# -- parameter shapes and names --------------------------------------------------------------------


def dummy_inputs(module, batch: int = 1, size: Optional[int] = None):
    """Positional call arguments ``(x, t[, y])`` of the right shapes (zeros) for ``module.init``."""
    if size is None:
        size = module.image_size or 2 ** (len(module.channel_mult) - 1)
    args = [jnp.zeros((batch, size, size, module.in_channels), jnp.float32), jnp.zeros((batch,), jnp.float32)]
    if getattr(module, "num_classes", None) is not None:
        args.append(jnp.zeros((batch,), jnp.int32))
    return tuple(args)


def abstract_variables(module) -> Dict[str, Any]:
    """``{"params": tree of jax.ShapeDtypeStruct}`` without allocating (``jax.eval_shape``)."""
    return jax.eval_shape(module.init, jax.random.key(0), *dummy_inputs(module))


_INDEX = re.compile(r"_(\d+)(?=_|$)")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
_CONV1D = {"qkv", "proj_out", "qkv_proj", "c_proj"}  # torch Conv1d(kernel 1) = Flax Dense


def torch_key(path: Sequence[str]) -> str:
    """``("input_blocks_4_1", "qkv", "kernel")`` -> ``"input_blocks.4.1.qkv.weight"``."""
    *modules, leaf = path
    return ".".join([_INDEX.sub(r".\1", name) for name in modules] + [_LEAF.get(leaf, leaf)])


def torch_state_dict_shapes(module, variables: Optional[Mapping] = None) -> Dict[str, Tuple[int, ...]]:
    """The original PyTorch ``state_dict()`` key -> shape map of ``module`` (from an abstract init).

    Keys are in natural order (indices compared as numbers), not in the torch registration order.
    """
    from flax import traverse_util

    variables = abstract_variables(module) if variables is None else variables
    shapes = {}
    for path, leaf in traverse_util.flatten_dict(dict(variables["params"])).items():
        shape = tuple(leaf.shape)
        if path[-1] == "kernel" and len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
        elif path[-1] == "kernel":
            shape = (shape[1], shape[0]) + ((1,) if path[-2] in _CONV1D else ())
        shapes[torch_key(path)] = shape
    # natural order (input_blocks.2 before input_blocks.10) keeps error listings readable
    return dict(sorted(shapes.items(), key=lambda item: [(0, int(p)) if p.isdigit() else (1, p)
                                                         for p in item[0].split(".")]))
