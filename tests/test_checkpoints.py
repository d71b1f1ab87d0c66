"""Orbax checkpoints with config beside them: roundtrip, overwrite protection, atomic writes."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scire_jax.io import checkpoints

CONFIG = {"_class_name": "UNet2DModel", "block_out_channels": [8, 16], "attention_head_dim": None, "norm_eps": 1e-6}
EXTRA = {"betas": [1e-4, 2e-4, 3e-4], "prediction": "noise"}


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"params": {"conv_in": {"kernel": rng.standard_normal((3, 3, 3, 8)).astype(np.float32),
                                   "bias": rng.standard_normal(8).astype(np.float32)},
                       "down_blocks_0": {"resnets_0": {"norm1": {"scale": np.ones(8, np.float32)}}},
                       "step": jnp.asarray(np.arange(4, dtype=np.int32))}}


def jax_to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_roundtrip(tmp_path):
    params = _params()
    checkpoints.save(tmp_path / "ckpt", params, CONFIG, EXTRA)
    assert checkpoints.is_checkpoint(tmp_path / "ckpt")
    restored, config, extra = checkpoints.restore(tmp_path / "ckpt")
    chex.assert_trees_all_equal(jax_to_numpy(restored), jax_to_numpy(params))
    assert restored["params"]["step"].dtype == np.int32
    assert config == CONFIG and extra == EXTRA
    assert _leftovers(tmp_path, "ckpt") == []
    # no extra -> {}
    checkpoints.save(str(tmp_path / "plain"), params, CONFIG)
    assert checkpoints.restore(str(tmp_path / "plain"))[2] == {}


def test_refuses_to_overwrite_unless_asked(tmp_path):
    target = tmp_path / "ckpt"
    checkpoints.save(target, _params(0), CONFIG, EXTRA)
    with pytest.raises(FileExistsError, match="overwrite"):
        checkpoints.save(target, _params(1), CONFIG, EXTRA)
    chex.assert_trees_all_equal(jax_to_numpy(checkpoints.restore(target)[0]), jax_to_numpy(_params(0)))
    checkpoints.save(target, _params(1), dict(CONFIG, norm_eps=1e-5), EXTRA, overwrite=True)
    restored, config, _ = checkpoints.restore(target)
    chex.assert_trees_all_equal(jax_to_numpy(restored), jax_to_numpy(_params(1)))
    assert config["norm_eps"] == 1e-5
    assert _leftovers(tmp_path, "ckpt") == []
    # a non-empty directory that is not a checkpoint, and a plain file, are protected too
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        checkpoints.save(tmp_path / "other", _params(), CONFIG)
    assert (tmp_path / "other" / "keep.txt").read_text() == "x"
    # an existing empty directory is fine
    (tmp_path / "empty").mkdir()
    checkpoints.save(tmp_path / "empty", _params(), CONFIG)
    assert checkpoints.is_checkpoint(tmp_path / "empty")


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    original = checkpoints._save_params

    def failing(directory, params):
        original(directory, params)  # the params are written, then something breaks
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoints, "_save_params", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoints.save(tmp_path / "ckpt", _params(), CONFIG, EXTRA)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    checkpoints.save(target, _params(0), CONFIG, EXTRA)
    monkeypatch.setattr(checkpoints, "_save_params", lambda directory, params: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(target, _params(1), CONFIG, EXTRA, overwrite=True)
    chex.assert_trees_all_equal(jax_to_numpy(checkpoints.restore(target)[0]), jax_to_numpy(_params(0)))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_failed_rename_during_overwrite_restores_the_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    checkpoints.save(target, _params(0), CONFIG, EXTRA)
    real_rename = checkpoints.os.rename

    def rename(src, dst):
        if ".ckpt.tmp-" in str(src):
            raise OSError("rename failed")
        return real_rename(src, dst)

    monkeypatch.setattr(checkpoints.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        checkpoints.save(target, _params(1), CONFIG, EXTRA, overwrite=True)
    monkeypatch.undo()
    chex.assert_trees_all_equal(jax_to_numpy(checkpoints.restore(target)[0]), jax_to_numpy(_params(0)))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_invalid_json_and_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="config must be JSON"):
        checkpoints.save(tmp_path / "ckpt", _params(), {"x": object()})
    with pytest.raises(ValueError, match="extra must be JSON"):
        checkpoints.save(tmp_path / "ckpt", _params(), CONFIG, {"nan": float("nan")})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a scire_jax checkpoint"):
        checkpoints.restore(tmp_path / "folder")
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        checkpoints.restore(tmp_path / "missing")
    checkpoints.save(tmp_path / "ckpt", _params(), CONFIG)
    (tmp_path / "ckpt" / checkpoints.MARKER).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="unsupported checkpoint format"):
        checkpoints.restore(tmp_path / "ckpt")
