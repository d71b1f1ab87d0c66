"""EDM networks, preconditioners and the safe snapshot loader against NVlabs/edm reference outputs.

Fixtures (``tests/data/edm``, see its README): weights with EDM key names, inputs and EDM's outputs
(``out_float32``: EDM as is; ``out_float64_pure``: EDM's arithmetic in float64), two snapshot pickles
written like EDM's training loop and three hostile pickles.  Arrays are NCHW as EDM; the Flax modules
are NHWC, so inputs and outputs are transposed here.

Networks run eagerly (no ``jax.jit``): the per-operation compilation cache is shared by all
networks and preconditioners, about 4x cheaper on CPU than compiling one program per case.  Every
network call uses batch 15 (raw-network inputs are tiled) so that the same cached operations serve
all evaluations.  float64 runs use conftest's ``x64`` fixture and compare with ``out_float64_pure``.
"""

import functools
import json
import pickle
import struct
import sys
import types
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scire_jax.io import edm_pickle
from scire_jax.io.convert.weights import load_state_dict
from scire_jax.models import edm

DATA = Path(__file__).parent / "data" / "edm"
SPEC = json.loads((DATA / "cases.json").read_text())
ARRAYS = np.load(DATA / "arrays.npz")
MARKER = SPEC["marker_file"]
BATCH = 15  # sigma grids are 5 rows x 3 images; every call is padded to this batch

CASES = [(case["id"], ev["name"]) for case in SPEC["cases"] for ev in case["evals"]]
DTYPES = ["float32", "float64"]


def _case(case_id):
    return next(case for case in SPEC["cases"] if case["id"] == case_id)


def _tolerance(ref, dtype):
    """Manifest suggestion: 2e-4 (float32) / 1e-9 (float64 vs float64_pure) times max(1, max|ref|)."""
    return (2e-4 if dtype == "float32" else 1e-9) * max(1.0, float(np.abs(ref).max()))


def _need_x64(request, dtype):
    """float64 runs use conftest's ``x64`` fixture (the suite's default is float32)."""
    if dtype == "float64":
        request.getfixturevalue("x64")


@functools.cache
def _snapshot(file):
    return edm_pickle.load_edm_pickle(DATA / file)


@functools.cache
def _network_params(network_id):
    """Flax params of the bare network (from its safetensors, or from the snapshot that holds it)."""
    case = next(c for c in SPEC["cases"] if c["network_id"] == network_id)
    weights = case["weights"]
    if "snapshot" in weights:
        return _snapshot(weights["snapshot"])[1]["model"]
    net = edm.from_edm_kwargs(case["network_class"], case["network_kwargs"])
    return edm_pickle.params_from_state_dict(net, load_state_dict(DATA / weights["safetensors"]),
                                             source=weights["safetensors"])


@functools.cache
def _precond_params(case_id):
    case = _case(case_id)
    if case["precond_class"] != "iDDPMPrecond":
        return {"model": _network_params(case["network_id"])}
    # iDDPM goes through the full EDM-key path (model.* plus the buffer u).
    state = {"model." + k: v for k, v in load_state_dict(DATA / case["weights"]["safetensors"]).items()}
    state.update(load_state_dict(DATA / case["weights"]["extra_safetensors"]))
    module = edm.from_edm_kwargs(case["precond_class"], case["precond_kwargs"])
    return edm_pickle.params_from_state_dict(module, state, source=case_id)


def _module(case, dtype):
    if case["precond_class"] is None:
        return edm.from_edm_kwargs(case["network_class"], case["network_kwargs"], dtype=dtype)
    return edm.from_edm_kwargs(case["precond_class"], case["precond_kwargs"], dtype=dtype)


def _nhwc(x):
    return np.moveaxis(x, -3, -1)


def _pad(a, count):
    """Tile ``count`` samples along the batch axis to BATCH samples."""
    return None if a is None else np.concatenate([a] * (BATCH // count), axis=0)


class _NoiseLabels:
    """Interceptor recording the noise labels a preconditioner passes to its network."""

    def __init__(self):
        self.values = []

    def __call__(self, next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (edm.SongUNet, edm.DhariwalUNet)):
            self.values.append(np.asarray(args[1]))
        return next_fun(*args, **kwargs)


def _run(case, ev, dtype, module=None, params=None):
    """(output NCHW [..], reference, noise labels seen by the network or None) of one eval."""
    keys = ev["keys"]
    cast = np.float32 if dtype == "float32" else np.float64

    def get(name):
        return ARRAYS[keys[name]].astype(cast) if name in keys else None

    module = _module(case, jnp.dtype(dtype)) if module is None else module
    ref = ARRAYS[keys["out_float32" if dtype == "float32" else "out_float64_pure"]]
    if case["precond_class"] is None:
        x, batch = get("x"), get("x").shape[0]
        args = (_pad(_nhwc(x), batch), _pad(get("noise_labels"), batch), _pad(get("class_labels"), batch),
                _pad(get("augment_labels"), batch))
        params = _network_params(case["network_id"]) if params is None else params
        out = module.apply({"params": params}, *args)
        return np.moveaxis(np.asarray(out), -1, -3)[:batch], ref, None
    x = _nhwc(get("x"))  # [R, B, H, W, C]
    rows, batch = x.shape[:2]
    x = _pad(x.reshape((rows * batch,) + x.shape[2:]), rows * batch)
    sigma = _pad(get("sigma").reshape(-1), rows * batch)
    labels, augment = get("class_labels"), get("augment_labels")
    labels = None if labels is None else _pad(np.tile(labels, (rows, 1)), rows * batch)
    augment = None if augment is None else _pad(np.tile(augment, (rows, 1)), rows * batch)
    params = _precond_params(case["id"]) if params is None else params
    recorder = _NoiseLabels()
    with nn.intercept_methods(recorder):
        out = module.apply({"params": params}, x, sigma, labels, augment)
    out = np.moveaxis(np.asarray(out), -1, -3)[:rows * batch].reshape(ref.shape)
    return out, ref, recorder.values[0][:rows * batch].reshape(rows, batch)


# -- networks and preconditioners --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id,eval_name", CASES)
def test_case_matches_edm(request, case_id, eval_name, dtype):
    _need_x64(request, dtype)
    case = _case(case_id)
    ev = next(e for e in case["evals"] if e["name"] == eval_name)
    out, ref, labels = _run(case, ev, dtype)
    assert out.dtype == np.dtype(dtype)
    if case["precond_class"] is None:
        chex.assert_trees_all_close(out, ref, atol=_tolerance(ref, dtype), rtol=0)
        return
    for row in range(ref.shape[0]):  # tolerance per sigma row (manifest suggestion)
        chex.assert_trees_all_close(out[row], ref[row], atol=_tolerance(ref[row], dtype), rtol=0)
    expected = ARRAYS[ev["keys"]["model_noise_labels_" + ("float32" if dtype == "float32" else "float64_pure")]]
    if case["precond_class"] == "iDDPMPrecond":
        np.testing.assert_array_equal(labels, expected)  # integer steps
    else:
        chex.assert_trees_all_close(labels, expected, atol=1e-5 if dtype == "float32" else 1e-12, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", SPEC["blocks"], ids=lambda b: b["id"])
def test_unet_block_matches_edm(request, block, dtype):
    _need_x64(request, dtype)
    kwargs = dict(block["kwargs"])
    kwargs["resample_filter"] = tuple(kwargs.get("resample_filter", (1, 1)))
    module = edm.UNetBlock(**kwargs, dtype=jnp.dtype(dtype))
    assert module.heads == block["num_heads"]
    params = edm_pickle.params_from_state_dict(module, load_state_dict(DATA / block["weights"]))
    cast = np.float32 if dtype == "float32" else np.float64
    x = _nhwc(ARRAYS[block["keys"]["x"]]).astype(cast)
    # One small program: jit compiles it faster than the block's operations compile one by one.
    out = jax.jit(module.apply)({"params": params}, x, ARRAYS[block["keys"]["emb"]].astype(cast))
    ref = ARRAYS[block["keys"]["out_float32" if dtype == "float32" else "out_float64_pure"]]
    chex.assert_trees_all_close(np.moveaxis(np.asarray(out), -1, -3), ref, atol=_tolerance(ref, dtype), rtol=0)


@pytest.mark.parametrize("dtype,rtol", [("bfloat16", 3e-2), ("float16", 4e-3)])
def test_reduced_precision_compute(dtype, rtol):
    """EDM's use_fp16 analogue: activations in dtype, float32 parameters, float32 attention softmax."""
    block = SPEC["blocks"][0]  # the 4-head ADM block
    module = edm.UNetBlock(**block["kwargs"], dtype=jnp.dtype(dtype))
    params = edm_pickle.params_from_state_dict(module, load_state_dict(DATA / block["weights"]))
    out = jax.jit(module.apply)({"params": params}, _nhwc(ARRAYS[block["keys"]["x"]]), ARRAYS[block["keys"]["emb"]])
    assert out.dtype == jnp.dtype(dtype)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(params))
    ref = ARRAYS[block["keys"]["out_float32"]]
    out = np.moveaxis(np.asarray(out, np.float32), -1, -3)
    chex.assert_trees_all_close(out, ref, atol=rtol * np.abs(ref).max(), rtol=0)


def test_dhariwal_attention_needs_64_channels():
    """EDM quirk: DhariwalUNet blocks with < 64 channels get no attention even where asked."""
    case = _case("adm_cond__raw")
    expected = {name.replace(".", "_", 1) for name in case["attention_heads"]}
    params = _network_params("adm_cond")
    assert {name for name, leaf in params.items() if "qkv" in leaf} == expected
    assert "dec_16x16_block0" in params and "qkv" not in params["dec_16x16_block0"]  # 16 < 64 channels


def test_iddpm_table_and_vp_limits():
    u = load_state_dict(DATA / "adm_uncond_iddpm__iddpm.safetensors")["u"]
    chex.assert_trees_all_close(edm.iddpm_sigmas(), u, rtol=5e-5, atol=0)
    vp = edm.VPPrecond(model=None)
    attributes = SPEC["snapshots"][0]["attributes"]
    assert (vp.sigma_min, vp.sigma_max) == (attributes["sigma_min"], attributes["sigma_max"])


def test_from_edm_kwargs_rejects_unknown():
    with pytest.raises(ValueError, match="unknown EDM class"):
        edm.from_edm_kwargs("StyleGAN", {})
    with pytest.raises(ValueError, match="does not take the EDM kwargs"):
        edm.from_edm_kwargs("SongUNet", {"img_resolution": 8, "in_channels": 3, "out_channels": 3, "bogus": 1})
    with pytest.raises(ValueError, match="model_type"):
        edm.from_edm_kwargs("EDMPrecond", {"img_resolution": 8, "img_channels": 3, "model_type": "Nope"})


def test_state_dict_mismatch_is_reported():
    case = _case("ddpmpp_uncond__raw")
    net = edm.from_edm_kwargs(case["network_class"], case["network_kwargs"])
    state = load_state_dict(DATA / case["weights"]["safetensors"])
    state.pop("map_layer0.bias")
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="1 missing keys, 1 unexpected keys"):
        edm_pickle.params_from_state_dict(net, state)


# -- snapshot pickles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("snapshot", SPEC["snapshots"], ids=lambda s: s["case"])
def test_snapshot_loads_and_reproduces(snapshot):
    module, params, info = _snapshot(snapshot["file"])
    assert type(module).__name__ == info["class_name"] == snapshot["class_name"]
    assert info["kwargs"] == snapshot["init_kwargs"]
    assert info["module_src_known"] and info["module_src_sha256"] == snapshot["module_src_sha256"]
    assert info["top_level_keys"] == ["augment_pipe", "dataset_kwargs", "ema", "loss_fn"]
    assert info["dataset_kwargs"] == snapshot["dataset_kwargs"]
    for name, value in snapshot["attributes"].items():
        assert info["attributes"][name] == (float(value) if value == "inf" else value), name
    case = _case(snapshot["case"])
    for ev in case["evals"]:  # all sigma rows in one batch: EDM treats every image independently
        out, ref, _ = _run(case, ev, "float32", module=module, params=params)
        for row in range(ref.shape[0]):
            chex.assert_trees_all_close(out[row], ref[row], atol=_tolerance(ref[row], "float32"), rtol=0)


def test_snapshot_info_and_schedule_mappings():
    _, _, vp = _snapshot("network-snapshot-ddpmpp_cond_aug-vp.pkl")
    _, _, ed = _snapshot("network-snapshot-adm_cond-edm.pkl")
    assert (vp["loss_fn_class"], vp["augment_pipe_class"]) == ("VPLoss", "AugmentPipe")
    assert (ed["loss_fn_class"], ed["augment_pipe_class"]) == ("EDMLoss", None)
    assert (vp["network_class"], ed["network_class"]) == ("SongUNet", "DhariwalUNet")
    for info in (vp, ed):  # EDM / SciRE convention: alpha = 1, sigma = t, D is the data prediction
        mapping = info["schedule_mapping"]
        assert (mapping["prediction"], mapping["time_input"], mapping["method"]) == ("x_start", "continuous",
                                                                                     "__call__")
        assert (mapping["t_start"], mapping["t_end"]) == (80.0, 0.002)
        assert (mapping["schedule"].sigma_min, mapping["schedule"].sigma_max) == (0.002, 80.0)
    native = vp["native_schedule_mapping"]
    schedule = native["schedule"]
    assert (schedule.beta_0, schedule.beta_1) == (0.1, 20.0)
    assert (native["prediction"], native["time_input"], native["time_input_scale"]) == ("noise", "scaled", 999.0)
    t = np.linspace(0.01, 1.0, 7)
    np.testing.assert_allclose(schedule.nsr(t), edm.vp_sigma(t, 19.9, 0.1), rtol=1e-12)
    np.testing.assert_allclose(schedule.nsr(np.array([native["t_start"], native["t_end"]])), [80.0, 0.002],
                               rtol=1e-10)


def test_vp_native_mapping_equals_denoiser(x64):
    """eps(x_t; (M-1) t) on scire's linear schedule == (x_edm - D(x_edm; sigma)) / sigma, x_edm = x_t / alpha_t."""
    _, params, info = _snapshot("network-snapshot-ddpmpp_cond_aug-vp.pkl")
    module = edm.from_edm_kwargs(info["class_name"], info["kwargs"], dtype=jnp.float64)
    native = info["native_schedule_mapping"]
    schedule = native["schedule"]
    rng = np.random.default_rng(0)
    t = np.repeat(np.array([0.002, 0.05, 0.3, 0.9, 0.6]), 3)
    x_t = rng.standard_normal((BATCH, 16, 16, 3))
    labels = np.eye(10)[rng.integers(0, 10, BATCH)]
    alpha, sigma = schedule.alpha(t), schedule.nsr(t)
    eps = module.apply({"params": params}, x_t, native["time_input_scale"] * t, labels, method=type(module).eps)
    x_edm = x_t / alpha[:, None, None, None]
    denoised = module.apply({"params": params}, x_edm, sigma, labels)
    from_d = (x_edm - np.asarray(denoised)) / sigma[:, None, None, None]
    chex.assert_trees_all_close(np.asarray(eps), from_d, atol=1e-9, rtol=1e-9)


def test_edm_mapping_through_wrap_model():
    import scire_jax as sj

    module, params, info = _snapshot("network-snapshot-adm_cond-edm.pkl")
    mapping = info["schedule_mapping"]
    noise_fn = sj.wrap_model(edm_pickle.edm_apply_fn(module, mapping), mapping["schedule"],
                             prediction=mapping["prediction"], time_input=mapping["time_input"])
    x = ARRAYS[_case("adm_cond__edm")["evals"][0]["keys"]["x"]]
    x = _nhwc(x.reshape((BATCH,) + x.shape[2:]))
    t = np.repeat(np.array([0.002, 0.5, 10.0, 80.0, 3.0], np.float32), 3)
    eps = noise_fn(params, jnp.asarray(x), jnp.asarray(t))
    denoised = module.apply({"params": params}, x, t)
    expected = (x - np.asarray(denoised)) / t[:, None, None, None]
    chex.assert_trees_all_close(np.asarray(eps), expected, atol=1e-5 * np.abs(expected).max(), rtol=0)


# -- hostile and broken files --------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", SPEC["hostile_pickles"], ids=lambda h: h["file"])
def test_hostile_pickle_is_refused(hostile, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the payload would write its marker
    path = DATA / hostile["file"]
    with pytest.raises(ValueError) as error:
        edm_pickle.load_edm_pickle(path)
    message = str(error.value)
    assert "\n" not in message and hostile["file"] in message
    if hostile["dangerous_global"].startswith("torch_utils"):
        assert "module_src" in message
    else:
        assert f"refused global {hostile['dangerous_global']}" in message
    assert not (tmp_path / MARKER).exists()
    assert not (Path.cwd() / MARKER).exists()


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _utf8(text):  # BINUNICODE
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _legacy_storage_blob(values):
    """A legacy torch.save stream of one float32 storage, written without torch."""
    head = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001,
                                                            {"protocol_version": 1001, "little_endian": True}))
    persistent = (b"\x80\x02(" + _utf8("storage") + b"ctorch\nFloatStorage\n" + _utf8("k0") + _utf8("cpu")
                  + b"K" + bytes([len(values)]) + b"Nt" + b"Q.")
    data = np.asarray(values, np.float32).tobytes()
    return head + persistent + pickle.dumps(["k0"], protocol=2) + struct.pack("<q", len(values)) + data


def _tensor_pickle(blob, offset, size, stride):
    """REDUCE(torch._utils._rebuild_tensor_v2, (REDUCE(_load_from_bytes, (blob,)), offset, size, stride, False,
    OrderedDict())) as raw protocol-3 opcodes."""
    def ints(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

    return (b"\x80\x03ctorch._utils\n_rebuild_tensor_v2\n(ctorch.storage\n_load_from_bytes\n"
            + b"B" + struct.pack("<I", len(blob)) + blob + b"\x85R"
            + b"J" + struct.pack("<i", offset) + ints(size) + ints(stride)
            + b"\x89ccollections\nOrderedDict\n)RtR.")


def test_tensor_records_are_read_without_torch_and_bounds_checked(tmp_path):
    blob = _legacy_storage_blob([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    ok = edm_pickle.read_edm_pickle(_write(tmp_path, "ok.pkl", _tensor_pickle(blob, 1, (2, 2), (1, 2))))
    np.testing.assert_array_equal(ok, [[1.0, 3.0], [2.0, 4.0]])
    with pytest.raises(ValueError, match="reads past its storage"):
        edm_pickle.read_edm_pickle(_write(tmp_path, "oob.pkl", _tensor_pickle(blob, 3, (2,), (5,))))
    with pytest.raises(ValueError, match="larger than its storage"):  # zero strides: no huge copies
        edm_pickle.read_edm_pickle(_write(tmp_path, "big.pkl", _tensor_pickle(blob, 0, (10 ** 5, 10 ** 5), (0, 0))))


@pytest.fixture
def forge(monkeypatch):
    """Build EDM-shaped pickles with Python's pickler: a stand-in torch_utils.persistence module (only
    in sys.modules for this test) gives the persistent records the global EDM's files use."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called: only its name is pickled
        raise AssertionError("not for loading")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)

    class Record:
        def __init__(self, class_name, modules=(), src="class EDMPrecond(torch.nn.Module):\n", **extra):
            state = {"_parameters": {}, "_buffers": {}, "_modules": dict(modules), **extra}
            self.meta = {"type": "class", "version": 6, "module_src": src, "class_name": class_name, "state": state}

        def __reduce__(self):
            return _reconstruct_persistent_obj, (self.meta,)

    return Record


@pytest.mark.parametrize("layout,refused", [
    ("shared", "cyclic, shared or too deep"),
    ("unknown-class", "unknown class 'Evil'"),
    ("other-source", "comes from another module source"),
])
def test_forged_module_graphs_are_refused(forge, tmp_path, layout, refused):
    kwargs = {"_init_args": (), "_init_kwargs": {"img_resolution": 8, "img_channels": 3}}
    child = forge("DhariwalUNet", **kwargs)
    if layout == "shared":
        modules = {"model": child, "copy": child}
    elif layout == "unknown-class":
        modules = {"model": forge("DhariwalUNet", {"evil": forge("Evil")}.items(), **kwargs)}
    else:
        modules = {"model": forge("DhariwalUNet", src="class DhariwalUNet(torch.nn.Module):\n", **kwargs)}
    data = pickle.dumps({"ema": forge("EDMPrecond", modules.items(), **kwargs)}, protocol=4)
    with pytest.raises(ValueError, match=refused):
        edm_pickle.load_edm_pickle(_write(tmp_path, "forged.pkl", data))


@pytest.mark.parametrize("data,refused", [
    (b"\x80\x02csubprocess\nPopen\nq\x00.", "refused global subprocess.Popen"),
    (b"\x80\x02ctorch._utils\n_rebuild_device_tensor_from_numpy\n.",
     "refused global torch._utils._rebuild_device_tensor_from_numpy"),
    (b"\x80\x02cos\nsystem\n" + _utf8("echo hi") + b"\x85R.", "refused global os.system"),
    (b"\x80\x02" + _utf8("storage") + b"Q.", "refused persistent id"),
    (b"\x80\x03cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\n" + _utf8("O") + b"\x89\x88\x87R"
     + b"C\x08" + bytes(8) + b"\x86R.", "numeric scalars"),
], ids=["subprocess", "torch-lookalike", "os.system", "persistent-id", "object-scalar"])
def test_unknown_globals_are_refused(tmp_path, monkeypatch, data, refused):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "unknown.pkl", data)
    with pytest.raises(ValueError, match="refusing EDM pickle") as error:
        edm_pickle.load_edm_pickle(path)
    assert refused in str(error.value) and "unknown.pkl" in str(error.value)


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.5, 0.99])
def test_truncated_snapshot_is_refused(tmp_path, fraction):
    data = (DATA / "network-snapshot-adm_cond-edm.pkl").read_bytes()
    path = _write(tmp_path, "truncated.pkl", data[:int(len(data) * fraction)])
    with pytest.raises(ValueError, match="truncated") as error:
        edm_pickle.load_edm_pickle(path)
    assert "\n" not in str(error.value)


def test_non_snapshot_contents_are_refused(tmp_path):
    with pytest.raises(ValueError, match="without 'ema'"):
        edm_pickle.load_edm_pickle(_write(tmp_path, "dict.pkl", pickle.dumps({"net": 1})))
    with pytest.raises(ValueError, match="not an EDM persistent object"):
        edm_pickle.load_edm_pickle(_write(tmp_path, "list.pkl", pickle.dumps([1, 2])))
    with pytest.raises(ValueError, match="cannot read"):
        edm_pickle.load_edm_pickle(tmp_path / "missing.pkl")
