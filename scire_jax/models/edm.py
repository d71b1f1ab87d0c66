"""EDM networks and preconditioners (Karras et al. 2022, NVlabs/edm ``training/networks.py``) in Flax.

Networks: :class:`SongUNet` (DDPM++ / NCSN++) and :class:`DhariwalUNet` (ADM), built from
:class:`UNetBlock`; preconditioners :class:`VPPrecond`, :class:`VEPrecond`, :class:`iDDPMPrecond` and
:class:`EDMPrecond` that turn a network ``F`` into EDM's denoiser
``D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))``.
Constructor arguments and defaults are EDM's; :func:`from_edm_kwargs` builds a module from the
constructor kwargs an EDM pickle records.

Conventions:

* **Layout is NHWC** everywhere in this module (inputs, outputs, internal activations), like the rest
  of :mod:`scire_jax.models`.  EDM is NCHW: convert images at the call site with
  ``jnp.transpose(x, (0, 2, 3, 1))`` and back with ``(0, 3, 1, 2)``.  Weights keep EDM's meaning;
  :func:`scire_jax.io.edm_pickle.params_from_state_dict` transposes the kernels
  (``OIHW -> HWIO``, ``(out, in) -> (in, out)``).
* Parameter names mirror EDM's state-dict keys: ``enc_16x16_block0/conv0/kernel`` is
  ``enc.16x16_block0.conv0.weight`` (``enc_`` / ``dec_`` + the ModuleDict key), GroupNorm
  ``scale`` is ``weight``.  Two EDM buffers are parameters here because they carry data:
  ``map_noise/freqs`` (FourierEmbedding) and ``u`` (iDDPMPrecond).  The ``resample_filter`` buffers
  are not parameters; they follow from the ``resample_filter`` argument.
* ``noise_labels`` of a network is the already-conditioned ``c_noise`` (not sigma), shape
  ``(batch,)``, ``(1,)`` or scalar (broadcast over the batch).  ``sigma`` of a preconditioner likewise.
* ``dtype`` is the network's compute dtype (EDM's ``use_fp16`` corresponds to ``jnp.float16`` /
  ``jnp.bfloat16``); parameters are stored in ``param_dtype`` (float32).  As in EDM, the noise
  embedding and mapping MLP, GroupNorm statistics, the attention logits/softmax and all
  preconditioner arithmetic run in at least float32 (``promote_types(dtype, float32)``); with
  ``dtype=float64`` everything is float64 (EDM's arithmetic carried out in float64).
* Attention uses :func:`jax.nn.dot_product_attention` for float32 / bfloat16 (float32 logits and
  softmax, as EDM's ``AttentionOp``); float64 and float16 use an einsum form of ``AttentionOp``
  (softmax in float64 / float32).
* Schedules: every preconditioner's ``D(x; sigma)`` is a data prediction on EDM's own coordinates
  ``alpha = 1``, ``sigma = t`` (``schedules.edm``), which is how EDM's samplers and SciRE's
  ``edm_scire`` drive all four; VP and iDDPM also map natively onto VP schedules through their
  ``eps`` method (see each class and :func:`scire_jax.io.edm_pickle.schedule_mapping`).
* ``precision`` applies to convolutions and dense layers (``None``: backend default, which may be
  TF32 on recent GPUs; use ``jax.lax.Precision.HIGHEST`` for float32 parity there).
* Inference modules: ``dropout`` and ``label_dropout`` are accepted for signature compatibility and
  never applied (EDM evaluates in ``eval()`` mode).  Initialisers are generic (not EDM's); these
  modules are meant to receive EDM weights.

Example:
    >>> import jax, jax.numpy as jnp
    >>> net = SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=16,
    ...                channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
    >>> precond = EDMPrecond(model=net)
    >>> shapes = abstract_params(precond)
    >>> x = jnp.zeros((2, 8, 8, 3))
    >>> jax.eval_shape(lambda p: precond.apply({"params": p}, x, jnp.ones((2,))), shapes).shape
    (2, 8, 8, 3)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "SongUNet",
    "DhariwalUNet",
    "UNetBlock",
    "VPPrecond",
    "VEPrecond",
    "iDDPMPrecond",
    "EDMPrecond",
    "NETWORK_CLASSES",
    "PRECOND_CLASSES",
    "DEFAULT_MODEL_TYPE",
    "from_edm_kwargs",
    "example_inputs",
    "abstract_params",
    "resample_kernel",
    "iddpm_sigmas",
    "vp_sigma",
    "vp_sigma_inv",
]

Dtype = Any
_DN = ("NHWC", "HWIO", "NHWC")


def _at_least_f32(dtype) -> jnp.dtype:
    """EDM keeps these computations in float32 even when the network runs in fp16."""
    return jnp.promote_types(jnp.dtype(dtype), jnp.float32)


def resample_kernel(resample_filter: Sequence[float]) -> np.ndarray:
    """EDM's 2-D resampling filter ``outer(f, f) / sum(f)^2`` (float32, computed as EDM does)."""
    f = np.asarray(resample_filter, dtype=np.float32)
    return np.outer(f, f) / np.square(f.sum(dtype=np.float32))


def _broadcast_labels(labels, batch: int, dtype) -> jax.Array:
    """Noise labels / sigma of shape (), (1,) or (batch,) -> (batch,) (EDM broadcasts [1])."""
    labels = jnp.asarray(labels).astype(dtype).reshape(-1)
    if labels.shape[0] not in (1, batch):
        raise ValueError(f"noise labels / sigma of shape {labels.shape} do not match the batch size {batch}")
    return jnp.broadcast_to(labels, (batch,))


# -- layers -----------------------------------------------------------------------------------------


class Conv2d(nn.Module):
    """EDM ``Conv2d``: optional FIR up/downsampling (``resample_filter``) around a ``kernel`` x ``kernel``
    convolution; ``kernel=0`` is pure resampling (no parameters).  NHWC, kernel HWIO."""

    in_channels: int
    out_channels: int
    kernel: int
    bias: bool = True
    up: bool = False
    down: bool = False
    resample_filter: Tuple[float, ...] = (1, 1)
    fused_resample: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    def _conv(self, x, w, stride=1, padding=0, groups=1, lhs_dilation=1):
        return lax.conv_general_dilated(
            x, w, (stride, stride), ((padding, padding), (padding, padding)),
            lhs_dilation=(lhs_dilation, lhs_dilation), dimension_numbers=_DN,
            feature_group_count=groups, precision=self.precision)

    def _filter(self, channels, scale=1.0):
        # Depthwise HWIO filter: the same 2-D filter for every channel (EDM's f.tile([C,1,1,1])).
        f = resample_kernel(self.resample_filter) * np.float32(scale)
        return jnp.asarray(np.broadcast_to(f[:, :, None, None], f.shape + (1, channels)), dtype=self.dtype)

    def _up(self, x, scale_pad):
        # conv_transpose2d(x, 4 f, groups=C, stride=2, padding=p) == dilated input, flipped filter,
        # padding k - 1 - p.
        f = self._filter(x.shape[-1], 4.0)[::-1, ::-1]
        return self._conv(x, f, padding=f.shape[0] - 1 - scale_pad, groups=x.shape[-1], lhs_dilation=2)

    @nn.compact
    def __call__(self, x):
        if self.up and self.down:
            raise ValueError("Conv2d: up and down are exclusive")
        x = x.astype(self.dtype)
        w = b = None
        if self.kernel:
            w = self.param("kernel", nn.initializers.lecun_normal(),
                           (self.kernel, self.kernel, self.in_channels, self.out_channels), self.param_dtype)
            w = w.astype(self.dtype)
            if self.bias:
                b = self.param("bias", nn.initializers.zeros, (self.out_channels,), self.param_dtype).astype(self.dtype)
        resample = self.up or self.down
        w_pad = self.kernel // 2
        f_pad = (len(self.resample_filter) - 1) // 2 if resample else 0

        if self.fused_resample and self.up and w is not None:
            x = self._up(x, max(f_pad - w_pad, 0))
            x = self._conv(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = self._conv(x, w, padding=w_pad + f_pad)
            x = self._conv(x, self._filter(self.out_channels), stride=2, groups=self.out_channels)
        else:
            if self.up:
                x = self._up(x, f_pad)
            if self.down:
                x = self._conv(x, self._filter(x.shape[-1]), stride=2, padding=f_pad, groups=x.shape[-1])
            if w is not None:
                x = self._conv(x, w, padding=w_pad)
        if b is not None:
            x = x + b
        return x


class GroupNorm(nn.Module):
    """EDM ``GroupNorm``: ``min(num_groups, C // min_channels_per_group)`` groups, statistics in >= float32."""

    num_channels: int
    num_groups: int = 32
    min_channels_per_group: int = 4
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def groups(self) -> int:
        return min(self.num_groups, self.num_channels // self.min_channels_per_group)

    @nn.compact
    def __call__(self, x):
        channels = self.num_channels
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        return _group_norm(x, scale, bias, self.groups, float(self.eps), jnp.dtype(self.dtype))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _group_norm(x, scale, bias, groups, eps, dtype):
    # One small program per shape: cheap to compile when the network runs eagerly (nested under an
    # outer jit it is simply inlined).
    channels = x.shape[-1]
    stat = _at_least_f32(dtype)
    g = x.astype(stat).reshape(x.shape[:-1] + (groups, channels // groups))
    axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
    mean = jnp.mean(g, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)  # biased, as torch
    g = ((g - mean) * lax.rsqrt(var + jnp.asarray(eps, stat))).reshape(x.shape)
    return (g * scale.astype(stat) + bias.astype(stat)).astype(dtype)


@functools.partial(jax.jit, static_argnums=(3,))
def _attention(q, k, v, dtype):
    """softmax(q k^T / sqrt(d)) v over [batch, tokens, heads, head_dim]; logits and softmax in >= float32."""
    head_dim = q.shape[-1]
    if dtype in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        return jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(head_dim))
    # float64 (dot_product_attention takes the softmax in float32) and float16 (its F16_F16_F32 dot is
    # not available on every backend): EDM's AttentionOp literally, q and k / sqrt(d) cast up first.
    wide = _at_least_f32(dtype)
    logits = jnp.einsum("btnh,bsnh->bnts", q.astype(wide), (k / math.sqrt(head_dim)).astype(wide))
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bnts,bsnh->btnh", weights, v)


class UNetBlock(nn.Module):
    """EDM ``UNetBlock``: GroupNorm-SiLU-Conv, embedding (additive or adaptive scale/shift), second
    conv, skip connection, optional multi-head self-attention; optional up/downsampling."""

    in_channels: int
    out_channels: int
    emb_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    num_heads: Optional[int] = None
    channels_per_head: int = 64
    dropout: float = 0.0
    skip_scale: float = 1.0
    eps: float = 1e-5
    resample_filter: Tuple[float, ...] = (1, 1)
    resample_proj: bool = False
    adaptive_scale: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @property
    def heads(self) -> int:
        """Attention heads; 0 when ``attention`` is off or (EDM quirk) ``out_channels < channels_per_head``."""
        if not self.attention:
            return 0
        return self.num_heads if self.num_heads is not None else self.out_channels // self.channels_per_head

    @nn.compact
    def __call__(self, x, emb):
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"UNetBlock expects {self.in_channels} input channels, got {x.shape[-1]}")
        kw: Dict[str, Any] = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ckw: Dict[str, Any] = dict(kw, precision=self.precision, resample_filter=tuple(self.resample_filter))
        cin, cout = self.in_channels, self.out_channels
        skip_scale = float(self.skip_scale)
        x = x.astype(self.dtype)
        orig = x
        x = GroupNorm(cin, eps=self.eps, name="norm0", **kw)(x)
        x = Conv2d(cin, cout, 3, up=self.up, down=self.down, name="conv0", **ckw)(nn.silu(x))
        # EDM computes affine(emb) in the embedding's dtype and casts the result to x's dtype.
        params = nn.Dense(cout * (2 if self.adaptive_scale else 1), dtype=_at_least_f32(self.dtype),
                          param_dtype=self.param_dtype, precision=self.precision, name="affine")(emb)
        params = params.astype(self.dtype)[:, None, None, :]
        norm1 = GroupNorm(cout, eps=self.eps, name="norm1", **kw)
        if self.adaptive_scale:
            scale, shift = jnp.split(params, 2, axis=-1)
            x = nn.silu(shift + norm1(x) * (scale + 1))
        else:
            x = nn.silu(norm1(x + params))
        x = Conv2d(cout, cout, 3, name="conv1", **ckw)(x)
        if cout != cin or self.up or self.down:
            kernel = 1 if self.resample_proj or cout != cin else 0
            orig = Conv2d(cin, cout, kernel, up=self.up, down=self.down, name="skip", **ckw)(orig)
        x = (x + orig) * skip_scale

        heads = self.heads
        if heads:
            batch, height, width, _ = x.shape
            qkv = Conv2d(cout, cout * 3, 1, name="qkv", **ckw)(GroupNorm(cout, eps=self.eps, name="norm2", **kw)(x))
            # EDM's channel order of qkv is (head, channel, {q,k,v}).
            qkv = qkv.reshape(batch, height * width, heads, cout // heads, 3)
            a = _attention(qkv[..., 0], qkv[..., 1], qkv[..., 2], jnp.dtype(self.dtype))
            a = a.reshape(batch, height, width, cout)
            x = (Conv2d(cout, cout, 1, name="proj", **ckw)(a) + x) * skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding ``[cos(x f), sin(x f)]``, ``f_k = (1/max_positions)^(k / (C/2 - endpoint))``."""

    num_channels: int
    max_positions: int = 10000
    endpoint: bool = False
    dtype: Dtype = jnp.float32

    def __call__(self, x):
        half = self.num_channels // 2
        freqs = jnp.arange(half, dtype=self.dtype) / (half - (1 if self.endpoint else 0))
        freqs = jnp.power(jnp.asarray(1.0 / self.max_positions, self.dtype), freqs)
        x = x.astype(self.dtype)[:, None] * freqs[None, :]
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2 pi x f), sin(2 pi x f)]``; ``freqs`` is EDM's (random) buffer."""

    num_channels: int
    scale: float = 16.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        freqs = self.param("freqs", nn.initializers.normal(self.scale), (self.num_channels // 2,), self.param_dtype)
        x = x.astype(self.dtype)[:, None] * (2 * np.pi * freqs.astype(self.dtype))[None, :]
        return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


# -- networks ---------------------------------------------------------------------------------------


def _check_labels(name, labels, dim, batch, dtype):
    if labels is None:
        raise ValueError(f"this network has {name}_dim={dim}: pass {name}_labels of shape (batch, {dim})")
    labels = jnp.asarray(labels).astype(dtype).reshape(-1, dim)
    return jnp.broadcast_to(labels, (batch, dim))


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ U-Net of EDM (``SongUNet``); call ``(x, noise_labels, class_labels, augment_labels)``.

    Args (of ``__call__``):
      x: ``(batch, H, W, in_channels)`` NHWC.
      noise_labels: ``c_noise``, shape ``(batch,)``, ``(1,)`` or scalar.
      class_labels: ``(batch, label_dim)`` (one-hot or soft); required iff ``label_dim > 0``.
      augment_labels: ``(batch, augment_dim)``; used only if ``augment_dim > 0`` and given.

    Returns:
      ``(batch, H, W, out_channels)`` in ``dtype``.
    """

    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 128
    channel_mult: Tuple[int, ...] = (1, 2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: Tuple[int, ...] = (16,)
    dropout: float = 0.10
    label_dropout: float = 0.0
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    encoder_type: str = "standard"
    decoder_type: str = "standard"
    resample_filter: Tuple[float, ...] = (1, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, noise_labels, class_labels=None, augment_labels=None):
        if self.embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type={self.embedding_type!r}; expected 'fourier' or 'positional'")
        if self.encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type={self.encoder_type!r}; expected 'standard', 'skip' or 'residual'")
        if self.decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type={self.decoder_type!r}; expected 'standard' or 'skip'")
        edt = _at_least_f32(self.dtype)
        kw: Dict[str, Any] = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ckw: Dict[str, Any] = dict(kw, precision=self.precision)
        dense: Dict[str, Any] = dict(dtype=edt, param_dtype=self.param_dtype, precision=self.precision)
        emb_channels = self.model_channels * self.channel_mult_emb
        noise_channels = self.model_channels * self.channel_mult_noise
        filt = tuple(self.resample_filter)
        block_kwargs: Dict[str, Any] = dict(emb_channels=emb_channels, num_heads=1, dropout=self.dropout, skip_scale=math.sqrt(0.5),
                            eps=1e-6, resample_filter=filt, resample_proj=True, adaptive_scale=False, **ckw)
        batch = x.shape[0]

        # Mapping.
        labels = _broadcast_labels(noise_labels, batch, edt)
        if self.embedding_type == "positional":
            emb = PositionalEmbedding(noise_channels, endpoint=True, dtype=edt, name="map_noise")(labels)
        else:
            emb = FourierEmbedding(noise_channels, dtype=edt, param_dtype=self.param_dtype, name="map_noise")(labels)
        emb = jnp.concatenate(jnp.split(emb, 2, axis=1)[::-1], axis=1)  # EDM swaps the cos/sin halves
        if self.label_dim:
            tmp = _check_labels("class", class_labels, self.label_dim, batch, edt)
            emb = emb + nn.Dense(noise_channels, name="map_label", **dense)(tmp * math.sqrt(self.label_dim))
        if self.augment_dim and augment_labels is not None:
            aug = _check_labels("augment", augment_labels, self.augment_dim, batch, edt)
            emb = emb + nn.Dense(noise_channels, use_bias=False, name="map_augment", **dense)(aug)
        emb = nn.silu(nn.Dense(emb_channels, name="map_layer0", **dense)(emb))
        emb = nn.silu(nn.Dense(emb_channels, name="map_layer1", **dense)(emb))

        # Encoder (EDM's ModuleDict order; the "aux" entries carry the skip/residual input pyramid).
        x = x.astype(self.dtype)
        skips = []
        aux = x
        cout = self.in_channels
        caux = self.in_channels
        for level, mult in enumerate(self.channel_mult):
            res = self.img_resolution >> level
            if level == 0:
                cin, cout = cout, self.model_channels
                x = Conv2d(cin, cout, 3, name=f"enc_{res}x{res}_conv", **ckw)(x)
                skips.append(x)
            else:
                x = UNetBlock(cout, cout, down=True, name=f"enc_{res}x{res}_down", **block_kwargs)(x, emb)
                skips.append(x)
                if self.encoder_type == "skip":
                    aux = Conv2d(caux, caux, 0, down=True, resample_filter=filt, name=f"enc_{res}x{res}_aux_down",
                                 **ckw)(aux)
                    x = skips[-1] = x + Conv2d(caux, cout, 1, name=f"enc_{res}x{res}_aux_skip", **ckw)(aux)
                if self.encoder_type == "residual":
                    res_conv = Conv2d(caux, cout, 3, down=True, resample_filter=filt, fused_resample=True,
                                      name=f"enc_{res}x{res}_aux_residual", **ckw)
                    x = skips[-1] = aux = (x + res_conv(aux)) / math.sqrt(2)
                    caux = cout
            for idx in range(self.num_blocks):
                cin, cout = cout, self.model_channels * mult
                x = UNetBlock(cin, cout, attention=res in self.attn_resolutions,
                              name=f"enc_{res}x{res}_block{idx}", **block_kwargs)(x, emb)
                skips.append(x)

        # Decoder.
        aux = None
        last = len(self.channel_mult) - 1
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            res = self.img_resolution >> level
            if level == last:
                x = UNetBlock(cout, cout, attention=True, name=f"dec_{res}x{res}_in0", **block_kwargs)(x, emb)
                x = UNetBlock(cout, cout, name=f"dec_{res}x{res}_in1", **block_kwargs)(x, emb)
            else:
                x = UNetBlock(cout, cout, up=True, name=f"dec_{res}x{res}_up", **block_kwargs)(x, emb)
            for idx in range(self.num_blocks + 1):
                skip = skips.pop()
                cin, cout = cout + skip.shape[-1], self.model_channels * mult
                x = jnp.concatenate([x, skip], axis=-1)
                x = UNetBlock(cin, cout, attention=(idx == self.num_blocks and res in self.attn_resolutions),
                              name=f"dec_{res}x{res}_block{idx}", **block_kwargs)(x, emb)
            if self.decoder_type == "skip" or level == 0:
                if self.decoder_type == "skip" and level < last:
                    aux = Conv2d(self.out_channels, self.out_channels, 0, up=True, resample_filter=filt,
                                 name=f"dec_{res}x{res}_aux_up", **ckw)(aux)
                tmp = GroupNorm(cout, eps=1e-6, name=f"dec_{res}x{res}_aux_norm", **kw)(x)
                tmp = Conv2d(cout, self.out_channels, 3, name=f"dec_{res}x{res}_aux_conv", **ckw)(nn.silu(tmp))
                aux = tmp if aux is None else tmp + aux
        return aux


class DhariwalUNet(nn.Module):
    """ADM U-Net of EDM (``DhariwalUNet``); same call signature and layout as :class:`SongUNet`."""

    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 192
    channel_mult: Tuple[int, ...] = (1, 2, 3, 4)
    channel_mult_emb: int = 4
    num_blocks: int = 3
    attn_resolutions: Tuple[int, ...] = (32, 16, 8)
    dropout: float = 0.10
    label_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, noise_labels, class_labels=None, augment_labels=None):
        edt = _at_least_f32(self.dtype)
        kw: Dict[str, Any] = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ckw: Dict[str, Any] = dict(kw, precision=self.precision)
        dense: Dict[str, Any] = dict(dtype=edt, param_dtype=self.param_dtype, precision=self.precision)
        emb_channels = self.model_channels * self.channel_mult_emb
        block_kwargs: Dict[str, Any] = dict(emb_channels=emb_channels, channels_per_head=64, dropout=self.dropout, **ckw)
        batch = x.shape[0]

        # Mapping (ADM: no cos/sin swap; class embedding added after the MLP, without sqrt(label_dim)).
        emb = PositionalEmbedding(self.model_channels, dtype=edt, name="map_noise")(
            _broadcast_labels(noise_labels, batch, edt))
        if self.augment_dim and augment_labels is not None:
            aug = _check_labels("augment", augment_labels, self.augment_dim, batch, edt)
            emb = emb + nn.Dense(self.model_channels, use_bias=False, name="map_augment", **dense)(aug)
        emb = nn.silu(nn.Dense(emb_channels, name="map_layer0", **dense)(emb))
        emb = nn.Dense(emb_channels, name="map_layer1", **dense)(emb)
        if self.label_dim:
            tmp = _check_labels("class", class_labels, self.label_dim, batch, edt)
            emb = emb + nn.Dense(emb_channels, use_bias=False, name="map_label", **dense)(tmp)
        emb = nn.silu(emb)

        # Encoder.
        x = x.astype(self.dtype)
        skips = []
        cout = self.in_channels
        for level, mult in enumerate(self.channel_mult):
            res = self.img_resolution >> level
            if level == 0:
                cin, cout = cout, self.model_channels * mult
                x = Conv2d(cin, cout, 3, name=f"enc_{res}x{res}_conv", **ckw)(x)
            else:
                x = UNetBlock(cout, cout, down=True, name=f"enc_{res}x{res}_down", **block_kwargs)(x, emb)
            skips.append(x)
            for idx in range(self.num_blocks):
                cin, cout = cout, self.model_channels * mult
                x = UNetBlock(cin, cout, attention=res in self.attn_resolutions,
                              name=f"enc_{res}x{res}_block{idx}", **block_kwargs)(x, emb)
                skips.append(x)

        # Decoder.
        last = len(self.channel_mult) - 1
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            res = self.img_resolution >> level
            if level == last:
                x = UNetBlock(cout, cout, attention=True, name=f"dec_{res}x{res}_in0", **block_kwargs)(x, emb)
                x = UNetBlock(cout, cout, name=f"dec_{res}x{res}_in1", **block_kwargs)(x, emb)
            else:
                x = UNetBlock(cout, cout, up=True, name=f"dec_{res}x{res}_up", **block_kwargs)(x, emb)
            for idx in range(self.num_blocks + 1):
                skip = skips.pop()
                cin, cout = cout + skip.shape[-1], self.model_channels * mult
                x = jnp.concatenate([x, skip], axis=-1)
                x = UNetBlock(cin, cout, attention=res in self.attn_resolutions,
                              name=f"dec_{res}x{res}_block{idx}", **block_kwargs)(x, emb)
        x = GroupNorm(cout, name="out_norm", **kw)(x)
        return Conv2d(cout, self.out_channels, 3, name="out_conv", **ckw)(nn.silu(x))


# -- preconditioners ----------------------------------------------------------------------------------


def vp_sigma(t, beta_d: float = 19.9, beta_min: float = 0.1):
    """EDM's VP noise level ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` (numpy or jnp)."""
    xp = jnp if isinstance(t, jax.Array) else np
    return xp.sqrt(xp.exp(0.5 * beta_d * (t ** 2) + beta_min * t) - 1)


def vp_sigma_inv(sigma, beta_d: float = 19.9, beta_min: float = 0.1):
    """Inverse of :func:`vp_sigma`, written as EDM writes it (``log(1 + sigma^2)``, not ``log1p``)."""
    xp = jnp if isinstance(sigma, jax.Array) else np
    return (xp.sqrt(beta_min ** 2 + 2 * beta_d * xp.log(1 + sigma ** 2)) - beta_min) / beta_d


def _r32(value) -> Any:
    """One float32 operation as torch does it on float32 tensors: exact in float64, rounded once."""
    return np.float32(np.float64(value))


def _vp_sigma_float32(t: float, beta_d: float, beta_min: float) -> float:
    """VPPrecond.sigma(t) as EDM evaluates it on a float32 tensor (``sigma_min`` is 2^-10, not ~1e-3)."""
    # torch: ((0.5 * beta_d * t ** 2 + beta_min * t).exp() - 1).sqrt(), python scalars cast to float32.
    t32 = np.float64(np.float32(t))
    exponent = _r32(np.float64(_r32(0.5 * beta_d)) * np.float64(_r32(t32 * t32)))
    exponent = _r32(np.float64(exponent) + np.float64(_r32(np.float64(np.float32(beta_min)) * t32)))
    return float(_r32(np.sqrt(np.float64(_r32(np.float64(_r32(np.exp(np.float64(exponent)))) - 1.0)))))


def iddpm_sigmas(C_1: float = 0.001, C_2: float = 0.008, M: int = 1000) -> np.ndarray:
    """iDDPMPrecond's noise-level table ``u[0..M]`` (decreasing, ``u[M] = 0``), recomputed in float32 steps.

    Matches EDM's float32 buffer to ~1e-5 relative (not bit for bit); loading uses the stored buffer,
    this only initialises fresh modules.
    """
    def alpha_bar(j):
        x = _r32(_r32(_r32(0.5 * np.pi * j) / M) / (C_2 + 1))
        return _r32(np.float64(_r32(np.sin(np.float64(x)))) ** 2)

    u = np.zeros(M + 1, dtype=np.float32)
    for j in range(M, 0, -1):
        ratio = max(_r32(np.float64(alpha_bar(j - 1)) / alpha_bar(j)), np.float32(C_1))
        num = _r32(np.float64(_r32(np.float64(u[j]) ** 2)) + 1)
        u[j - 1] = _r32(np.sqrt(np.float64(_r32(np.float64(_r32(np.float64(num) / ratio)) - 1))))
    return u


class _Precond(nn.Module):
    """Shared input handling of EDM's preconditioners (casts, class-label defaults, D = c_skip x + c_out F)."""

    def _dtype(self):
        return _at_least_f32(self.model.dtype)

    def _prepare(self, x, sigma, class_labels):
        dt = self._dtype()
        x = jnp.asarray(x).astype(dt)
        batch = x.shape[0]
        sigma = _broadcast_labels(sigma, batch, dt)
        label_dim = self.model.label_dim
        if label_dim == 0:
            class_labels = None
        elif class_labels is None:  # EDM: zeros([1, label_dim]), i.e. the unconditional embedding
            class_labels = jnp.zeros((batch, label_dim), dt)
        else:
            class_labels = jnp.broadcast_to(jnp.asarray(class_labels).astype(dt).reshape(-1, label_dim),
                                            (batch, label_dim))
        return x, sigma, class_labels

    def _model(self, x_in, c_noise, class_labels, augment_labels):
        out = self.model(x_in.astype(self.model.dtype), c_noise, class_labels, augment_labels)
        return out.astype(self._dtype())

    def _denoise(self, x, sigma, class_labels, augment_labels, c_skip, c_out, c_in, c_noise, channels=None):
        def col(v):
            return v[:, None, None, None]

        F = self._model(col(c_in) * x, c_noise, class_labels, augment_labels)
        if channels is not None:
            F = F[..., :channels]
        return col(c_skip) * x + col(c_out) * F

    def round_sigma(self, sigma):
        """Noise levels the model supports (identity except for :class:`iDDPMPrecond`)."""
        return sigma


class VPPrecond(_Precond):
    """EDM's VP preconditioning: ``c_skip = 1``, ``c_out = -sigma``, ``c_in = 1/sqrt(sigma^2 + 1)``,
    ``c_noise = (M - 1) sigma_inv(sigma)``; ``F`` is an epsilon-prediction network.

    Schedule mapping: EDM's VP process is scire's ``schedules.linear(beta_0=beta_min,
    beta_1=beta_min + beta_d)`` (``log alpha_t = -beta_d t^2 / 4 - beta_min t / 2``, ``sigma_edm =
    sigma_t / alpha_t``).  On that schedule the noise prediction is exactly the network output
    :meth:`eps` at network time ``(M - 1) t`` (scire ``time_input="scaled"``, scale ``M - 1``), since
    ``c_in x_edm = alpha_t x_edm = x_t``; equivalently ``x0 = D(x_t / alpha_t; sigma_t / alpha_t)``.
    """

    model: nn.Module
    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000
    epsilon_t: float = 1e-5

    @property
    def sigma_min(self) -> float:
        """``sigma(epsilon_t)`` evaluated in float32 as EDM does (``2^-10`` for the defaults)."""
        return _vp_sigma_float32(self.epsilon_t, self.beta_d, self.beta_min)

    @property
    def sigma_max(self) -> float:
        """``sigma(1)`` evaluated in float32 as EDM does."""
        return _vp_sigma_float32(1.0, self.beta_d, self.beta_min)

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        """Denoiser ``D(x; sigma)``: x ``(B, H, W, C)`` NHWC, sigma ``(B,)``/``(1,)``/scalar; returns NHWC."""
        x, sigma, class_labels = self._prepare(x, sigma, class_labels)
        c_noise = (self.M - 1) * vp_sigma_inv(sigma, float(self.beta_d), float(self.beta_min))
        one = jnp.ones_like(sigma)
        return self._denoise(x, sigma, class_labels, augment_labels, one, -sigma, 1 / jnp.sqrt(sigma ** 2 + 1), c_noise)

    def eps(self, x_t, noise_labels, class_labels=None, augment_labels=None):
        """Noise prediction ``F(x_t; noise_labels)`` of the VP-schedule state ``x_t`` at network time
        ``noise_labels = (M - 1) t``."""
        x_t, noise_labels, class_labels = self._prepare(x_t, noise_labels, class_labels)
        return self._model(x_t, noise_labels, class_labels, augment_labels)


class VEPrecond(_Precond):
    """EDM's VE preconditioning: ``c_skip = 1``, ``c_out = sigma``, ``c_in = 1``, ``c_noise = log(sigma / 2)``.

    Schedule mapping: ``schedules.edm(sigma_min, sigma_max)`` (``alpha = 1``, ``sigma = t``); ``D`` is
    the data prediction at ``sigma = t`` (scire ``prediction="x_start"``, ``time_input="continuous"``).
    """

    model: nn.Module
    sigma_min: float = 0.02
    sigma_max: float = 100.0

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        """Denoiser ``D(x; sigma)`` (NHWC)."""
        x, sigma, class_labels = self._prepare(x, sigma, class_labels)
        one = jnp.ones_like(sigma)
        return self._denoise(x, sigma, class_labels, augment_labels, one, sigma, one, jnp.log(0.5 * sigma))


class iDDPMPrecond(_Precond):  # noqa: N801 - EDM's class name
    """EDM's iDDPM preconditioning: ``c_skip = 1``, ``c_out = -sigma``, ``c_in = 1/sqrt(sigma^2 + 1)``,
    ``c_noise = M - 1 - argmin_j |u_j - sigma|``; the network has ``2 C`` outputs, the first ``C`` are used.

    ``u`` (parameter, EDM's buffer) is the table of :func:`iddpm_sigmas`.  Nearest-entry rounding uses
    exact ``|u_j - sigma|`` (EDM's ``torch.cdist`` may use the ``|a|^2 + |b|^2 - 2ab`` expansion, which
    can pick the other neighbour right at a midpoint).

    Schedule mapping: discrete VP with ``alphas_cumprod[n - 1] = 1 / (1 + u[M - n]^2)``, ``n = 1..M``,
    i.e. ``schedules.discrete(alphas_cumprod=1 / (1 + u[:M][::-1]^2))``; the network's :meth:`eps`
    at network time ``n - 1`` (scire ``time_input="discrete"`` for ``M = 1000``) is the noise prediction.
    """

    model: nn.Module
    C_1: float = 0.001
    C_2: float = 0.008
    M: int = 1000

    def setup(self):
        def init_u(key, shape, dtype):
            return jnp.asarray(iddpm_sigmas(self.C_1, self.C_2, self.M), dtype)

        self.u = self.param("u", init_u, (self.M + 1,), self.model.param_dtype)

    def _index(self, sigma):
        return jnp.argmin(jnp.abs(sigma[:, None] - self.u.astype(sigma.dtype)[None, :]), axis=1)

    def round_sigma(self, sigma):
        """Nearest entry of ``u`` for each sigma (shape kept)."""
        sigma = jnp.asarray(sigma)
        dt = _at_least_f32(sigma.dtype)
        index = self._index(sigma.astype(dt).reshape(-1))
        return self.u.astype(dt)[index].reshape(sigma.shape)

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        """Denoiser ``D(x; sigma)`` (NHWC)."""
        x, sigma, class_labels = self._prepare(x, sigma, class_labels)
        c_noise = (self.M - 1 - self._index(sigma)).astype(sigma.dtype)
        one = jnp.ones_like(sigma)
        return self._denoise(x, sigma, class_labels, augment_labels, one, -sigma, 1 / jnp.sqrt(sigma ** 2 + 1),
                             c_noise, channels=x.shape[-1])

    def eps(self, x_t, noise_labels, class_labels=None, augment_labels=None):
        """Noise prediction (first ``C`` output channels) at network time ``noise_labels``."""
        x_t, noise_labels, class_labels = self._prepare(x_t, noise_labels, class_labels)
        return self._model(x_t, noise_labels, class_labels, augment_labels)[..., :x_t.shape[-1]]


class EDMPrecond(_Precond):
    """EDM preconditioning: ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sd^2 + sigma^2)``, ``c_noise = log(sigma) / 4`` with ``sd = sigma_data``.

    Schedule mapping: ``schedules.edm`` (``alpha = 1``, ``sigma = t``); ``D(x_t; t)`` is the data
    prediction (``prediction="x_start"``, ``time_input="continuous"``), noise ``(x_t - D) / t``.
    """

    model: nn.Module
    sigma_min: float = 0.0
    sigma_max: float = float("inf")
    sigma_data: float = 0.5

    def __call__(self, x, sigma, class_labels=None, augment_labels=None):
        """Denoiser ``D(x; sigma)`` (NHWC)."""
        x, sigma, class_labels = self._prepare(x, sigma, class_labels)
        sd = float(self.sigma_data)
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / jnp.sqrt(sigma ** 2 + sd ** 2)
        c_in = 1 / jnp.sqrt(sd ** 2 + sigma ** 2)
        return self._denoise(x, sigma, class_labels, augment_labels, c_skip, c_out, c_in, jnp.log(sigma) / 4)


# -- construction from EDM kwargs ------------------------------------------------------------------------

NETWORK_CLASSES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
PRECOND_CLASSES = {"VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "iDDPMPrecond": iDDPMPrecond,
                   "EDMPrecond": EDMPrecond}
# EDM constructor argument -> our field, per preconditioner (besides img_resolution, img_channels,
# label_dim, use_fp16, model_type and the network kwargs).
_PRECOND_FIELDS = {
    "VPPrecond": ("beta_d", "beta_min", "M", "epsilon_t"),
    "VEPrecond": ("sigma_min", "sigma_max"),
    "iDDPMPrecond": ("C_1", "C_2", "M"),
    "EDMPrecond": ("sigma_min", "sigma_max", "sigma_data"),
}
DEFAULT_MODEL_TYPE = {"VPPrecond": "SongUNet", "VEPrecond": "SongUNet", "iDDPMPrecond": "DhariwalUNet",
                       "EDMPrecond": "DhariwalUNet"}
_INT_FIELDS = {"img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim", "model_channels",
               "channel_mult_emb", "num_blocks", "channel_mult_noise", "M"}


def _plain(name, value):
    """EDM kwargs -> hashable plain Python values (lists -> tuples, numpy scalars -> int/float)."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(name, v) for v in value)
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if name in _INT_FIELDS and float(value).is_integer():
            return int(value)
        return float(value)
    raise ValueError(f"EDM kwarg {name}={value!r} has an unsupported type {type(value).__name__}")


def _network(class_name, kwargs, dtype, param_dtype, precision):
    cls = NETWORK_CLASSES[class_name]
    fields = set(cls.__dataclass_fields__) - {"parent", "name", "dtype", "param_dtype", "precision"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"{class_name} does not take the EDM kwargs {unknown}")
    missing = sorted(k for k in ("img_resolution", "in_channels", "out_channels") if k not in kwargs)
    if missing:
        raise ValueError(f"{class_name} needs the EDM kwargs {missing}")
    return cls(**{k: _plain(k, v) for k, v in kwargs.items()}, dtype=dtype, param_dtype=param_dtype,
               precision=precision)


def from_edm_kwargs(class_name: str, kwargs: Mapping[str, Any], dtype: Dtype = jnp.float32,
                    param_dtype: Dtype = jnp.float32, precision: Any = None) -> nn.Module:
    """Build the Flax module EDM would build from ``class_name(**kwargs)``.

    Args:
      class_name: ``SongUNet``, ``DhariwalUNet``, ``VPPrecond``, ``VEPrecond``, ``iDDPMPrecond`` or
        ``EDMPrecond``.
      kwargs: EDM constructor kwargs (e.g. a pickle's ``_init_kwargs``).  For a preconditioner:
        ``img_resolution``, ``img_channels``, ``label_dim``, ``use_fp16`` (recorded, not used: pick
        ``dtype``), its own hyperparameters, ``model_type`` and the network kwargs.
      dtype: network compute dtype.
      param_dtype: parameter dtype.
      precision: ``jax.lax.Precision`` of convolutions and matmuls (``None``: backend default).

    Returns:
      The module (a preconditioner wraps the network as ``model``, with EDM's channel arguments:
      ``in = out = img_channels``, ``out = 2 img_channels`` for iDDPM).

    Raises:
      ValueError: unknown class, unknown or missing kwargs.
    """
    kwargs = dict(kwargs)
    if class_name in NETWORK_CLASSES:
        return _network(class_name, kwargs, dtype, param_dtype, precision)
    if class_name not in PRECOND_CLASSES:
        raise ValueError(f"unknown EDM class {class_name!r}; known: "
                         f"{sorted(NETWORK_CLASSES) + sorted(PRECOND_CLASSES)}")
    missing = sorted(k for k in ("img_resolution", "img_channels") if k not in kwargs)
    if missing:
        raise ValueError(f"{class_name} needs the EDM kwargs {missing}")
    own = {k: _plain(k, kwargs.pop(k)) for k in _PRECOND_FIELDS[class_name] if k in kwargs}
    img_resolution = kwargs.pop("img_resolution")
    img_channels = int(kwargs.pop("img_channels"))
    label_dim = kwargs.pop("label_dim", 0)
    kwargs.pop("use_fp16", None)
    model_type = kwargs.pop("model_type", DEFAULT_MODEL_TYPE[class_name])
    if model_type not in NETWORK_CLASSES:
        raise ValueError(f"{class_name}: unknown model_type {model_type!r}; known: {sorted(NETWORK_CLASSES)}")
    out_channels = img_channels * (2 if class_name == "iDDPMPrecond" else 1)
    model = _network(model_type, dict(kwargs, img_resolution=img_resolution, in_channels=img_channels,
                                      out_channels=out_channels, label_dim=label_dim),
                     dtype, param_dtype, precision)
    return PRECOND_CLASSES[class_name](model=model, **own)


# -- abstract parameters ------------------------------------------------------------------------------


def _network_of(module):
    return module.model if isinstance(module, _Precond) else module


def example_inputs(module: nn.Module, batch: int = 1) -> tuple:
    """Zero inputs that exercise every parameter of ``module`` (labels and augment labels included).

    Returns:
      ``(x, noise_labels_or_sigma, class_labels, augment_labels)`` for networks and preconditioners,
      ``(x, emb)`` for a :class:`UNetBlock`.
    """
    if isinstance(module, UNetBlock):
        res = 8
        return (jnp.zeros((batch, res, res, module.in_channels), jnp.float32),
                jnp.zeros((batch, module.emb_channels), jnp.float32))
    net = _network_of(module)
    res = net.img_resolution
    x = jnp.zeros((batch, res, res, net.in_channels), jnp.float32)
    labels = jnp.zeros((batch, net.label_dim), jnp.float32) if net.label_dim else None
    augment = jnp.zeros((batch, net.augment_dim), jnp.float32) if net.augment_dim else None
    return x, jnp.ones((batch,), jnp.float32), labels, augment


def abstract_params(module: nn.Module):
    """The ``params`` tree of ``module`` as ``jax.ShapeDtypeStruct`` leaves (no computation)."""
    variables = jax.eval_shape(module.init, jax.random.key(0), *example_inputs(module))
    return variables["params"]
