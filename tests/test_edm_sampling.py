"""EDM models through the public paths: ``load_pretrained`` / ``scire-jax convert`` of EDM pickles, EDM's Heun
sampler against ``generate.edm_sampler``, and ``scire-jax fid`` end to end.

Fixtures (``tests/data/edm``, see its README): the two snapshot pickles, the hostile pickles, the
precondition evals (``arrays.npz``) and EDM's sampler outputs (``sampler.npz`` / ``sampler.json``,
``out_float64_pure``: ``edm_sampler`` with EDM's arithmetic in float64).

The float64 Heun runs call the network through a host callback of ``model.apply_fn`` jitted once per
network (the same function, labels and weights as the record): compiling the float64 networks into
every solver's scan would cost ~20 s per case on two CPU cores.  The solver, its plan, the
prediction conversion of ``wrap_model`` and the label handling are the ordinary ones; the
ordinary fused path (network inside the scan) runs in the float32 Heun case and the FID run.
"""

import functools
import json
import re
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scire_jax as sj
from scire_jax.apps import cli
from scire_jax.io import edm_loading, edm_pickle
from scire_jax.io.convert.weights import load_state_dict
from scire_jax.models import edm

DATA = Path(__file__).parent / "data" / "edm"
SPEC = json.loads((DATA / "cases.json").read_text())
ARRAYS = np.load(DATA / "arrays.npz")
SAMPLER = json.loads((DATA / "sampler.json").read_text())["sampler"]
SAMPLER_ARRAYS = np.load(DATA / "sampler.npz")
MARKER = SPEC["marker_file"]
SNAPSHOTS = {s["network_id"]: s for s in SPEC["snapshots"]}
VP_PICKLE = DATA / "network-snapshot-ddpmpp_cond_aug-vp.pkl"
SEED_SOLVER = "scire:algorithm=v1,method=singlestep_fixed,order=2,phi=0.6666666666666666"


def _case(case_id):
    return next(case for case in SPEC["cases"] if case["id"] == case_id)


def _nhwc(x):
    return np.moveaxis(x, -3, -1)


def _nchw(x):
    return np.moveaxis(np.asarray(x), -1, -3)


@functools.cache
def _record(file, schedule="trained", dtype="float32"):
    return sj.load_pretrained(DATA / file, dtype=jnp.dtype(dtype), schedule=schedule)


def _noise_fn(model, labels):
    """The record's noise predictor with fixed class labels."""
    return sj.wrap_model(lambda p, x, t: model.apply_fn(p, x, t, labels), model.schedule, model.prediction,
                         model.time_input)


# -- load_pretrained and convert ---------------------------------------------------------------------------------


@pytest.mark.parametrize("snapshot", SPEC["snapshots"], ids=lambda s: s["case"])
def test_snapshot_pickles_load_through_load_pretrained(snapshot):
    model = _record(snapshot["file"])
    assert (model.family, model.prediction, model.time_input) == ("edm", "x_start", "continuous")
    assert (model.schedule.sigma_min, model.schedule.sigma_max) == (0.002, 80.0)
    assert (model.conditioning, model.num_classes, model.sample_shape) == ("class", 10, (16, 16, 3))
    case = _case(snapshot["case"])
    ev = next(e for e in case["evals"] if e["name"] == "sigma_grid")
    keys = ev["keys"]
    x, sigma, ref = ARRAYS[keys["x"]], ARRAYS[keys["sigma"]], ARRAYS[keys["out_float32"]]
    rows, batch = sigma.shape
    one_hot = ARRAYS[keys["class_labels"]]
    labels = np.tile(np.argmax(one_hot, axis=1), rows)  # int labels: one-hot inside apply_fn
    x_flat = _nhwc(x.reshape((rows * batch,) + x.shape[2:]))
    out = _nchw(model.apply_fn(model.params, x_flat, sigma.reshape(-1), labels)).reshape(ref.shape)
    for row in range(rows):  # the manifest's float32 tolerance, per sigma row
        chex.assert_trees_all_close(out[row], ref[row], atol=2e-4 * max(1.0, np.abs(ref[row]).max()), rtol=0)
    floats = model.apply_fn(model.params, x_flat, sigma.reshape(-1), np.tile(one_hot, (rows, 1)))  # EDM's rows
    np.testing.assert_array_equal(_nchw(floats).reshape(ref.shape), out)


def test_class_label_formats_are_checked():
    model = _record("network-snapshot-adm_cond-edm.pkl")
    x, sigma = jnp.zeros((2, 16, 16, 3)), jnp.ones((2,))
    with pytest.raises(ValueError, match="float class labels must have shape"):
        model.apply_fn(model.params, x, sigma, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="integer class labels"):
        model.apply_fn(model.params, x, sigma, jnp.zeros((2, 1), jnp.int32))
    with pytest.raises(ValueError, match="unconditional"):
        edm_loading.class_labels(jnp.array([1, 2]), 0)
    with pytest.raises(ValueError, match="variables"):
        model.apply_fn(model.params["params"], x, sigma)
    with pytest.raises(ValueError, match="schedule='native' is not allowed for EDMPrecond"):
        sj.load_pretrained(DATA / "network-snapshot-adm_cond-edm.pkl", schedule="native")
    with pytest.raises(ValueError, match="schedule='vp' is not allowed for EDM models"):
        sj.load_pretrained(VP_PICKLE, schedule="vp")
    with pytest.raises(ValueError, match="does not exist"):
        sj.load_pretrained(DATA / "missing.pkl")


def test_native_vp_schedule_is_the_same_model():
    """schedule="native": eps on scire's linear VP schedule == (x_edm - D(x_edm; sigma)) / sigma of the EDM record."""
    native, ours = _record(VP_PICKLE.name, "native"), _record(VP_PICKLE.name)
    assert (native.schedule.name, native.prediction, native.time_input) == ("linear", "noise", "continuous")
    t_start, t_end = edm_loading.edm_time_range(native)
    np.testing.assert_allclose(native.schedule.nsr(np.array([t_start])), [80.0], rtol=1e-9)
    assert edm_loading.edm_time_range(ours) == (80.0, 0.002)
    labels = jnp.arange(15) % 10
    t = jnp.repeat(jnp.array([0.01, 0.05, 0.3, 0.6, 0.9]), 3)
    x_t = jax.random.normal(jax.random.key(0), (15, 16, 16, 3))
    eps_native = _noise_fn(native, labels)(native.params, x_t, t)
    alpha, nu = native.schedule.alpha(t), native.schedule.nsr(t)
    eps_edm = _noise_fn(ours, labels)(ours.params, x_t / alpha[:, None, None, None], nu)
    chex.assert_trees_all_close(eps_native, eps_edm, atol=2e-4 * float(jnp.abs(eps_edm).max()), rtol=0)


def test_convert_writes_a_checkpoint_that_loads_without_the_pickle(tmp_path, capsys):
    source = DATA / "network-snapshot-adm_cond-edm.pkl"  # EDMPrecond: sigma_max = inf in the config
    assert cli.main(["convert", str(source), str(tmp_path / "edm")]) == 0
    assert "EDM EDMPrecond(DhariwalUNet)" in capsys.readouterr().out
    config = json.loads((tmp_path / "edm" / "config.json").read_text())
    assert (config["family"], config["class_name"]) == ("edm", "EDMPrecond")
    assert config["kwargs"] == SNAPSHOTS["adm_cond"]["init_kwargs"]
    assert config["attributes"]["sigma_max"] == {"float": "inf"}
    converted, original = sj.load_pretrained(tmp_path / "edm"), _record(source.name)
    assert repr(converted).replace(str(tmp_path / "edm"), "X") == repr(original).replace(str(source), "X")
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    args = (x, jnp.array([0.1, 1.0, 10.0]), jnp.array([0, 4, 9]))
    np.testing.assert_array_equal(converted.apply_fn(converted.params, *args), original.apply_fn(original.params, *args))


@pytest.mark.parametrize("hostile", SPEC["hostile_pickles"], ids=lambda h: h["file"])
def test_hostile_pickles_are_refused_through_the_public_paths(hostile, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where a payload would write its marker
    path = DATA / hostile["file"]
    with pytest.raises(ValueError, match="refusing EDM pickle .*nothing from the file was executed"):
        sj.load_pretrained(path)
    assert cli.main(["convert", str(path), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "refusing EDM pickle" in error and hostile["file"] in error
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / MARKER).exists() and not (DATA / MARKER).exists()


# -- EDM's Heun sampler against generate.edm_sampler ---------------------------------------------------------------


@functools.cache
def _sampler_model(network_id):
    """(float64 record, host-callback apply_fn) of a sampler fixture's network."""
    if network_id in SNAPSHOTS:
        model = _record(SNAPSHOTS[network_id]["file"], dtype="float64")
    else:  # iDDPM: weights from the safetensors (EDM keys, plus the buffer u)
        case = next(c for c in SPEC["cases"] if c["network_id"] == network_id and c["precond_class"])
        module = edm.from_edm_kwargs(case["precond_class"], case["precond_kwargs"], dtype=jnp.float64)
        state = {"model." + k: v for k, v in load_state_dict(DATA / case["weights"]["safetensors"]).items()}
        state.update(load_state_dict(DATA / case["weights"]["extra_safetensors"]))
        params = edm_pickle.params_from_state_dict(module, state, source=case["id"])
        u = params["u"]
        attributes = {"sigma_min": float(u[-2]), "sigma_max": float(u[0]), "M": 1000, "C_1": 0.001, "C_2": 0.008}
        model = edm_loading.edm_record(module, params, case["precond_class"], attributes, source=case["id"])
    compiled = jax.jit(model.apply_fn)

    def apply_fn(params, x, t_input, *cond):
        def host(x, t_input, *cond):
            return np.asarray(compiled(model.params, x, t_input, *cond))

        return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x, t_input, *cond)

    return model, apply_fn


@pytest.mark.parametrize("fixture", SAMPLER, ids=lambda s: s["id"].removeprefix("sampler__"))
def test_heun_equals_edm_sampler_float64(x64, fixture):
    keys = fixture["keys"]
    model, apply_fn = _sampler_model(fixture["network_id"])
    t_steps = SAMPLER_ARRAYS[keys["t_steps"]]
    if fixture["precond_class"] == "iDDPMPrecond":
        # EDM rounds its grid to the table u (round_sigma), so sigma_max becomes 80.2: EDM's own grid
        solver, schedule = sj.EDMHeun(times=t_steps[:-1]), sj.schedules.edm(t_steps[-2], t_steps[0])
    else:
        solver, schedule = sj.EDMHeun(steps=fixture["num_steps"]), model.schedule
        grid = np.asarray(sj.plan(solver, schedule).evaluation_times)[0::2]  # s, t, t, ...: EDM's t_0 .. t_{N-1}
        np.testing.assert_allclose(grid, t_steps[:-1], rtol=1e-13)
    assert sj.plan(solver, schedule).nfe == fixture["nfe"] == 2 * fixture["num_steps"] - 1
    labels = np.argmax(SAMPLER_ARRAYS[keys["class_labels"]], axis=1) if "class_labels" in keys else None
    if labels is None:
        noise_fn = sj.wrap_model(apply_fn, schedule, model.prediction, model.time_input)
    else:
        noise_fn = sj.wrap_model(lambda p, x, t: apply_fn(p, x, t, jnp.asarray(labels)), schedule, model.prediction,
                                 model.time_input)
    x_start = _nhwc(SAMPLER_ARRAYS[keys["latents"]].astype(np.float64)) * t_steps[0]  # EDM: latents * t_0
    out = _nchw(jax.jit(lambda x: sj.solve(solver, schedule, noise_fn, None, x))(x_start))
    assert out.dtype == np.float64
    ref = SAMPLER_ARRAYS[keys["out_float64_pure"]]
    chex.assert_trees_all_close(out, ref, atol=1e-10 * max(1.0, np.abs(ref).max()), rtol=0)


def test_heun_float32_through_the_fused_sampler():
    """The ordinary path (network inside the jitted scan, float32) against EDM's float32-network run."""
    fixture = next(s for s in SAMPLER if s["id"] == "sampler__adm_cond__edm__5steps")
    keys = fixture["keys"]
    model = _record(SNAPSHOTS["adm_cond"]["file"])
    labels = jnp.asarray(np.argmax(SAMPLER_ARRAYS[keys["class_labels"]], axis=1))
    x_start = _nhwc(SAMPLER_ARRAYS[keys["latents"]]) * np.float32(80.0)
    solver = sj.EDMHeun(steps=5)
    out = _nchw(jax.jit(lambda p, x: sj.solve(solver, model.schedule, _noise_fn(model, labels), p, x))(
        model.params, x_start))
    ref = SAMPLER_ARRAYS[keys["out_float32_network"]]
    chex.assert_trees_all_close(out, ref, atol=2e-4 * np.abs(ref).max(), rtol=0)


# -- scire-jax fid ---------------------------------------------------------------------------------------------------


def _fid_args(tmp_path, *extra):
    return ["fid", "--checkpoint", str(VP_PICKLE), "--solver", SEED_SOLVER, "--nfe", "4", "--num", "5",
            "--batch-size", "3", "--ref", str(tmp_path / "ref.npz"), "--random-inception", "--inception-batch-size",
            "5", "--out-dir", str(tmp_path / "chunks"), *extra]


def _pseudo_fid(text):
    match = re.search(r"^pseudo-FID (\S+) \((.*)\) -- RANDOM Inception weights: NOT an FID$", text, re.M)
    assert match, text
    return float(match.group(1)), match.group(2)


def test_fid_cli_end_to_end_resumes_from_its_chunks(tmp_path, capsys):
    # a point-mass reference (mu = 0, sigma = 0): sqrtm of the zero product is the cheapest on 2048 x 2048
    # (a singular product of two covariances from a few samples costs ~30 CPU-s per FID); image
    # references go through the same load_reference_statistics in the notebook's smoke run
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.zeros((2048, 2048)))
    assert cli.main(_fid_args(tmp_path)) == 0
    captured = capsys.readouterr()
    first, what = _pseudo_fid(captured.out)
    assert np.isfinite(first) and "SciRE-v1 2SF phi=0.666667 NFE 4" in what and "chunks reused 0, sampled 2" in what
    assert "WARNING: --random-inception" in captured.err
    chunks = sorted((tmp_path / "chunks").glob("chunk-*.npz"))
    assert [c.name for c in chunks] == ["chunk-000000.npz", "chunk-000001.npz"]
    with np.load(chunks[1]) as data:
        meta = json.loads(str(data["meta"]))
        assert data["images"].shape == (2, 16, 16, 3) and data["images"].dtype == np.uint8
        assert (meta["first_index"], meta["count"], meta["nfe"], meta["seed"]) == (3, 2, 4, 0)
        assert set(data["labels"]) <= set(range(10))
    assert round(json.loads((tmp_path / "chunks" / "fid.json").read_text())["fid"], 6) == first

    chunks[1].unlink()  # resume: chunk 0 is read back, chunk 1 sampled again
    assert cli.main(_fid_args(tmp_path)) == 0
    again, what = _pseudo_fid(capsys.readouterr().out)
    assert "chunks reused 1, sampled 1" in what and again == first

    # chunks of another run are refused, naming what differs
    assert cli.main(_fid_args(tmp_path, "--seed", "1")) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("scire-jax fid: error:") and "holds chunks of another run" in error and "seed=0" in error


@pytest.mark.parametrize("change,message", [
    ({"--random-inception": None}, "no Inception weights: pass --inception pt_inception-2015-12-05-6726825d.pth"),
    ({"--inception": "weights.pth"}, "are not allowed together"),
    ({"--solver": "scire:bogus=1"}, "field 'bogus' is not allowed"),
    ({"--solver": "nope"}, "solver 'nope' is not allowed"),
    ({"--num": "1"}, "a covariance needs at least 2 samples"),
    ({"--ref": "missing.npz"}, "does not exist"),
    ({"--checkpoint": str(DATA / "malicious_snapshot.pkl")}, "refused global builtins.exec"),
    ({"--nfe": "0"}, "--nfe=0 is not allowed"),
    ({"--nfe": "x"}, "is not an integer"),
])
def test_fid_cli_bad_arguments_are_one_line(tmp_path, monkeypatch, capsys, change, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCIRE_JAX_INCEPTION", raising=False)
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    args = _fid_args(tmp_path)
    for flag, value in change.items():
        if flag in args:
            index = args.index(flag)
            del args[index:index + (1 if flag == "--random-inception" else 2)]
        if value is not None:
            args += [flag, value]
    try:
        code = cli.main(args)
    except SystemExit as exit:  # argparse errors
        code = exit.code
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert any(message in line for line in error), error
    assert error[-1].startswith("scire-jax fid: error:") and message in error[-1]
    assert not (tmp_path / "chunks").exists() and not (tmp_path / MARKER).exists()
