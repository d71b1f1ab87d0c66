"""Flax (linen) port of diffusers' ``UNet2DConditionModel``: the Stable Diffusion 1.x / 2.x (and SDXL) UNet.

Supported family (everything Stable Diffusion 1.x, 2.x and SDXL base use):

* ``CrossAttnDownBlock2D`` / ``DownBlock2D`` down blocks, ``CrossAttnUpBlock2D`` / ``UpBlock2D`` up blocks,
  ``UNetMidBlock2DCrossAttn`` (or no mid block);
* ``Transformer2DModel`` with ``BasicTransformerBlock`` layers (LayerNorm -> self-attention, LayerNorm ->
  cross-attention on ``encoder_hidden_states``, LayerNorm -> GEGLU feed-forward, all residual), GroupNorm
  (eps 1e-6) and ``proj_in`` / ``proj_out`` as 1x1 convolutions or, with ``use_linear_projection``, linear
  layers (SD 2.x).  Both are the same map on NHWC features; only the stored weight shape differs, and the
  converter squeezes 1x1 convolution kernels;
* per-block ``attention_head_dim`` / ``num_attention_heads`` (int or list), ``cross_attention_dim`` (int or
  list), ``transformer_layers_per_block`` (int or list), ``layers_per_block`` (int or list);
* ``addition_embed_type="text_time"`` (SDXL: pooled text embedding + sinusoidal embedding of the six
  size / crop ``time_ids`` added to the time embedding).

Head counts: diffusers' config key ``attention_head_dim`` is, for this model, the number of heads (a
historical misnomer: SD 1.x has ``attention_head_dim=8`` and 8 heads of 40/80/160 channels; SD 2.x has
``[5, 10, 20, 20]`` heads of 64 channels).  ``num_attention_heads``, when set, takes precedence (the
intended name; diffusers' PyTorch class currently refuses it).

Conventions (as :mod:`scire_jax.models.unet2d`): NHWC layout; ``dtype`` is the computation dtype
(e.g. ``jnp.bfloat16``) while parameters are created in ``param_dtype`` (float32); the time
embedding and GroupNorm / LayerNorm statistics are float32, attention logits and softmax are float32
inside ``jax.nn.dot_product_attention``.  Dropout is not applied (inference network).  Parameter names
mirror diffusers' state-dict names (``down_blocks_0/attentions_0/transformer_blocks_0/attn1/to_q/kernel``
is ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight``).

Example:
    >>> import jax, jax.numpy as jnp
    >>> unet = UNet2DConditionModel.from_config({"block_out_channels": [32, 64], "layers_per_block": 1,
    ...     "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D",
    ...     "CrossAttnUpBlock2D"], "cross_attention_dim": 32, "attention_head_dim": 2, "norm_num_groups": 8})
    >>> x, t, ctx = jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), jnp.zeros((1, 7, 32))
    >>> params = jax.eval_shape(unet.init, jax.random.key(0), x, t, ctx)
    >>> jax.eval_shape(unet.apply, params, x, t, ctx).shape
    (1, 8, 8, 4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Resnet / GroupNorm / resampling / time-embedding blocks are shared with the UNet2DModel port.
from scire_jax.models.unet2d import (
    _conv,
    _Downsample,
    _GroupNorm,
    _ResnetBlock,
    _TimestepEmbedding,
    _Upsample,
    timestep_embedding,
)

__all__ = ["UNet2DConditionModel", "CROSS_ATTN_DOWN_BLOCK_TYPES", "CROSS_ATTN_UP_BLOCK_TYPES", "multi_head_attention"]

CROSS_ATTN_DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
CROSS_ATTN_UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", None)

Dtype = Any


def multi_head_attention(q, k, v, heads: int, mask=None, is_causal: bool = False):
    """Scaled dot-product attention of ``(batch, tokens, heads * head_dim)`` projections.

    Goes through ``jax.nn.dot_product_attention`` (float32 logits / softmax, fused kernels where the
    backend has them); ``mask`` broadcasts to ``(batch, heads, q_tokens, kv_tokens)`` (True = attend).
    """
    batch, q_len, inner = q.shape
    head_dim = inner // heads
    split = lambda y: y.reshape(y.shape[0], y.shape[1], heads, head_dim)  # noqa: E731
    out = jax.nn.dot_product_attention(split(q), split(k), split(v), mask=mask, is_causal=is_causal)
    return out.reshape(batch, q_len, inner)


# -- transformer ----------------------------------------------------------------------------------


class _Attention(nn.Module):
    """diffusers ``Attention`` as used by ``BasicTransformerBlock``: bias-free q/k/v, biased ``to_out.0``."""

    heads: int
    head_dim: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.heads * self.head_dim
        context = x if context is None else context
        q = nn.Dense(inner, use_bias=False, name="to_q", **kw)(x)
        k = nn.Dense(inner, use_bias=False, name="to_k", **kw)(context)
        v = nn.Dense(inner, use_bias=False, name="to_v", **kw)(context)
        out = multi_head_attention(q, k, v, self.heads)
        return nn.Dense(x.shape[-1], name="to_out_0", **kw)(out)


class _GEGLU(nn.Module):
    """``proj`` to twice the width, then ``value * gelu(gate)`` (exact erf GELU, as ``F.gelu``)."""

    features: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(2 * self.features, name="proj", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        value, gate = jnp.split(h, 2, axis=-1)
        return value * nn.gelu(gate, approximate=False)


class _FeedForward(nn.Module):
    """``FeedForward(dim, activation_fn="geglu", mult=4)``: ``net.0`` (GEGLU), ``net.2`` (output Linear)."""

    mult: int = 4
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _GEGLU(x.shape[-1] * self.mult, name="net_0", **kw)(x)
        return nn.Dense(x.shape[-1], name="net_2", **kw)(h)


class _BasicTransformerBlock(nn.Module):
    heads: int
    head_dim: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(heads=self.heads, head_dim=self.head_dim, **kw)
        x = x + _Attention(name="attn1", **attn)(nn.LayerNorm(1e-5, name="norm1", **kw)(x))
        x = x + _Attention(name="attn2", **attn)(nn.LayerNorm(1e-5, name="norm2", **kw)(x), context)
        return x + _FeedForward(name="ff", **kw)(nn.LayerNorm(1e-5, name="norm3", **kw)(x))


class _Transformer2D(nn.Module):
    """``Transformer2DModel`` on continuous NHWC input: GroupNorm, proj_in, blocks, proj_out, residual."""

    heads: int
    num_layers: int
    groups: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, height, width, channels = x.shape
        # A 1x1 convolution on NHWC is a Dense layer on the channel axis, so the conv and linear
        # projections of diffusers share one implementation (see the module docstring).
        h = _GroupNorm(self.groups, 1e-6, name="norm", **kw)(x).reshape(batch, height * width, channels)
        h = nn.Dense(channels, name="proj_in", **kw)(h)
        context = context.astype(h.dtype)
        for i in range(self.num_layers):
            h = _BasicTransformerBlock(self.heads, channels // self.heads, name=f"transformer_blocks_{i}", **kw)(
                h, context)
        h = nn.Dense(channels, name="proj_out", **kw)(h)
        return h.reshape(batch, height, width, channels) + x


# -- UNet blocks ------------------------------------------------------------------------------------


class _DownBlock(nn.Module):
    """``CrossAttnDownBlock2D`` (``attention``) or ``DownBlock2D``."""

    out_channels: int
    num_layers: int
    attention: bool
    heads: int
    transformer_layers: int
    add_downsample: bool
    downsample_padding: int
    groups: int
    eps: float
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, emb, context):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        states = []
        for j in range(self.num_layers):
            h = _ResnetBlock(self.out_channels, self.groups, self.eps, name=f"resnets_{j}", **kw)(h, emb)
            if self.attention:
                h = _Transformer2D(self.heads, self.transformer_layers, self.groups, name=f"attentions_{j}", **kw)(
                    h, context)
            states.append(h)
        if self.add_downsample:
            h = _Downsample(self.out_channels, self.downsample_padding, name="downsamplers_0", **kw)(h)
            states.append(h)
        return h, states


class _UpBlock(nn.Module):
    """``CrossAttnUpBlock2D`` (``attention``) or ``UpBlock2D``: each resnet eats one skip connection."""

    out_channels: int
    num_layers: int
    attention: bool
    heads: int
    transformer_layers: int
    add_upsample: bool
    groups: int
    eps: float
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, skips, emb, context):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        skips = list(skips)
        for j in range(self.num_layers):
            h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
            h = _ResnetBlock(self.out_channels, self.groups, self.eps, name=f"resnets_{j}", **kw)(h, emb)
            if self.attention:
                h = _Transformer2D(self.heads, self.transformer_layers, self.groups, name=f"attentions_{j}", **kw)(
                    h, context)
        if self.add_upsample:
            h = _Upsample(self.out_channels, name="upsamplers_0", **kw)(h)
        return h


class _MidBlockCrossAttn(nn.Module):
    """``UNetMidBlock2DCrossAttn`` with one attention: resnet, transformer, resnet."""

    heads: int
    transformer_layers: int
    groups: int
    eps: float
    output_scale_factor: float
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, emb, context):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = h.shape[-1]
        resnet = dict(out_channels=channels, groups=self.groups, eps=self.eps,
                      output_scale_factor=self.output_scale_factor, **kw)
        h = _ResnetBlock(name="resnets_0", **resnet)(h, emb)
        h = _Transformer2D(self.heads, self.transformer_layers, self.groups, name="attentions_0", **kw)(h, context)
        return _ResnetBlock(name="resnets_1", **resnet)(h, emb)


# -- configuration ----------------------------------------------------------------------------------

# config key -> (default, allowed values).  Options outside these values are refused by from_config;
# keys that concern training only (dropout, ...) or that are derived (upcast_attention: attention
# logits are float32 here anyway) are accepted and ignored.
_FIXED_VALUES = {
    "time_embedding_type": ("positional", ("positional",)),
    "resnet_time_scale_shift": ("default", ("default",)),
    "act_fn": ("silu", ("silu", "swish")),
    "class_embed_type": (None, (None,)),
    "num_class_embeds": (None, (None,)),
    "addition_embed_type": (None, (None, "text_time")),
    "encoder_hid_dim": (None, (None,)),
    "encoder_hid_dim_type": (None, (None,)),
    "time_cond_proj_dim": (None, (None,)),
    "timestep_post_act": (None, (None,)),
    "time_embedding_act_fn": (None, (None,)),
    "conv_in_kernel": (3, (3,)),
    "conv_out_kernel": (3, (3,)),
    "only_cross_attention": (False, (False,)),
    "mid_block_only_cross_attention": (None, (None, False)),
    "dual_cross_attention": (False, (False,)),
    "attention_type": ("default", ("default",)),
    "class_embeddings_concat": (False, (False,)),
    "cross_attention_norm": (None, (None,)),
    "resnet_skip_time_act": (False, (False,)),
    "resnet_out_scale_factor": (1.0, (1.0,)),
    "reverse_transformer_layers_per_block": (None, (None,)),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", MID_BLOCK_TYPES),
}


def _int(value, key, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"config[{key!r}]={value!r} is not supported: expected an integer >= {minimum}")
    return int(value)


def _number(value, key, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and not value > 0):
        kind = "a positive number" if positive else "a number"
        raise ValueError(f"config[{key!r}]={value!r} is not supported: expected {kind}")
    return float(value)


def _per_block(value, key, n, minimum=1):
    """An int (repeated) or a list with one int per block."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"config[{key!r}]={list(value)!r} must have one entry per down block ({n})")
        return tuple(_int(v, key, minimum) for v in value)
    return (_int(value, key, minimum),) * n


def _str_list(value, key):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"config[{key!r}]={value!r} is not supported: expected a list of block type names")
    return tuple(value)


def _str_or_int_list(value, key):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"config[{key!r}]={value!r} is not supported: expected a list")
    return tuple(value)


class UNet2DConditionModel(nn.Module):
    """Stable Diffusion UNet (diffusers ``UNet2DConditionModel``), NHWC; see the module docstring.

    Build it with :meth:`from_config` from a diffusers ``unet/config.json`` dict.  Per-block fields
    (``layers_per_block``, ``num_attention_heads``, ``cross_attention_dim``,
    ``transformer_layers_per_block``) are tuples in down-block order; the up blocks use them reversed,
    as diffusers does.  ``num_attention_heads`` holds the resolved head counts.
    """

    sample_size: Optional[int] = None
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: Tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: Tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: Tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    mid_block: bool = True
    layers_per_block: Tuple[int, ...] = (2, 2, 2, 2)
    num_attention_heads: Tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: Tuple[int, ...] = (768, 768, 768, 768)
    transformer_layers_per_block: Tuple[int, ...] = (1, 1, 1, 1)
    use_linear_projection: bool = False
    upcast_attention: bool = False
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    time_embedding_dim: Optional[int] = None
    center_input_sample: bool = False
    addition_embed_type: Optional[str] = None
    addition_time_embed_dim: Optional[int] = None
    projection_class_embeddings_input_dim: Optional[int] = None
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    # -- config ------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], dtype: Optional[Dtype] = None,
                    param_dtype: Dtype = jnp.float32) -> UNet2DConditionModel:
        """Build from a diffusers ``UNet2DConditionModel`` config dict (unknown keys are ignored).

        Raises:
          ValueError: naming the key, for options outside the supported family (class embeddings,
            ``encoder_hid_dim``, ``only_cross_attention``, other block types, ...) or inconsistent
            values (list lengths, channels not divisible by groups or head counts).
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"UNet config must be a dict, got {type(config).__name__}")
        cfg = dict(config)
        class_name = cfg.get("_class_name")
        if class_name is not None and class_name != "UNet2DConditionModel":
            raise ValueError(f"config['_class_name']={class_name!r} is not supported: expected 'UNet2DConditionModel'")
        for key, (default, allowed) in _FIXED_VALUES.items():
            value = cfg.get(key, default)
            if isinstance(value, (list, tuple)) and key == "only_cross_attention" and not any(value):
                continue
            if value not in allowed:
                raise ValueError(f"config[{key!r}]={value!r} is not supported; allowed: {list(allowed)}")
        block_out = tuple(_int(c, "block_out_channels") for c in
                          _str_or_int_list(cfg.get("block_out_channels", cls.block_out_channels), "block_out_channels"))
        down = _str_list(cfg.get("down_block_types", cls.down_block_types), "down_block_types")
        up = _str_list(cfg.get("up_block_types", cls.up_block_types), "up_block_types")
        for key, types, allowed in (("down_block_types", down, CROSS_ATTN_DOWN_BLOCK_TYPES),
                                    ("up_block_types", up, CROSS_ATTN_UP_BLOCK_TYPES)):
            for value in types:
                if value not in allowed:
                    raise ValueError(f"config[{key!r}] contains {value!r}, which is not supported; "
                                     f"allowed: {list(allowed)}")
        n = len(block_out)
        if n == 0 or len(down) != n or len(up) != n:
            raise ValueError(f"config['block_out_channels']={list(block_out)!r} must be non-empty with one entry per "
                             f"down block ({len(down)}) and per up block ({len(up)})")
        heads_value = cfg.get("num_attention_heads")
        heads_key = "num_attention_heads"
        if heads_value is None:  # diffusers' misnomer: attention_head_dim is the head count here
            heads_value, heads_key = cfg.get("attention_head_dim", 8), "attention_head_dim"
        heads = _per_block(heads_value, heads_key, n)
        cross_dim = _per_block(cfg.get("cross_attention_dim", 1280), "cross_attention_dim", n)
        if len(set(cross_dim)) != 1:  # one encoder_hidden_states tensor feeds every block
            raise ValueError(f"config['cross_attention_dim']={list(cross_dim)!r} is not supported: "
                             "expected one width for all blocks")
        layers = _per_block(cfg.get("layers_per_block", 2), "layers_per_block", n)
        t_layers_value = cfg.get("transformer_layers_per_block", 1)
        if isinstance(t_layers_value, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in t_layers_value):
            raise ValueError("config['transformer_layers_per_block'] with per-layer lists (asymmetric UNets) "
                             "is not supported")
        t_layers = _per_block(t_layers_value, "transformer_layers_per_block", n)
        groups = cfg.get("norm_num_groups", 32)
        if groups is None:
            raise ValueError("config['norm_num_groups']=None is not supported: expected a positive integer")
        groups = _int(groups, "norm_num_groups")
        for c in block_out:
            if c % groups:
                raise ValueError(f"config['norm_num_groups']={groups} does not divide "
                                 f"block_out_channels {list(block_out)}")
        mid_block = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None
        attn_channels = [(c, h) for c, h, kind in zip(block_out, heads, down) if kind.startswith("CrossAttn")]
        attn_channels += [(c, h) for c, h, kind in zip(block_out[::-1], heads[::-1], up)
                          if kind.startswith("CrossAttn")]
        if mid_block:
            attn_channels.append((block_out[-1], heads[-1]))
        for c, h in attn_channels:
            if c % h:
                raise ValueError(f"config[{heads_key!r}]={heads_value!r}: {h} heads do not divide the {c} channels "
                                 "of an attention block")
        padding = _int(cfg.get("downsample_padding", 1), "downsample_padding", minimum=0)
        sample_size = cfg.get("sample_size")
        if isinstance(sample_size, (list, tuple)):
            if len(sample_size) != 2 or sample_size[0] != sample_size[1]:
                raise ValueError(f"config['sample_size']={sample_size!r} is not supported: expected a square size")
            sample_size = sample_size[0]
        sample_size = None if sample_size is None else _int(sample_size, "sample_size")
        freq_shift = _number(cfg.get("freq_shift", 0), "freq_shift")
        if block_out[0] // 2 - freq_shift == 0:
            raise ValueError(f"config['freq_shift']={freq_shift!r} is not supported with {block_out[0]} channels")
        time_dim = cfg.get("time_embedding_dim")
        addition = cfg.get("addition_embed_type")
        add_time_dim = proj_dim = None
        if addition == "text_time":
            add_time_dim = _int(cfg.get("addition_time_embed_dim"), "addition_time_embed_dim")
            proj_dim = _int(cfg.get("projection_class_embeddings_input_dim"), "projection_class_embeddings_input_dim")
        return cls(
            sample_size=sample_size,
            in_channels=_int(cfg.get("in_channels", 4), "in_channels"),
            out_channels=_int(cfg.get("out_channels", 4), "out_channels"),
            block_out_channels=block_out,
            down_block_types=down,
            up_block_types=up,
            mid_block=mid_block,
            layers_per_block=layers,
            num_attention_heads=heads,
            cross_attention_dim=cross_dim,
            transformer_layers_per_block=t_layers,
            use_linear_projection=bool(cfg.get("use_linear_projection", False)),
            upcast_attention=bool(cfg.get("upcast_attention", False)),
            norm_num_groups=groups,
            norm_eps=_number(cfg.get("norm_eps", 1e-5), "norm_eps", positive=True),
            flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)),
            freq_shift=freq_shift,
            downsample_padding=padding,
            mid_block_scale_factor=_number(cfg.get("mid_block_scale_factor", 1.0), "mid_block_scale_factor", True),
            time_embedding_dim=None if time_dim is None else _int(time_dim, "time_embedding_dim"),
            center_input_sample=bool(cfg.get("center_input_sample", False)),
            addition_embed_type=addition,
            addition_time_embed_dim=add_time_dim,
            projection_class_embeddings_input_dim=proj_dim,
            dtype=dtype,
            param_dtype=param_dtype,
        )

    def to_config(self) -> dict:
        """A diffusers config dict (JSON-serialisable) for this model; head counts go in ``attention_head_dim``
        (the form diffusers' PyTorch class accepts)."""
        config = {
            "_class_name": "UNet2DConditionModel",
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "center_input_sample": self.center_input_sample,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "down_block_types": list(self.down_block_types),
            "mid_block_type": "UNetMidBlock2DCrossAttn" if self.mid_block else None,
            "up_block_types": list(self.up_block_types),
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": list(self.layers_per_block),
            "downsample_padding": self.downsample_padding,
            "mid_block_scale_factor": self.mid_block_scale_factor,
            "act_fn": "silu",
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "cross_attention_dim": list(self.cross_attention_dim),
            "transformer_layers_per_block": list(self.transformer_layers_per_block),
            "attention_head_dim": list(self.num_attention_heads),
            "use_linear_projection": self.use_linear_projection,
            "upcast_attention": self.upcast_attention,
            "time_embedding_dim": self.time_embedding_dim,
        }
        if self.addition_embed_type is not None:
            config.update(addition_embed_type=self.addition_embed_type,
                          addition_time_embed_dim=self.addition_time_embed_dim,
                          projection_class_embeddings_input_dim=self.projection_class_embeddings_input_dim)
        return config

    # -- helpers -----------------------------------------------------------------------------
    def dummy_inputs(self, batch: int = 1, seq_len: int = 77):
        """``ShapeDtypeStruct`` positional arguments for ``init`` / ``eval_shape`` (smallest valid size)."""
        size = 2 ** (len(self.block_out_channels) - 1)
        args = [jax.ShapeDtypeStruct((batch, size, size, self.in_channels), jnp.float32),
                jax.ShapeDtypeStruct((batch,), jnp.float32),
                jax.ShapeDtypeStruct((batch, seq_len, self.cross_attention_dim[0]), jnp.float32)]
        if self.addition_embed_type == "text_time":
            assert self.projection_class_embeddings_input_dim is not None and self.addition_time_embed_dim is not None
            text_dim = self.projection_class_embeddings_input_dim - 6 * self.addition_time_embed_dim
            args += [jax.ShapeDtypeStruct((batch, text_dim), jnp.float32),
                     jax.ShapeDtypeStruct((batch, 6), jnp.float32)]
        return tuple(args)

    def abstract_params(self):
        """Shapes of the ``"params"`` collection (``jax.eval_shape``; nothing is computed)."""
        return jax.eval_shape(lambda *a: self.init(jax.random.key(0), *a), *self.dummy_inputs(seq_len=1))["params"]

    # -- forward -------------------------------------------------------------------------------
    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states, text_embeds=None, time_ids=None):
        """Predict from ``sample`` (NHWC latents) at network time ``timesteps`` (``(batch,)`` or scalar).

        Args:
          sample: ``(batch, height, width, in_channels)``; height and width divisible by
            ``2 ** (len(block_out_channels) - 1)``.
          timesteps: discrete-time index (``0 .. 999``), float or int, ``(batch,)`` or scalar.
          encoder_hidden_states: ``(batch, tokens, cross_attention_dim)`` text embeddings.
          text_embeds, time_ids: SDXL only (``addition_embed_type="text_time"``): pooled text embedding
            ``(batch, D)`` and the six size / crop conditioning numbers ``(batch, 6)``.

        Returns:
          ``(batch, height, width, out_channels)`` in the computation dtype.
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if sample.ndim != 4 or sample.shape[-1] != self.in_channels:
            raise ValueError(f"UNet2DConditionModel expects NHWC input with {self.in_channels} channels, "
                             f"got shape {sample.shape}")
        levels = len(self.block_out_channels)
        factor = 2 ** (levels - 1)
        if sample.shape[1] % factor or sample.shape[2] % factor:
            raise ValueError(f"spatial size {sample.shape[1:3]} must be divisible by {factor}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != self.cross_attention_dim[0]:
            raise ValueError(f"encoder_hidden_states must have shape (batch, tokens, {self.cross_attention_dim[0]}), "
                             f"got {encoder_hidden_states.shape}")
        batch = sample.shape[0]
        compute_dtype = self.dtype or sample.dtype
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (batch,))
        base = self.block_out_channels[0]
        temb_dim = self.time_embedding_dim or base * 4
        t_feat = timestep_embedding(t, base, self.flip_sin_to_cos, self.freq_shift)
        emb = _TimestepEmbedding(temb_dim, name="time_embedding", **kw)(t_feat.astype(compute_dtype))
        if self.addition_embed_type == "text_time":
            if text_embeds is None or time_ids is None:
                raise ValueError("this UNet has addition_embed_type='text_time' (SDXL): pass text_embeds and time_ids")
            ids = jnp.asarray(time_ids, jnp.float32)
            time_feat = timestep_embedding(ids.reshape(-1), self.addition_time_embed_dim, self.flip_sin_to_cos,
                                           self.freq_shift).reshape(ids.shape[0], -1)
            add = jnp.concatenate([jnp.asarray(text_embeds, jnp.float32), time_feat], axis=-1)
            if add.shape[-1] != self.projection_class_embeddings_input_dim:
                raise ValueError(f"text_embeds + time_ids embed to {add.shape[-1]} features, expected "
                                 f"{self.projection_class_embeddings_input_dim}")
            emb = emb + _TimestepEmbedding(temb_dim, name="add_embedding", **kw)(add.astype(compute_dtype))
        elif text_embeds is not None or time_ids is not None:
            raise ValueError("text_embeds / time_ids given, but this UNet has no text_time addition embedding")
        context = encoder_hidden_states.astype(compute_dtype)

        groups, eps = self.norm_num_groups, self.norm_eps
        block_kw = dict(groups=groups, eps=eps, **kw)
        h = _conv(base, 3, name="conv_in", **kw)(sample.astype(compute_dtype))
        skips = [h]
        for i, (kind, channels) in enumerate(zip(self.down_block_types, self.block_out_channels)):
            h, states = _DownBlock(channels, self.layers_per_block[i], kind == "CrossAttnDownBlock2D",
                                   self.num_attention_heads[i], self.transformer_layers_per_block[i],
                                   add_downsample=i < levels - 1, downsample_padding=self.downsample_padding,
                                   name=f"down_blocks_{i}", **block_kw)(h, emb, context)
            skips.extend(states)

        if self.mid_block:
            h = _MidBlockCrossAttn(self.num_attention_heads[-1], self.transformer_layers_per_block[-1],
                                   output_scale_factor=self.mid_block_scale_factor, name="mid_block",
                                   **block_kw)(h, emb, context)

        for i, (kind, channels) in enumerate(zip(self.up_block_types, self.block_out_channels[::-1])):
            j = levels - 1 - i  # the down block this up block mirrors
            count = self.layers_per_block[j] + 1
            states, skips = skips[-count:], skips[:-count]
            h = _UpBlock(channels, count, kind == "CrossAttnUpBlock2D", self.num_attention_heads[j],
                         self.transformer_layers_per_block[j], add_upsample=i < levels - 1,
                         name=f"up_blocks_{i}", **block_kw)(h, states, emb, context)

        h = _GroupNorm(groups, eps, name="conv_norm_out", **kw)(h)
        return _conv(self.out_channels, 3, name="conv_out", **kw)(nn.silu(h))
