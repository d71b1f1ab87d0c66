"""Checkpoint conversion: diffusers folders (incl. legacy names), original DDPM layout, corrupt inputs,
scheduler configs, ``convert_main`` / ``load_pretrained`` and the ``convert`` sub-command."""

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import scire_jax
from scire_jax.apps.convert_cli import add_convert_parser, convert_main
from scire_jax.io import checkpoints, pretrained
from scire_jax.io.convert import (
    convert_ddpm,
    convert_diffusers,
    ddpm_to_diffusers_config,
    load_state_dict,
    schedule_from_scheduler_config,
)
from scire_jax.io.convert.from_diffusers import abstract_params
from scire_jax.io.convert.weights import flax_path_to_torch_key
from scire_jax.models import UNet2D

SMALL = {
    "sample_size": 16, "in_channels": 3, "out_channels": 3, "block_out_channels": [16, 32], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8, "norm_num_groups": 8,
}
SCHEDULER = {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
             "num_train_timesteps": 1000, "prediction_type": "epsilon", "clip_sample": True}


def _torch_unet(config, seed=0):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def _torch_forward(model, x_nchw, t):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x_nchw), torch.from_numpy(t)).sample.numpy()


def _leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.") or p.name == name]


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """A diffusers UNet2DModel folder (safetensors) with a scheduler config, plus its converted params."""
    folder = tmp_path_factory.mktemp("small_unet")
    _torch_unet(SMALL).save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    module, params, config = convert_diffusers(folder)
    return folder, module, params


def _copy(folder, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


# -- diffusers folders --------------------------------------------------------------------------------


def test_safetensors_load_without_torch(small_folder, monkeypatch):
    folder, _, params = small_folder
    monkeypatch.setitem(sys.modules, "torch", None)  # any "import torch" now fails
    module, again, _ = convert_diffusers(folder)
    chex.assert_trees_all_equal(again, params)
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not used")  # safetensors is preferred
    try:
        with pytest.raises(ImportError, match="PyTorch"):
            load_state_dict(folder / "diffusion_pytorch_model.bin")
    finally:
        (folder / "diffusion_pytorch_model.bin").unlink()


def test_legacy_attention_names(small_folder, tmp_path):
    folder, _, params = small_folder
    legacy = _copy(folder, tmp_path)
    state = safetensors.numpy.load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    renamed = {}
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        renamed[key] = value
    assert any(".proj_attn." in key for key in renamed)
    safetensors.numpy.save_file(renamed, str(legacy / "diffusion_pytorch_model.safetensors"))
    _, again, _ = convert_diffusers(legacy)
    chex.assert_trees_all_equal(again, params)


def test_pipeline_layout_and_bf16_safetensors(small_folder, tmp_path):
    folder, _, params = small_folder
    pipeline = tmp_path / "pipeline"
    shutil.copytree(folder, pipeline / "unet")
    state = safetensors.numpy.load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()},
                                str(pipeline / "unet" / "diffusion_pytorch_model.safetensors"))
    _, again, _ = convert_diffusers(pipeline)
    chex.assert_trees_all_close(again, params, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("name, config", [
    ("google/ddpm-cifar10-32", {
        "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2, "sample_size": 32,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": None,
        "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6, "norm_num_groups": 32}),
    ("google/ddpm-celebahq-256", {
        "block_out_channels": [128, 128, 256, 256, 512, 512], "layers_per_block": 2, "sample_size": 256,
        "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4, "attention_head_dim": None,
        "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6, "norm_num_groups": 32}),
])
def test_full_size_configs_match_diffusers_parameter_shapes(name, config):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        model = diffusers.UNet2DModel(**config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    flat = {flax_path_to_torch_key(path): leaf.shape for path, leaf in
            jax.tree_util.tree_flatten_with_path(abstract_params(UNet2D.from_config(config)))[0]
            for path in [tuple(p.key for p in path)]}
    assert set(flat) == set(expected)
    for key, shape in flat.items():
        torch_shape = expected[key]
        if len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif len(shape) == 2:
            shape = shape[::-1]
        assert shape == torch_shape, key
    if name == "google/ddpm-cifar10-32":
        assert sum(int(np.prod(s)) for s in expected.values()) == 35_746_307


# -- original DDPM layout -----------------------------------------------------------------------------

DDPM_CONFIG = {"ch": 16, "out_ch": 3, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8],
               "dropout": 0.1, "resolution": 16, "in_channels": 3, "resamp_with_conv": True, "norm_num_groups": 8}
DDPM_AS_DIFFUSERS = {
    "sample_size": 16, "in_channels": 3, "out_channels": 3, "block_out_channels": [16, 32], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None, "norm_num_groups": 8, "norm_eps": 1e-6, "flip_sin_to_cos": False, "freq_shift": 1,
    "downsample_padding": 0,
}


def _to_ddpm_layout(state_dict, levels):
    """The test's own diffusers -> DDPM key table (q/k/v/proj_out become 1x1 convolutions)."""
    resnet = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2",
              "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    table = [
        (r"time_embedding\.linear_1\.(.*)", lambda m: f"temb.dense.0.{m[1]}"),
        (r"time_embedding\.linear_2\.(.*)", lambda m: f"temb.dense.1.{m[1]}"),
        (r"conv_norm_out\.(.*)", lambda m: f"norm_out.{m[1]}"),
        (r"(conv_in|conv_out)\.(.*)", lambda m: f"{m[1]}.{m[2]}"),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)", lambda m: f"down.{m[1]}.block.{m[2]}.{resnet[m[3]]}.{m[4]}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(\w+(?:\.0)?)\.(weight|bias)",
         lambda m: f"down.{m[1]}.attn.{m[2]}.{attention[m[3]]}.{m[4]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", lambda m: f"down.{m[1]}.downsample.conv.{m[2]}"),
        (r"mid_block\.resnets\.0\.(\w+)\.(.*)", lambda m: f"mid.block_1.{resnet[m[1]]}.{m[2]}"),
        (r"mid_block\.resnets\.1\.(\w+)\.(.*)", lambda m: f"mid.block_2.{resnet[m[1]]}.{m[2]}"),
        (r"mid_block\.attentions\.0\.(\w+(?:\.0)?)\.(weight|bias)", lambda m: f"mid.attn_1.{attention[m[1]]}.{m[2]}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)",
         lambda m: f"up.{levels - 1 - int(m[1])}.block.{m[2]}.{resnet[m[3]]}.{m[4]}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(\w+(?:\.0)?)\.(weight|bias)",
         lambda m: f"up.{levels - 1 - int(m[1])}.attn.{m[2]}.{attention[m[3]]}.{m[4]}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", lambda m: f"up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"),
    ]
    out = {}
    for key, value in state_dict.items():
        for pattern, rename in table:
            match = re.fullmatch(pattern, key)
            if match:
                new = rename(match)
                break
        else:
            raise AssertionError(f"no DDPM name for {key}")
        if re.search(r"\.attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$", new):
            value = value[:, :, None, None]
        assert new not in out
        out[new] = value
    return out


def test_ddpm_config_matches_google_cifar10():
    config = ddpm_to_diffusers_config({"ch": 128, "out_ch": 3, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2,
                                       "attn_resolutions": [16], "dropout": 0.1, "resolution": 32, "in_channels": 3})
    assert config["block_out_channels"] == [128, 256, 256, 256]
    assert config["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]
    assert config["up_block_types"] == ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    nested = ddpm_to_diffusers_config({"data": {"image_size": 32, "channels": 3},
                                       "model": {"ch": 128, "out_ch": 3, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2,
                                                 "attn_resolutions": [16], "type": "simple", "ema": True}})
    assert nested == config


def test_ddpm_layout_matches_diffusers_forward(tmp_path):
    torch = pytest.importorskip("torch")
    model = _torch_unet(DDPM_AS_DIFFUSERS, seed=7)
    ddpm_state = _to_ddpm_layout(model.state_dict(), levels=2)
    module, params, config = convert_ddpm(ddpm_state, DDPM_CONFIG)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    t = np.array([0.0, 640.0], np.float32)
    out = jax.jit(module.apply)(params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t))
    chex.assert_trees_all_close(np.asarray(out).transpose(0, 3, 1, 2), _torch_forward(model, x, t),
                                atol=1e-4, rtol=1e-4)
    # from a file: a DDIM-style list [model, optimizer, epoch, step, ema] with DataParallel "module." names
    ema = {f"module.{k}": v for k, v in ddpm_state.items()}
    torch.save([{"module.zzz": torch.zeros(1)}, {}, 3, 100, ema], tmp_path / "ckpt.pth")
    _, from_file, _ = convert_ddpm(tmp_path / "ckpt.pth", {"model": DDPM_CONFIG})
    chex.assert_trees_all_equal(from_file, params)
    with pytest.raises(ValueError, match="module.zzz|zzz"):
        convert_ddpm(tmp_path / "ckpt.pth", DDPM_CONFIG, ema=False)


def test_ddpm_convert_main_and_errors(tmp_path):
    torch = pytest.importorskip("torch")
    model = _torch_unet(DDPM_AS_DIFFUSERS, seed=8)
    ddpm_state = _to_ddpm_layout(model.state_dict(), levels=2)
    torch.save(ddpm_state, tmp_path / "model.ckpt")
    (tmp_path / "config.json").write_text(json.dumps(DDPM_CONFIG))
    summary = convert_main(tmp_path / "model.ckpt", tmp_path / "out", ddpm_config=tmp_path / "config.json")
    assert summary["source_format"] == "ddpm" and summary["prediction"] == "noise"
    params, config, extra = checkpoints.restore(tmp_path / "out")
    assert config == UNet2D.from_config(DDPM_AS_DIFFUSERS).to_config()
    np.testing.assert_allclose(extra["betas"], np.linspace(1e-4, 0.02, 1000))
    # a wrong config value, a missing key, an unexpected key
    bad = dict(ddpm_state)
    bad.pop("mid.attn_1.q.bias")
    bad["down.0.attn.0.q.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(ValueError) as info:
        convert_ddpm(bad, DDPM_CONFIG)
    assert "mid.attn_1.q.bias" in str(info.value) and "down.0.attn.0.q.weight" in str(info.value)
    for key, value in [("ch_mult", "12"), ("resamp_with_conv", False), ("num_res_blocks", 0)]:
        with pytest.raises(ValueError, match=key):
            convert_main(tmp_path / "model.ckpt", tmp_path / "bad", ddpm_config=dict(DDPM_CONFIG, **{key: value}))
        assert _leftovers(tmp_path, "bad") == []


# -- corrupt inputs -----------------------------------------------------------------------------------


def _edit_weights(folder, edit):
    path = folder / "diffusion_pytorch_model.safetensors"
    state = safetensors.numpy.load_file(str(path))
    edit(state)
    safetensors.numpy.save_file(state, str(path))


def _drop(state):
    del state["mid_block.attentions.0.to_k.bias"]


def _extra(state):
    state["down_blocks.0.resnets.0.unused.weight"] = np.zeros((2, 2), np.float32)


def _reshape(state):
    state["conv_in.weight"] = np.zeros((16, 3, 5, 5), np.float32)


@pytest.mark.parametrize("corrupt, message", [
    ("truncated", r"cannot read safetensors file"),
    (_drop, r"1 missing keys.*mid_block\.attentions\.0\.to_k\.bias"),
    (_extra, r"1 unexpected keys.*down_blocks\.0\.resnets\.0\.unused\.weight"),
    (_reshape, r"1 shape mismatches.*conv_in\.weight: .*\(16, 3, 5, 5\) vs expected \(16, 3, 3, 3\)"),
    ({"time_embedding_type": "fourier"}, r"time_embedding_type.*fourier"),
    ({"block_out_channels": [16, 64]}, r"shape mismatches"),
    ("bad_json", r"cannot read JSON file"),
])
def test_corrupt_inputs_raise_and_write_nothing(small_folder, tmp_path, corrupt, message):
    folder = _copy(small_folder[0], tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    if corrupt == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif corrupt == "bad_json":
        (folder / "config.json").write_text("{not json")
    elif isinstance(corrupt, dict):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, **corrupt)))
    else:
        _edit_weights(folder, corrupt)
    with pytest.raises(ValueError, match=re.compile(message, re.S)):
        convert_diffusers(folder)
    with pytest.raises(ValueError, match=re.compile(message, re.S)):
        convert_main(folder, tmp_path / "dst")
    assert _leftovers(tmp_path, "dst") == []


def test_error_lists_first_keys_and_counts(small_folder, tmp_path):
    folder = _copy(small_folder[0], tmp_path)
    _edit_weights(folder, lambda state: [state.pop(k) for k in list(state) if k.startswith("up_blocks.0.")])
    with pytest.raises(ValueError, match=r"(\d+) missing keys") as info:
        convert_diffusers(folder)
    assert re.search(r"\(\d+ more\)", str(info.value))


# -- scheduler configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("beta_schedule, start, end", [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012),
                                                      ("squaredcos_cap_v2", 1e-4, 0.02)])
@pytest.mark.parametrize("prediction_type, prediction", [("epsilon", "noise"), ("v_prediction", "v")])
def test_scheduler_config_matches_diffusers(beta_schedule, start, end, prediction_type, prediction):
    diffusers = pytest.importorskip("diffusers")
    config = {"beta_schedule": beta_schedule, "beta_start": start, "beta_end": end, "num_train_timesteps": 1000,
              "prediction_type": prediction_type}
    scheduler = diffusers.DDPMScheduler(**config)
    schedule, got = schedule_from_scheduler_config(dict(scheduler.config))
    assert got == prediction and schedule.total_n == 1000
    np.testing.assert_allclose(np.exp(2 * schedule.log_alpha_table), scheduler.alphas_cumprod.numpy().astype(np.float64),
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("key, value", [("beta_schedule", "sigmoid"), ("prediction_type", "score"),
                                        ("rescale_betas_zero_snr", True), ("num_train_timesteps", 0),
                                        ("beta_end", "big")])
def test_scheduler_config_rejects_unsupported_values(key, value):
    with pytest.raises(ValueError, match=f"{key}.*{value}"):
        schedule_from_scheduler_config(dict(SCHEDULER, **{key: value}))


def test_scheduler_sample_prediction_and_json_path(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(dict(SCHEDULER, prediction_type="sample")))
    schedule, prediction = schedule_from_scheduler_config(tmp_path / "scheduler_config.json")
    assert prediction == "x_start"
    assert schedule == scire_jax.core.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))


# -- convert_main, load_pretrained, CLI ---------------------------------------------------------------


def test_convert_main_then_load_pretrained(small_folder, tmp_path):
    folder, module, params = small_folder
    summary = convert_main(folder, tmp_path / "ckpt")
    assert summary["source_format"] == "diffusers" and summary["num_train_timesteps"] == 1000
    with pytest.raises(FileExistsError):
        convert_main(folder, tmp_path / "ckpt")
    convert_main(folder, tmp_path / "ckpt", overwrite=True)
    expected_schedule = scire_jax.core.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))
    for source in (tmp_path / "ckpt", folder):
        record = pretrained.load_pretrained(source)
        apply_fn, loaded, schedule, prediction = record.apply_fn, record.params, record.schedule, record.prediction
        assert record.sample_shape == (16, 16, 3)
        chex.assert_trees_all_close(loaded, params, atol=0, rtol=0)
        assert prediction == "noise" and schedule == expected_schedule
        out = jax.eval_shape(apply_fn, loaded, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32), jnp.zeros((2,)))
        assert out.shape == (2, 16, 16, 3)


def test_load_pretrained_reads_training_exports(small_folder, tmp_path):
    folder, module, params = small_folder
    betas = [float(b) for b in np.linspace(1e-4, 0.02, 50)]
    config = {"model": dict(module.to_config(), arch="unet2d"), "schedule": {"type": "discrete", "betas": betas},
              "prediction": "noise", "time_input": "discrete"}
    checkpoints.save(tmp_path / "export", params["params"], config, {"step": 3})  # bare parameter tree
    record = pretrained.load_pretrained(tmp_path / "export")
    loaded, schedule, prediction = record.params, record.schedule, record.prediction
    chex.assert_trees_all_close(loaded, params, atol=0, rtol=0)
    assert schedule.total_n == 50 and prediction == "noise"
    checkpoints.save(tmp_path / "no_schedule", params, module.to_config(), {"step": 3})
    with pytest.raises(ValueError, match="betas"):
        pretrained.load_pretrained(tmp_path / "no_schedule")


def test_convert_main_needs_a_scheduler_config(small_folder, tmp_path):
    folder = _copy(small_folder[0], tmp_path)
    (folder / "scheduler_config.json").unlink()
    with pytest.raises(ValueError, match="scheduler_config"):
        convert_main(folder, tmp_path / "dst")
    with pytest.raises(ValueError, match="scheduler_config"):
        pretrained.load_pretrained(folder)
    assert _leftovers(tmp_path, "dst") == []
    convert_main(folder, tmp_path / "dst", scheduler_config=dict(SCHEDULER, prediction_type="v_prediction"))
    assert checkpoints.restore(tmp_path / "dst")[2]["prediction"] == "v"


def test_pretrained_registry_hook(monkeypatch):
    monkeypatch.setitem(pretrained.PRETRAINED, "toy", "assets/toy")
    assert pretrained.resolve_path("toy") == Path(scire_jax.__file__).parent / "assets" / "toy"
    with pytest.raises(ValueError, match="registered"):
        pretrained.load_pretrained("toy")  # registered, but the asset does not exist
    with pytest.raises(ValueError, match="no-such-model"):
        pretrained.load_pretrained("no-such-model")


def test_convert_subcommand(small_folder, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="scire-jax")
    add_convert_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", str(small_folder[0]), str(tmp_path / "ckpt")])
    assert args.func(args) == 0
    assert "parameters" in capsys.readouterr().out
    assert checkpoints.is_checkpoint(tmp_path / "ckpt")
    assert args.func(args) == 2  # exists: refused
    assert "overwrite" in capsys.readouterr().err
    args = parser.parse_args(["convert", str(small_folder[0]), str(tmp_path / "ckpt"), "--overwrite"])
    assert args.func(args) == 0
