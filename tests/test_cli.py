"""The scire-jax command line: sampling a checkpoint, output files, argument errors."""

import os
import struct

import numpy as np
import pytest

from scire_jax import checkpoints, cli
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
    (["--out", "/nonexistent-dir/x.png"], "is not writable"),
    (["--out", "samples.jpg"], "must end in .png or .npz"),
]


@pytest.mark.parametrize("arguments,message", BAD_ARGUMENTS, ids=[b[1] for b in BAD_ARGUMENTS])
def test_bad_arguments_exit_nonzero_with_one_line(tiny_checkpoint, tmp_path, arguments, message, capsys,
                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--model" not in arguments:
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
