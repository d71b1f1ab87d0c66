"""Flax (linen) port of transformers' ``CLIPTextModel`` (the Stable Diffusion 1.x / 2.x text encoder).

Token + learned position embeddings, ``num_hidden_layers`` pre-LayerNorm transformer layers with a
causal self-attention mask (q/k/v/out projections with biases, MLP ``fc1 -> act -> fc2``), and a final
LayerNorm.  ``hidden_act`` is ``"quick_gelu"`` (``x * sigmoid(1.702 x)``; OpenAI CLIP, SD 1.x),
``"gelu"`` (exact; OpenCLIP ViT-H, SD 2.x) or ``"gelu_new"`` / ``"gelu_pytorch_tanh"`` (tanh approximation).

Which hidden state conditions the UNet:

* diffusers' pipelines use ``last_hidden_state`` = ``final_layer_norm(hidden_states[-1])``.
* ``clip_skip=k`` in diffusers' ``StableDiffusionPipeline.encode_prompt`` uses
  ``final_layer_norm(hidden_states[-(k + 1)])`` -- the final LayerNorm *is* applied to the earlier layer.
  :meth:`CLIPTextModel.encode` with ``output_layer=-(k + 1)`` computes exactly that
  (``output_layer=-2`` is ``clip_skip=1``).
* SD 2.x was trained on the penultimate layer of OpenCLIP ViT-H followed by ``ln_final``; the
  diffusers SD 2.x checkpoints get this by having 23 instead of 24 layers (the conversion drops the
  last one), so for them the default ``output_layer=-1`` is already right and ``-2`` would skip one
  more layer.  :mod:`scire_jax.io.convert.sd` drops that layer the same way for original SD 2.x
  single-file checkpoints.

Layout: ``input_ids`` are ``(batch, seq_len)`` integers, ``seq_len <= max_position_embeddings``.
``dtype`` is the computation dtype; parameters are ``param_dtype`` (float32); LayerNorm statistics and
the attention softmax are float32.  Parameter names mirror transformers' state dict
(``encoder/layers_3/self_attn/q_proj/kernel`` is ``encoder.layers.3.self_attn.q_proj.weight``; older
checkpoints prefix everything with ``text_model.``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scire_jax.models.sd_unet import multi_head_attention

__all__ = ["CLIPTextModel", "CLIPTextOutput", "ACTIVATIONS"]

Dtype = Any


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": _quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


class CLIPTextOutput(NamedTuple):
    """``last_hidden_state`` (final LayerNorm applied), ``pooler_output`` (state at the EOS token) and
    ``hidden_states`` (embeddings output + every layer's output: ``num_hidden_layers + 1`` entries, no final
    LayerNorm), all ``(batch, seq_len, hidden)`` except ``pooler_output`` ``(batch, hidden)``."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: Tuple[jax.Array, ...]


class _Embeddings(nn.Module):
    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        tokens = nn.Embed(self.vocab_size, self.hidden_size, name="token_embedding", **kw)(input_ids)
        positions = nn.Embed(self.max_position_embeddings, self.hidden_size, name="position_embedding", **kw)(
            jnp.arange(input_ids.shape[-1]))
        return tokens + positions[None]


class _SelfAttention(nn.Module):
    heads: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = x.shape[-1]
        q = nn.Dense(width, name="q_proj", **kw)(x)
        k = nn.Dense(width, name="k_proj", **kw)(x)
        v = nn.Dense(width, name="v_proj", **kw)(x)
        out = multi_head_attention(q, k, v, self.heads, mask=mask, is_causal=True)
        return nn.Dense(width, name="out_proj", **kw)(out)


class _EncoderLayer(nn.Module):
    heads: int
    intermediate_size: int
    hidden_act: str
    eps: float
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x + _SelfAttention(self.heads, name="self_attn", **kw)(nn.LayerNorm(self.eps, name="layer_norm1", **kw)(x),
                                                                   mask)
        h = nn.LayerNorm(self.eps, name="layer_norm2", **kw)(x)
        h = _MLP(self.intermediate_size, self.hidden_act, name="mlp", **kw)(h)
        return x + h


class _MLP(nn.Module):
    intermediate_size: int
    hidden_act: str
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = ACTIVATIONS[self.hidden_act](nn.Dense(self.intermediate_size, name="fc1", **kw)(x))
        return nn.Dense(x.shape[-1], name="fc2", **kw)(h)


class _Encoder(nn.Module):
    num_layers: int
    heads: int
    intermediate_size: int
    hidden_act: str
    eps: float
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        states = [x]
        for i in range(self.num_layers):
            x = _EncoderLayer(self.heads, self.intermediate_size, self.hidden_act, self.eps, name=f"layers_{i}",
                              dtype=self.dtype, param_dtype=self.param_dtype)(x, mask)
            states.append(x)
        return tuple(states)


def _int(value, key, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"text encoder config[{key!r}]={value!r} is not supported: expected an integer >= {minimum}")
    return int(value)


class CLIPTextModel(nn.Module):
    """transformers ``CLIPTextModel``; see the module docstring.

    ``apply(params, input_ids)`` -> :class:`CLIPTextOutput`;
    ``apply(params, input_ids, output_layer=-2, method=CLIPTextModel.encode)`` -> prompt embeddings.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any], dtype: Optional[Dtype] = None,
                    param_dtype: Dtype = jnp.float32) -> CLIPTextModel:
        """Build from a transformers ``CLIPTextConfig`` dict (``text_encoder/config.json``; a full
        ``CLIPConfig`` with a ``text_config`` entry is accepted too).  Unknown keys are ignored.

        Raises:
          ValueError: naming the key, for another architecture (e.g. ``CLIPTextModelWithProjection``),
            an unknown ``hidden_act`` or a width not divisible by the head count.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"text encoder config must be a dict, got {type(config).__name__}")
        cfg = dict(config)
        if cfg.get("model_type") == "clip" and isinstance(cfg.get("text_config"), Mapping):
            cfg = dict(cfg["text_config"])
        model_type = cfg.get("model_type", "clip_text_model")
        if model_type != "clip_text_model":
            raise ValueError(f"text encoder config['model_type']={model_type!r} is not supported: "
                             "expected 'clip_text_model'")
        for arch in cfg.get("architectures") or ():
            if arch != "CLIPTextModel":
                raise ValueError(f"text encoder config['architectures'] contains {arch!r}, which is not supported: "
                                 "expected 'CLIPTextModel'")
        act = cfg.get("hidden_act", "quick_gelu")
        if act not in ACTIVATIONS:
            raise ValueError(f"text encoder config['hidden_act']={act!r} is not supported; "
                             f"allowed: {list(ACTIVATIONS)}")
        hidden = _int(cfg.get("hidden_size", 512), "hidden_size")
        heads = _int(cfg.get("num_attention_heads", 8), "num_attention_heads")
        if hidden % heads:
            raise ValueError(f"text encoder config['num_attention_heads']={heads} does not divide hidden_size {hidden}")
        eps = cfg.get("layer_norm_eps", 1e-5)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"text encoder config['layer_norm_eps']={eps!r} is not supported: "
                             "expected a positive number")
        eos = cfg.get("eos_token_id", 2)
        return cls(
            vocab_size=_int(cfg.get("vocab_size", 49408), "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_int(cfg.get("intermediate_size", 2048), "intermediate_size"),
            num_hidden_layers=_int(cfg.get("num_hidden_layers", 12), "num_hidden_layers"),
            num_attention_heads=heads,
            max_position_embeddings=_int(cfg.get("max_position_embeddings", 77), "max_position_embeddings"),
            hidden_act=act,
            layer_norm_eps=float(eps),
            eos_token_id=_int(2 if eos is None else eos, "eos_token_id", minimum=0),
            dtype=dtype,
            param_dtype=param_dtype,
        )

    def to_config(self) -> dict:
        """A transformers ``CLIPTextConfig`` dict (JSON-serialisable) for this model."""
        return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
                "max_position_embeddings": self.max_position_embeddings, "hidden_act": self.hidden_act,
                "layer_norm_eps": self.layer_norm_eps, "eos_token_id": self.eos_token_id}

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embeddings = _Embeddings(self.vocab_size, self.hidden_size, self.max_position_embeddings, **kw)
        self.encoder = _Encoder(self.num_hidden_layers, self.num_attention_heads, self.intermediate_size,
                                self.hidden_act, self.layer_norm_eps, **kw)
        self.final_layer_norm = nn.LayerNorm(self.layer_norm_eps, **kw)

    def _hidden_states(self, input_ids, attention_mask):
        if input_ids.ndim != 2 or input_ids.shape[-1] > self.max_position_embeddings:
            raise ValueError(f"input_ids must have shape (batch, seq_len <= {self.max_position_embeddings}), "
                             f"got {input_ids.shape}")
        mask = None
        if attention_mask is not None:  # padding mask on the keys, combined with the causal mask
            mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
        return self.encoder(self.embeddings(input_ids), mask)

    def __call__(self, input_ids, attention_mask=None) -> CLIPTextOutput:
        """All outputs of transformers' ``CLIPTextModel(input_ids, attention_mask, output_hidden_states=True)``."""
        states = self._hidden_states(input_ids, attention_mask)
        last = self.final_layer_norm(states[-1])
        if self.eos_token_id == 2:  # legacy configs: the EOS token has the largest id (as transformers)
            eos_index = jnp.argmax(input_ids, axis=-1)
        else:  # first occurrence of the EOS id
            eos_index = jnp.argmax(input_ids == self.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(last, eos_index[:, None, None], axis=1)[:, 0]
        return CLIPTextOutput(last, pooled, states)

    def encode(self, input_ids, attention_mask=None, output_layer: int = -1):
        """Prompt embeddings ``final_layer_norm(hidden_states[output_layer])``, ``(batch, seq_len, hidden)``.

        ``output_layer=-1`` is ``last_hidden_state``; ``-(k + 1)`` is diffusers' ``clip_skip=k``.
        """
        n = self.num_hidden_layers
        if not -(n + 1) <= output_layer <= n:
            raise ValueError(f"output_layer={output_layer} is out of range for {n} layers")
        states = self._hidden_states(input_ids, attention_mask)
        return self.final_layer_norm(states[output_layer])

    def abstract_params(self):
        """Shapes of the ``"params"`` collection (``jax.eval_shape``; nothing is computed)."""
        ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
        return jax.eval_shape(lambda ids: self.init(jax.random.key(0), ids), ids)["params"]
