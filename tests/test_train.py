"""Training loop: loss decreases, resume reproduces the uninterrupted trajectory, helpers."""

import os
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the training tests use scikit-learn's digits (pip install scikit-learn)")

from scire_jax import data as data_lib  # noqa: E402
from scire_jax import train as train_lib  # noqa: E402

TINY = train_lib.TrainConfig(
    dataset="digits", image_size=8, model={"arch": "tiny", "channels": 8, "depth": 1}, steps=20, batch_size=32,
    learning_rate=3e-3, warmup_steps=2, save_every=10, sample_every=0, log_every=5, seed=3,
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train") / "a")
    return out, train_lib.train(TINY, out, resume=False, verbose=False)


def test_loss_decreases(uninterrupted):
    _, state = uninterrupted
    assert state.step == 20 and state.losses.shape == (20,)
    assert np.all(np.isfinite(state.losses))
    assert state.losses[-5:].mean() < 0.75 * state.losses[:5].mean()


def test_resume_continues_identical_trajectory(uninterrupted, tmp_path):
    _, full = uninterrupted
    out = str(tmp_path / "b")
    first = train_lib.train(TINY, out, stop_at=10, verbose=False)
    assert first.step == 10
    np.testing.assert_array_equal(first.losses, full.losses[:10])
    resumed = train_lib.train(TINY, out, resume=True, verbose=False)
    assert resumed.step == 20
    np.testing.assert_array_equal(resumed.losses, full.losses)  # bit-identical, same seed
    for a, b in zip(jax_leaves(resumed.ema_params), jax_leaves(full.ema_params)):
        np.testing.assert_array_equal(a, b)


def test_resume_rejects_changed_config(uninterrupted):
    out, _ = uninterrupted
    changed = train_lib.TrainConfig.from_dict(dict(TINY.to_dict(), learning_rate=1e-2))
    with pytest.raises(ValueError, match="learning_rate"):
        train_lib.train(changed, out, resume=True, verbose=False)


def test_extend_is_a_second_stage_with_a_warm_restart(uninterrupted, tmp_path):
    import json
    import shutil

    source, full = uninterrupted
    out = str(tmp_path / "extended")
    shutil.copytree(source, out)
    longer = train_lib.TrainConfig.from_dict(dict(TINY.to_dict(), steps=30))
    with pytest.raises(ValueError, match="extend=True"):
        train_lib.train(longer, out, resume=True, verbose=False)
    other = train_lib.TrainConfig.from_dict(dict(TINY.to_dict(), steps=30, batch_size=16))
    with pytest.raises(ValueError, match="allows only a larger 'steps'"):
        train_lib.train(other, out, resume=True, verbose=False, extend=True)
    extended = train_lib.train(longer, out, resume=True, verbose=False, extend=True)
    assert extended.step == 30
    np.testing.assert_array_equal(extended.losses[:20], full.losses)  # stage 1 kept
    assert np.all(np.isfinite(extended.losses[20:]))
    with open(os.path.join(out, "stages.json")) as handle:
        assert json.load(handle) == [{"resumed_at_step": 20, "previous_steps": 20, "steps": 30}]
    _, lr = train_lib.make_optimizer(longer)
    assert float(lr(20)) > 5 * float(train_lib.make_optimizer(TINY)[1](20))  # the restart raised the rate


def jax_leaves(tree):
    import jax

    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_batch_indices_are_a_function_of_the_step():
    a = train_lib.batch_indices(57, 1797, 32, seed=1)
    np.testing.assert_array_equal(a, train_lib.batch_indices(57, 1797, 32, seed=1))
    assert not np.array_equal(a, train_lib.batch_indices(57, 1797, 32, seed=2))
    epoch = np.concatenate([train_lib.batch_indices(s, 100, 10, seed=0) for s in range(10)])
    np.testing.assert_array_equal(np.sort(epoch), np.arange(100))  # one epoch is a permutation


def test_data_scaling_and_downscale():
    x, y = data_lib.load("digits")
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and y.shape == (1797,)
    assert x.min() == -1.0 and x.max() == 1.0
    blocks = np.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(data_lib.downscale_area(blocks, 2)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_png_writer_without_pillow(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no Pillow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    image = (np.arange(12 * 7) % 256).astype(np.uint8).reshape(7, 12)
    path = str(tmp_path / "g.png")
    train_lib.write_png(path, image)
    blob = open(path, "rb").read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", blob[16:24])
    assert (width, height) == (12, 7)
    length = struct.unpack(">I", blob[33:37])[0]
    raw = zlib.decompress(blob[41:41 + length])
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(7, 13)[:, 1:], image)


def test_sample_grid(tmp_path):
    path = str(tmp_path / "grid.png")
    train_lib.save_image_grid(path, np.zeros((5, 8, 8, 1)) - 1.0)
    assert os.path.getsize(path) > 0


def test_cli_parser_builds_config():
    import argparse

    parser = argparse.ArgumentParser()
    train_lib.add_train_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--out", "x", "--dataset", "digits", "--steps", "7", "--seed", "5"])
    config = train_lib.config_from_args(args)
    assert (config.dataset, config.image_size, config.steps, config.seed) == ("digits", 8, 7, 5)
    assert config.model["sample_size"] == 8 and args.func is train_lib.run_train


def test_export_loads_with_load_pretrained(tmp_path):
    import jax
    import jax.numpy as jnp

    from scire_jax.io import pretrained

    model = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
             "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8}
    config = train_lib.TrainConfig.from_dict(dict(TINY.to_dict(), model=model, steps=2, save_every=0))
    module = train_lib.build_model(model)
    # random parameters of the right shapes: no init / training compile (slow for a UNet on CPU)
    shapes = jax.eval_shape(module.init, jax.random.key(1), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))["params"]
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(0)
    params = treedef.unflatten([rng.standard_normal(leaf.shape).astype(np.float32) for leaf in leaves])
    state = train_lib.TrainState(step=0, params=params, ema_params=params, opt_state=None,
                                 losses=np.zeros(0), config=config, model=module)
    train_lib.export(state, str(tmp_path / "export"))
    record = pretrained.load_pretrained(str(tmp_path / "export"))
    loaded, schedule, prediction = record.params, record.schedule, record.prediction
    assert record.sample_shape == (8, 8, 1) and record.conditioning == "none"
    assert prediction == "noise"
    np.testing.assert_allclose(np.asarray(schedule.alpha(np.array([0.001, 1.0]))),
                               np.sqrt(np.cumprod(1 - train_lib.ddpm_betas(config)))[[0, -1]], rtol=1e-6)
    flat_loaded = jax.tree_util.tree_leaves_with_path(loaded["params"])
    flat_saved = jax.tree_util.tree_leaves_with_path(params)
    assert [path for path, _ in flat_loaded] == [path for path, _ in flat_saved]
    for (_, a), (_, b) in zip(flat_loaded, flat_saved):
        np.testing.assert_array_equal(np.asarray(a), b)
    # the exported model config rebuilds the same module
    from scire_jax.io import checkpoints
    from scire_jax.models.unet2d import UNet2D

    _, saved_config, extra = checkpoints.restore(str(tmp_path / "export"))
    assert UNet2D.from_config(saved_config["model"]) == module
    assert saved_config["time_input"] == "discrete" and extra["step"] == 0


def test_restore_run_is_read_only(uninterrupted):
    out, full = uninterrupted
    before = open(os.path.join(out, "log.csv")).read()
    state = train_lib.restore_run(out)
    assert state.step == 20 and open(os.path.join(out, "log.csv")).read() == before
    np.testing.assert_array_equal(state.losses, full.losses)
    for a, b in zip(jax_leaves(state.ema_params), jax_leaves(full.ema_params)):
        np.testing.assert_array_equal(a, b)
    assert train_lib.restore_run(out, step=10).step == 10
