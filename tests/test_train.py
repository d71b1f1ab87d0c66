"""Training loop: loss decreases, resume reproduces the uninterrupted trajectory, config checks, EMA, helpers."""

import os

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the training tests use scikit-learn's digits (pip install scikit-learn)")

from scire_jax.apps import data as data_lib  # noqa: E402
from scire_jax.apps import images  # noqa: E402
from scire_jax.apps import train as train_lib  # noqa: E402

# The smallest UNet2D: one level of 8 channels, no mid block (compiles quickly on CPU).
TINY_UNET = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8],
             "layers_per_block": 1, "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"],
             "norm_num_groups": 4, "mid_block_type": None}
TINY = train_lib.TrainConfig(
    dataset="digits", image_size=8, model=TINY_UNET, steps=20, batch_size=32, learning_rate=3e-3, warmup_steps=2,
    save_every=10, sample_every=10, num_samples=4, sample_steps=5, log_every=5, seed=3,
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


def test_previews_are_ddim_sample_grids(uninterrupted):
    from PIL import Image

    out, state = uninterrupted
    assert sorted(os.listdir(os.path.join(out, "samples"))) == ["step_0000010.png", "step_0000020.png"]
    with Image.open(os.path.join(out, "samples", "step_0000020.png")) as picture:
        grid = np.asarray(picture)
    assert grid.shape == (2 * (2 * 9 + 1),) * 2  # 4 samples: 2 x 2 tiles of 8x8, 1-pixel padding, scale 2
    # the preview is sj.DDIM(steps=sample_steps) of the EMA model through the public sampler
    import jax

    import scire_jax as sj

    schedule = sj.schedules.discrete(betas=train_lib.ddpm_betas(TINY))
    noise_fn = sj.wrap_model(lambda p, x, t: state.model.apply({"params": p}, x, t), schedule, prediction="noise")
    key = jax.random.fold_in(jax.random.PRNGKey(TINY.seed), 2)
    expected = jax.jit(sj.make_sampler(sj.DDIM(steps=TINY.sample_steps), schedule, noise_fn),
                       static_argnums=2)(state.ema_params, key, (4, 8, 8, 1))
    preview = train_lib.make_preview_sampler(state.model, TINY, (8, 8, 1))(state.ema_params, key)
    np.testing.assert_allclose(np.asarray(preview), np.asarray(expected), atol=1e-5)
    np.testing.assert_array_equal(grid, images.image_grid(np.clip(np.asarray(preview), -1, 1), scale=2)[..., 0])


def test_resume_continues_identical_trajectory(uninterrupted, tmp_path, monkeypatch, capsys):
    _, full = uninterrupted
    out = str(tmp_path / "b")
    first = train_lib.train(TINY, out, stop_at=10, verbose=False)
    assert first.step == 10
    np.testing.assert_array_equal(first.losses, full.losses[:10])
    capsys.readouterr()
    monkeypatch.setenv("SCIRE_JAX_PROGRESS", "1")  # the tqdm bar, also off a terminal
    resumed = train_lib.train(TINY, out, resume=True, verbose=True)
    assert resumed.step == 20
    progress = capsys.readouterr().err
    assert "train:" in progress and "20/20" in progress and "loss=" in progress and "lr=" in progress
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


def test_ema_with_optax_equals_the_hand_written_average():
    """``ema_update`` (optax.incremental_update) = the former ``decay e + (1 - decay) p`` with the decay warm-up."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    ema = {"a": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), "b": {"c": jnp.asarray(rng.standard_normal(5),
                                                                                                jnp.float32)}}
    hand = ema
    update = jax.jit(train_lib.ema_update, static_argnums=3)
    for step in range(40):
        params = jax.tree_util.tree_map(lambda x: x + jnp.asarray(rng.standard_normal(x.shape), jnp.float32), ema)
        decay = jnp.minimum(0.9, (1.0 + jnp.float32(step)) / (10.0 + jnp.float32(step)))
        hand = jax.tree_util.tree_map(lambda e, p, d=decay: d * e + (1.0 - d) * p, hand, params)
        ema = update(ema, params, jnp.asarray(step, jnp.int32), 0.9)
        for a, b in zip(jax_leaves(ema), jax_leaves(hand)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(train_lib.ema_decay_at(0, 0.999)) == pytest.approx(0.1)
    assert float(train_lib.ema_decay_at(10 ** 6, 0.999)) == pytest.approx(0.999)


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", 0.0, "must be > 0"),
    ("learning_rate", -1e-3, "must be > 0"),
    ("steps", 0, "integer >= 1"),
    ("steps", 2.5, "integer >= 1"),
    ("batch_size", 0, "integer >= 1"),
    ("sample_steps", 0, "integer >= 1"),
    ("log_every", 0, "integer >= 1"),
    ("save_every", -1, "integer >= 0"),
    ("warmup_steps", -1, "integer >= 0"),
    ("ema_decay", 1.0, r"in \[0, 1\)"),
    ("adam_b2", 1.5, r"in \[0, 1\)"),
    ("grad_clip", 0.0, "must be > 0"),
    ("weight_decay", -1.0, ">= 0"),
    ("beta_end", 1e-5, "beta_start"),
    ("dataset", "cifar", "allowed: mnist, digits"),
    ("image_size", 0, "None or an integer >= 1"),
    ("model", "unet", "config dict"),
])
def test_config_values_are_checked_and_the_error_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}=.* is not allowed: .*{message}"):
        train_lib.TrainConfig.from_dict(dict(TINY.to_dict(), **{field: value}))


def test_only_unet2d_models():
    with pytest.raises(ValueError, match="arch 'tiny' is not allowed"):
        train_lib.build_model({"arch": "tiny", "channels": 4})
    assert train_lib.build_model(TINY_UNET).block_out_channels == (8,)


def test_default_model_is_the_shipped_1_1_m_parameter_unet():
    import jax
    import jax.numpy as jnp

    module = train_lib.build_model(train_lib.DEFAULT_UNET_CONFIG)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)), jnp.zeros((1,)))
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))
    assert 1.05e6 < count < 1.15e6, count  # docs/embedded_model.md: 1.11 M


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


@pytest.mark.parametrize("shape", [(7, 12), (7, 12, 1), (5, 6, 3)])
def test_write_png_round_trips_through_pillow(tmp_path, shape):
    from PIL import Image

    image = (np.arange(int(np.prod(shape))) * 7 % 256).astype(np.uint8).reshape(shape)
    path = str(tmp_path / "g.png")
    images.write_png(path, image)
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as picture:
        np.testing.assert_array_equal(np.asarray(picture), image[..., 0] if shape[-1:] == (1,) else image)
    assert os.listdir(tmp_path) == ["g.png"]  # written atomically: no temporary left
    with pytest.raises(ValueError, match="uint8"):
        images.write_png(path, image.astype(np.float32))
    with pytest.raises(ValueError, match="not allowed"):
        images.write_png(path, np.zeros((2, 3, 5), np.uint8))


def test_image_grid_layout():
    grid = images.image_grid(np.zeros((5, 8, 8, 1)) - 1.0, scale=2)
    assert grid.shape == (2 * (2 * 9 + 1), 2 * (3 * 9 + 1), 1) and grid.dtype == np.uint8
    assert grid.max() == 0


def test_cli_parser_builds_config():
    import argparse

    parser = argparse.ArgumentParser()
    train_lib.add_train_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--out", "x", "--dataset", "digits", "--steps", "7", "--seed", "5"])
    config = train_lib.config_from_args(args)
    assert (config.dataset, config.image_size, config.steps, config.seed) == ("digits", 8, 7, 5)
    assert config.model["sample_size"] == 8 and args.func is train_lib.run_train


def test_module_main_reports_a_bad_field_in_one_line(tmp_path, capsys):
    assert train_lib.main(["--out", str(tmp_path / "run"), "--dataset", "digits", "--learning-rate", "0"]) == 2
    assert "TrainConfig.learning_rate=0.0 is not allowed" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


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
