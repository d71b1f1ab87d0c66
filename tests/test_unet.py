"""UNet2D: config handling, shapes and dtypes, and forward equality with diffusers ``UNet2DModel``."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scire_jax.io.convert import convert_diffusers
from scire_jax.io.convert.from_diffusers import abstract_params
from scire_jax.models import UNet2D, timestep_embedding

TINY = {  # 32x32, attention at the second level (multi-head), class conditional
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "block_out_channels": [16, 32], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8, "norm_num_groups": 8, "num_class_embeds": 10,
}
THREE_LEVELS = {  # 3 levels, 2 layers per block, flip_sin_to_cos / freq_shift 0 / padding 1, 2-channel data
    "sample_size": 16, "in_channels": 2, "out_channels": 4, "block_out_channels": [16, 32, 32], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 16,
    "norm_num_groups": 4, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1,
    "mid_block_scale_factor": 1.5,
}
DDPM_CIFAR10_SMALL = {  # google/ddpm-cifar10-32 at reduced width: attention at 16x16 (second level)
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 2, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": None,
    "norm_num_groups": 16, "norm_eps": 1e-6, "flip_sin_to_cos": False, "freq_shift": 1, "downsample_padding": 0,
    "act_fn": "silu", "time_embedding_type": "positional", "center_input_sample": False,
}

_JITTED = {}


def _apply(module, params, x, t, labels=None):
    """jit-compiled ``module.apply`` cached per config (compiling dominates the test time)."""
    key = json.dumps(module.to_config(), sort_keys=True) + str(module.dtype)
    if key not in _JITTED:
        _JITTED[key] = jax.jit(module.apply)
    return _JITTED[key](params, x, t, labels)


def _torch_unet(config, seed=0):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():  # perturb every parameter (GroupNorm scales are 1 and biases 0 at init)
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def _inputs(config, batch=2, seed=1):
    rng = np.random.default_rng(seed)
    size = config["sample_size"]
    x = rng.standard_normal((batch, config["in_channels"], size, size)).astype(np.float32)
    t = np.array([3.0, 517.0, 999.0][:batch], np.float32)
    labels = np.arange(batch, dtype=np.int64) + 3 if config.get("num_class_embeds") else None
    return x, t, labels


def _torch_forward(model, x, t, labels):
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(t),
                    class_labels=None if labels is None else torch.from_numpy(labels)).sample
    return out.numpy()


def _jax_forward(module, params, x, t, labels, dtype=jnp.float32):
    out = _apply(module, params, jnp.asarray(x.transpose(0, 2, 3, 1), dtype), jnp.asarray(t),
                 None if labels is None else jnp.asarray(labels, jnp.int32))
    return np.asarray(out, np.float32).transpose(0, 3, 1, 2)


# -- without torch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("time_embedding_type", "fourier"),
    ("resnet_time_scale_shift", "scale_shift"),
    ("down_block_types", ["CrossAttnDownBlock2D", "DownBlock2D"]),
    ("up_block_types", ["UpBlock2D", "SkipUpBlock2D"]),
    ("act_fn", "gelu"),
    ("norm_num_groups", 5),
    ("attention_head_dim", 12),
    ("block_out_channels", [16, 32, 64]),
    ("layers_per_block", 0),
    ("_class_name", "UNet2DConditionModel"),
])
def test_from_config_rejects_unsupported_values(key, value):
    config = dict(TINY, **{key: value})
    with pytest.raises(ValueError, match=key):
        UNet2D.from_config(config)


def test_config_roundtrip_and_ignored_keys():
    module = UNet2D.from_config(dict(DDPM_CIFAR10_SMALL, _diffusers_version="0.0.4", some_future_key=1))
    again = UNet2D.from_config(json.loads(json.dumps(module.to_config())))
    assert again == module
    assert module.norm_eps == 1e-6 and module.downsample_padding == 0 and module.attention_head_dim is None


def test_shapes_scalar_time_and_class_labels():
    module = UNet2D.from_config(TINY)
    params = abstract_params(module)
    x = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
    out = jax.eval_shape(module.apply, {"params": params}, x, jnp.float32(5.0), jnp.zeros((3,), jnp.int32))
    assert out.shape == (3, 32, 32, 3) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match="class_labels"):
        jax.eval_shape(module.apply, {"params": params}, x, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(module.apply, {"params": params}, jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32),
                       jnp.zeros((3,)), jnp.zeros((3,), jnp.int32))


def test_bf16_computation_keeps_float32_params():
    module = UNet2D.from_config(THREE_LEVELS, dtype=jnp.bfloat16)
    params = abstract_params(module)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(module.apply, {"params": params}, jax.ShapeDtypeStruct((1, 16, 16, 2), jnp.bfloat16),
                         jnp.zeros((1,)))
    assert out.shape == (1, 16, 16, 4) and out.dtype == jnp.bfloat16


@pytest.mark.parametrize("flip, shift, dim", [(False, 1, 32), (True, 0, 16), (True, 1, 7)])
def test_timestep_embedding_matches_diffusers(flip, shift, dim):
    torch = pytest.importorskip("torch")
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
    expected = embeddings.get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip,
                                                 downscale_freq_shift=shift).numpy()
    chex.assert_trees_all_close(np.asarray(timestep_embedding(t, dim, flip, shift)), expected, atol=1e-4, rtol=1e-4)


# -- against PyTorch diffusers ------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY, THREE_LEVELS, DDPM_CIFAR10_SMALL], ids=["tiny", "three_levels", "ddpm_cifar10_small"])
def test_forward_matches_diffusers(tmp_path, config):
    model = _torch_unet(config)
    model.save_pretrained(tmp_path)  # safetensors
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    module, params, converted_config = convert_diffusers(tmp_path)
    assert converted_config["block_out_channels"] == list(config["block_out_channels"])
    x, t, labels = _inputs(config)
    chex.assert_trees_all_close(_jax_forward(module, params, x, t, labels), _torch_forward(model, x, t, labels),
                                atol=1e-4, rtol=1e-4)


def test_forward_matches_diffusers_from_bin(tmp_path):
    model = _torch_unet(TINY, seed=3)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    module, params, _ = convert_diffusers(tmp_path)
    x, t, labels = _inputs(TINY, seed=4)
    chex.assert_trees_all_close(_jax_forward(module, params, x, t, labels), _torch_forward(model, x, t, labels),
                                atol=1e-4, rtol=1e-4)


def test_bf16_forward_is_close_to_float32(tmp_path):
    model = _torch_unet(TINY, seed=5)
    model.save_pretrained(tmp_path)
    module, params, config = convert_diffusers(tmp_path, dtype=jnp.bfloat16)
    x, t, labels = _inputs(TINY, batch=1)
    out = _jax_forward(module, params, x, t, labels, dtype=jnp.bfloat16)
    reference = _torch_forward(model, x, t, labels)
    assert np.all(np.isfinite(out))
    scale = np.abs(reference).max()
    assert np.abs(out - reference).max() < 0.1 * scale
