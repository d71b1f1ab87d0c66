"""The scire-jax command line: sampling a checkpoint, output files, argument errors."""

import os
import struct

import numpy as np
import pytest

from scire_jax.apps import cli
from scire_jax.io import checkpoints
from scire_jax.models import UNet2D

TINY_CONFIG = {
    "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
    "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8,
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    module = UNet2D.from_config(TINY_CONFIG)
    params = module.init_params()
    betas = np.linspace(1e-4, 0.02, 1000).tolist()
    checkpoints.save(path, params, module.to_config(), {"betas": betas, "prediction": "noise"})
    return str(path)


def _png_size(path):
    with open(path, "rb") as handle:
        data = handle.read(33)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_sample_writes_png_grid(tiny_checkpoint, tmp_path):
    out = tmp_path / "grid.png"
    assert cli.main(["sample", "--model", tiny_checkpoint, "--num", "8", "--steps", "5", "--out", str(out),
                     "--scale", "2"]) == 0
    width, height = _png_size(out)
    # 8 samples -> 3 columns x 3 rows of 8x8 images with 1-pixel padding, upscaled 2x
    assert (width, height) == (2 * (3 * 9 + 1), 2 * (3 * 9 + 1))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".scire-jax-")]


@pytest.mark.parametrize("solver", ["scire", "unipc"])
def test_sample_writes_npz_in_range(tiny_checkpoint, tmp_path, solver):
    out = tmp_path / "x.npz"
    assert cli.main(["sample", "--model", tiny_checkpoint, "--num", "3", "--steps", "4", "--solver", solver,
                     "--order", "2", "--out", str(out)]) == 0
    samples = np.load(out)["samples"]
    assert samples.shape == (3, 8, 8, 1)
    assert np.all(np.isfinite(samples)) and samples.min() >= -1 and samples.max() <= 1


BAD_ARGUMENTS = [
    (["--steps", "0"], "--steps=0 is not allowed"),
    (["--solver", "euler"], "--solver='euler' is not allowed"),
    (["--order", "4"], "order=4"),
    (["--model", "/nonexistent/model"], "--model='/nonexistent/model'"),
    (["--checkpoint", "/nonexistent/ckpt"], "--checkpoint='/nonexistent/ckpt'"),
    (["--out", "/nonexistent-dir/x.png"], "is not writable"),
    (["--out", "samples.jpg"], "must end in .png or .npz"),
    (["--solver", "ddim", "--phi", "1"], "--phi='1' is not allowed with --solver=ddim"),
    (["--solver", "dpmsolver", "--algorithm", "dpmsolver++"], "contradicts the name"),
    (["--phi", "-2"], "phi"),
    (["--batch-size", "0"], "--batch-size=0 is not allowed"),
    (["--devices", "64"], "--devices=64 is not allowed: only"),
    (["--method", "singlestep_sideways"], "singlestep_sideways"),
]


@pytest.mark.parametrize("arguments,message", BAD_ARGUMENTS, ids=[b[1] for b in BAD_ARGUMENTS])
def test_bad_arguments_exit_nonzero_with_one_line(tiny_checkpoint, tmp_path, arguments, message, capsys,
                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--model" not in arguments and "--checkpoint" not in arguments:
        arguments = ["--model", tiny_checkpoint] + arguments
    if "--out" not in arguments:
        arguments = arguments + ["--out", str(tmp_path / "never.png")]
    try:
        code = cli.main(["sample", *arguments])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code != 0
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert message in lines[-1]
    assert not (tmp_path / "never.png").exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".scire-jax-")]


def test_chunked_sampling_equals_one_batch_and_options_apply(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCIRE_JAX_PROGRESS", "1")  # the progress bar, also off a terminal
    whole, chunked, phi = tmp_path / "whole.npz", tmp_path / "chunked.npz", tmp_path / "phi.npz"
    common = ["sample", "--checkpoint", tiny_checkpoint, "--num", "7", "--steps", "6", "--seed", "3"]
    assert cli.main(common + ["--out", str(whole)]) == 0
    assert "7 samples" in capsys.readouterr().out
    assert cli.main(common + ["--batch-size", "3", "--out", str(chunked)]) == 0
    out = capsys.readouterr()
    assert "3 batch(es) of 3" in out.out and "samples/s" in out.out and "7/7" in out.err  # progress bar
    assert cli.main(common + ["--phi", "1", "--devices", "1", "--out", str(phi)]) == 0
    # same initial noise per sample; the network's float32 convolutions may round differently per batch size
    np.testing.assert_allclose(np.load(chunked)["samples"], np.load(whole)["samples"], atol=1e-4)
    assert np.abs(np.load(phi)["samples"] - np.load(whole)["samples"]).max() > 1e-6  # --phi changes the solver


@pytest.mark.parametrize("arguments,expected", [
    (["--solver", "dpm", "--order", "2"], "DPM++ 2M"),
    (["--solver", "dpm", "--algorithm", "dpmsolver", "--method", "singlestep_agile"], "DPM 3S"),
    (["--solver", "dpmsolver++"], "DPM++ 3M"),
    (["--solver", "scire", "--algorithm", "v2", "--method", "singlestep_fixed", "--order", "2"], "SciRE-v2 2SF"),
    (["--solver", "ddim", "--skip-type", "logSNR"], "DDIM"),
    (["--solver", "unipc", "--order", "1"], "UniPC-1"),
])
def test_solver_flags(arguments, expected):
    args = cli.build_parser().parse_args(["sample", *arguments])
    assert cli._solver_from_args(args).label() == expected


def test_compare_writes_labelled_grid_and_tables(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert cli.main(["compare", "--checkpoint", tiny_checkpoint, "--solvers", "scire", "ddim", "unipc:order=2",
                     "--nfe", "3", "6", "--num", "5", "--error-num", "4", "--per-cell", "4", "--reference-steps", "40",
                     "--scale", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RMSE vs DPM++ 3M x40, first 4 samples" in printed and "classifier metrics skipped" in printed  # 8x8: no classifier
    width, height = _png_size(out)
    # 3 rows of 2x2-sample tiles (19 px) + labels; columns NFE 3, NFE 6, reference
    from scire_jax.apps.images import text_size

    assert height == text_size("")[1] + 2 * 3 + 3 * (19 + 3) and width > 3 * (19 + 3)
    import json

    record = json.loads((tmp_path / "cmp.json").read_text())
    assert record["num"] == 5 and record["error_num"] == 4
    assert [(run["spec"], run["nfe"]) for run in record["runs"]] == [
        ("scire", 3), ("scire", 6), ("ddim", 3), ("ddim", 6), ("unipc:order=2", 3), ("unipc:order=2", 6)]
    for spec in ("scire", "ddim", "unipc:order=2"):
        errors = [run["rmse"] for run in record["runs"] if run["spec"] == spec]
        assert errors[1] < errors[0], (spec, errors)  # more NFE, closer to the reference
    assert record["reference_self_error"]["rmse"] < min(run["rmse"] for run in record["runs"])
    assert (tmp_path / "cmp.md").read_text().startswith("### RMSE")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("cmp.png", "cmp.md", "cmp.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".scire-jax-")]


@pytest.mark.parametrize("arguments,message", [
    (["--solvers", "scire:order=5"], "order=5"),
    (["--solvers", "euler"], "solver 'euler' is not allowed"),
    (["--reference", "dpm:colour=red"], "field 'colour' is not allowed"),
    (["--nfe", "0"], "--nfe=0 is not allowed"),
    (["--out", "cmp.npz"], "must end in .png"),
])
def test_compare_bad_arguments(tiny_checkpoint, tmp_path, arguments, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(["compare", "--checkpoint", tiny_checkpoint, "--num", "2", *arguments])
    except SystemExit as exit_:
        code = exit_.code
    assert code != 0
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert os.listdir(tmp_path) == []


def test_train_config_mismatch_is_one_line(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    common = ["train", "--out", str(out), "--dataset", "digits", "--config", str(tmp_path / "tiny.json"),
              "--save-every", "2", "--sample-every", "0", "--log-every", "1"]
    import json

    tiny_unet = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8],
                 "layers_per_block": 1, "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"],
                 "norm_num_groups": 4, "mid_block_type": None}
    (tmp_path / "tiny.json").write_text(json.dumps({"model": tiny_unet, "batch_size": 16, "warmup_steps": 1}))
    assert cli.main(common + ["--steps", "2"]) == 0
    capsys.readouterr()
    assert cli.main(common + ["--steps", "3", "--learning-rate", "0.5"]) == 2
    assert "learning_rate" in capsys.readouterr().err.strip().splitlines()[-1]
    assert cli.main(common + ["--steps", "3", "--extend"]) == 0
    assert json.loads((out / "stages.json").read_text())[0]["resumed_at_step"] == 2
