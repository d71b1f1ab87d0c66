"""ADM (guided-diffusion) / improved-DDPM networks and their strict converter, against PyTorch fixtures.

Fixtures (tests/data/adm, see its README): random-weight state dicts with the original key names and
the PyTorch outputs in float32, float64 and the runner's fp16 mode.  Tolerances are the fixtures'
(max abs): float32 2e-5 / logits 3e-5 / gradient 3e-6, float64 1e-9, fp16 1e-2 / gradient 2e-3,
bf16 about 0.1.  Each (case, dtype) compiles once, with XLA's cheap CPU optimisation level.
"""

import doctest
import functools
import json
import re
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scire_jax.io.convert.adm import ARCHITECTURES, adm_config, convert_adm
from scire_jax.io.convert.weights import load_state_dict
from scire_jax.models import adm

DATA = Path(__file__).parent / "data" / "adm"
CASES = {case["id"]: case for case in json.loads((DATA / "cases.json").read_text())["cases"]}
FAMILY = {"guided_diffusion.unet.UNetModel": "guided_diffusion",
          "guided_diffusion.unet.EncoderUNetModel": "guided_diffusion_classifier",
          "improved_ddpm.unet.UNetModel": "improved_ddpm"}
DTYPES = {"f32": jnp.float32, "f64": jnp.float64, "fp16": jnp.float16, "bf16": jnp.bfloat16}
# Compiling dominates the run time; these options cut it by ~2/3 and change no result beyond 1e-7.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False}
UNET_TOL = {"f32": 2e-5, "f64": 1e-9, "fp16": 1e-2, "bf16": 0.1}
LOGITS_TOL = {"f32": 3e-5, "f64": 1e-9, "fp16": 1e-2}
GRAD_TOL = {"f32": 3e-6, "f64": 1e-9, "fp16": 2e-3}


def _config(case_id):
    case = CASES[case_id]
    return dict(case["constructor_kwargs"], family=FAMILY[case["class"]])


@functools.cache
def _arrays(case_id):
    with np.load(DATA / CASES[case_id]["arrays_file"]) as data:
        return {key: data[key] for key in data.files}


@functools.cache
def _converted(case_id, dtype_name="f32"):
    if dtype_name != "f32":  # same parameters, another compute dtype
        module, variables, info = _converted(case_id)
        return module.clone(dtype=DTYPES[dtype_name]), variables, info
    return convert_adm(DATA / CASES[case_id]["weights_file"], _config(case_id))


def _nhwc(x):
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _nchw(x):
    return np.transpose(np.asarray(x, np.float64), (0, 3, 1, 2))


def _run(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def _inputs(case_id, dtype_name):
    """t and t_frac in one batch of 6, so each (case, dtype) compiles once."""
    arrays = _arrays(case_id)
    x = _nhwc(np.concatenate([arrays["x"], arrays["x"]]))
    x = x.astype(jnp.float64 if dtype_name == "f64" else jnp.float32)
    t = jnp.asarray(np.concatenate([arrays["t"], arrays["t_frac"]]))
    y = jnp.asarray(np.concatenate([arrays["y"], arrays["y"]])) if "y" in arrays else None
    return x, t, y


def _max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


UNET_RUNS = [("gd_unet_cond", "f32"), ("gd_unet_cond", "f64"), ("gd_unet_cond", "fp16"),
             ("gd_unet_cond_neworder", "f32"), ("gd_unet_cond_neworder", "f64"),
             ("gd_unet_uncond_noss", "f32"), ("gd_unet_uncond_noss", "f64"), ("gd_unet_uncond_noss", "bf16"),
             ("iddpm_unet", "f32"), ("iddpm_unet", "f64")]


@pytest.mark.parametrize("case_id,dtype_name", UNET_RUNS)
def test_unet_matches_pytorch(case_id, dtype_name, request):
    if dtype_name == "f64":
        request.getfixturevalue("x64")
    module, variables, info = _converted(case_id, dtype_name)
    arrays = _arrays(case_id)
    x, t, y = _inputs(case_id, dtype_name)
    if y is None:
        out = _run(lambda v, x, t: module.apply(v, x, t), variables, x, t)
    else:
        out = _run(lambda v, x, t, y: module.apply(v, x, t, y), variables, x, t, y)
    assert out.shape == x.shape[:3] + (6,) and out.dtype == (jnp.float64 if dtype_name == "f64" else jnp.float32)
    out = _nchw(out)
    tol = UNET_TOL[dtype_name]
    if dtype_name in ("f32", "f64"):
        expected = (arrays[f"out_{dtype_name}"], arrays[f"out_tfrac_{dtype_name}"])
        chex.assert_trees_all_close((out[:3], out[3:]), expected, atol=tol, rtol=0)
    else:  # half precision: only t was run in fp16 by the fixtures; compare with the f64 truth too
        reference = arrays["out_fp16"] if dtype_name == "fp16" else arrays["out_f64"]
        chex.assert_trees_all_close(out[:3], reference, atol=tol, rtol=0)
        chex.assert_trees_all_close(out[:3], arrays["out_f64"], atol=tol, rtol=0)
    # the output depends on t (t vs t_frac differ by ~0.1 in the reference)
    assert _max_err(out[:3], out[3:]) > 0.05
    assert info["eps_channels"] == 3 and info["learn_sigma"]


@pytest.mark.parametrize("dtype_name", ["f32", "f64"])
def test_classifier_logits_and_guidance_gradient(dtype_name, request):
    if dtype_name == "f64":
        request.getfixturevalue("x64")
    module, variables, _ = _converted("gd_classifier", dtype_name)
    arrays = _arrays("gd_classifier")
    x, t, y = _inputs("gd_classifier", dtype_name)

    def logits_and_grad(v, x, t, y):
        def selected_log_prob(x):  # sum_i log p(y_i | x_i, t_i), the guidance convention
            logits = module.apply(v, x, t)
            return jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1).sum(), logits

        (_, logits), grad = jax.value_and_grad(selected_log_prob, has_aux=True)(x)
        return logits, grad

    logits, grad = _run(logits_and_grad, variables, x, t, y)
    logits, grad = np.asarray(logits, np.float64), _nchw(grad)
    if dtype_name == "fp16":
        chex.assert_trees_all_close(logits[:3], arrays["logits_fp16"], atol=LOGITS_TOL["fp16"], rtol=0)
        chex.assert_trees_all_close(grad[:3], arrays["grad_fp16"], atol=GRAD_TOL["fp16"], rtol=0)
        chex.assert_trees_all_close((logits[:3], grad[:3]), (arrays["logits_f64"], arrays["grad_f64"]),
                                    atol=GRAD_TOL["fp16"] * 5, rtol=0)
        return
    chex.assert_trees_all_close((logits[:3], logits[3:]),
                                (arrays[f"logits_{dtype_name}"], arrays[f"logits_tfrac_{dtype_name}"]),
                                atol=LOGITS_TOL[dtype_name], rtol=0)
    chex.assert_trees_all_close((grad[:3], grad[3:]),
                                (arrays[f"grad_{dtype_name}"], arrays[f"grad_tfrac_{dtype_name}"]),
                                atol=GRAD_TOL[dtype_name], rtol=0)
    log_p = np.take_along_axis(jax.nn.log_softmax(logits[:3]), arrays["y"][:, None], axis=-1)[:, 0]
    chex.assert_trees_all_close(log_p, arrays[f"logp_y_{dtype_name}"], atol=LOGITS_TOL[dtype_name], rtol=0)


def test_pt_checkpoint_loads_like_safetensors():
    pytest.importorskip("torch")
    module, variables, info = convert_adm(DATA / "gd_classifier.pt", _config("gd_classifier"))
    reference = _converted("gd_classifier", "f32")[1]
    chex.assert_trees_all_equal(variables, reference)
    assert isinstance(module, adm.EncoderUNetModel) and info["family"] == "guided_diffusion_classifier"
    assert info["num_classes"] == 10 and info["n_params"] == 605322


def test_fp16_state_dict_is_accepted_as_float32():
    state_dict = {k: v.astype(np.float16) for k, v in load_state_dict(DATA / "gd_classifier.safetensors").items()}
    _, variables, info = convert_adm(state_dict, _config("gd_classifier"))
    leaves = jax.tree_util.tree_leaves(variables)
    assert all(leaf.dtype == np.float32 for leaf in leaves) and info["source_dtypes"] == ["float16"]
    reference = jax.tree_util.tree_map(lambda a: a.astype(np.float16).astype(np.float32),
                                       _converted("gd_classifier", "f32")[1])
    chex.assert_trees_all_equal(variables, reference)


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gd_classifier.safetensors", "gd_classifier.pt"])
def test_truncated_file_is_a_value_error_naming_it(tmp_path, name):
    if name.endswith(".pt"):
        pytest.importorskip("torch")
    data = (DATA / name).read_bytes()
    broken = tmp_path / f"broken_{name}"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        convert_adm(broken, _config("gd_classifier"))


def test_wrong_architecture_name_lists_allowed_names():
    with pytest.raises(ValueError, match="unknown ADM architecture 'imagenet1024'") as error:
        convert_adm(DATA / "gd_classifier.safetensors", "imagenet1024")
    for name in ARCHITECTURES:
        assert name in str(error.value)


def test_renamed_key_and_wrong_shape_are_listed_one_per_line():
    path = DATA / "gd_unet_uncond_noss.safetensors"
    state_dict = load_state_dict(path)
    state_dict["middle_block.1.qkv.wieght"] = state_dict.pop("middle_block.1.qkv.weight")
    state_dict["out.2.weight"] = state_dict["out.2.weight"][:5]
    with pytest.raises(ValueError) as error:
        convert_adm(state_dict, _config("gd_unet_uncond_noss"))
    lines = str(error.value).splitlines()
    assert "1 missing keys, 1 unexpected keys, 1 shape/dtype mismatches" in lines[0]
    assert "  missing key: middle_block.1.qkv.weight" in lines
    assert "  unexpected key: middle_block.1.qkv.wieght" in lines
    assert "  shape mismatch: out.2.weight: checkpoint (5, 64, 3, 3) vs expected (6, 64, 3, 3)" in lines


def test_weights_of_another_architecture_name_the_file():
    path = DATA / "gd_classifier.safetensors"
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*'imagenet128_classifier'") as error:
        convert_adm(path, "imagenet128_classifier")
    message = str(error.value)
    assert "shape mismatch: input_blocks.0.0.weight: checkpoint (32, 3, 3, 3) vs expected (128, 3, 3, 3)" in message
    assert re.search(r"^  \.\.\. and \d+ more missing$", message, re.MULTILINE)


@pytest.mark.parametrize("family,kwargs,match", [
    ("guided_diffusion", {"num_head_chanels": 64}, "unknown keys \\['num_head_chanels'\\]"),
    ("improved_ddpm", {"num_head_channels": 64}, "unknown keys \\['num_head_channels'\\]"),
    ("guided_diffusion", {"model_channels": 40}, "80 input channels is not a multiple of the 32 GroupNorm groups"),
    ("guided_diffusion", {"attention_resolutions": "16,8"}, "attention_resolutions"),
    ("guided_diffusion", {"dims": 3}, "dims"),
    ("guided_diffusion_classifier", {"pool": "max"}, "pool"),
    ("guided_diffusion_classifier", {"pool": "attention", "num_head_channels": -1}, "num_head_channels"),
    ("guided_diffusion", {"image_size": None, "in_channels": None}, "in_channels"),
    ("lsun", {}, "unknown model family"),
])
def test_invalid_config_is_a_value_error(family, kwargs, match):
    base = dict(CASES["gd_unet_uncond_noss"]["constructor_kwargs"])
    if family == "improved_ddpm":
        base = dict(CASES["iddpm_unet"]["constructor_kwargs"])
    elif family == "guided_diffusion_classifier":
        base = dict(CASES["gd_classifier"]["constructor_kwargs"])
    with pytest.raises(ValueError, match=match):
        adm.from_config({**base, **kwargs}, family)


def test_labels_required_exactly_for_class_conditional_models():
    module, variables, _ = _converted("gd_unet_cond", "f32")
    x, t = jnp.zeros((2, 32, 32, 3)), jnp.zeros((2,))
    with pytest.raises(ValueError, match="class-conditional"):
        jax.eval_shape(module.apply, variables, x, t)
    unconditional = adm.from_config(CASES["gd_unet_uncond_noss"]["constructor_kwargs"], "guided_diffusion")
    with pytest.raises(ValueError, match="class-conditional"):
        jax.eval_shape(unconditional.apply, adm.abstract_variables(unconditional), x[:, :16, :16], t,
                       jnp.zeros((2,), jnp.int32))


# -- the released architectures -------------------------------------------------------------------

RELEASED = json.loads((DATA / "released_architectures.json").read_text())["configs"]
ARCH_OF = {"imagenet64/model": "imagenet64", "imagenet128_guided/model": "imagenet128",
           "imagenet128_guided/classifier": "imagenet128_classifier", "imagenet256_guided/model": "imagenet256",
           "imagenet256_guided/classifier": "imagenet256_classifier", "imagenet512_guided/model": "imagenet512",
           "imagenet512_guided/classifier": "imagenet512_classifier", "bedroom_guided/model": "lsun_bedroom"}


@pytest.mark.parametrize("released", sorted(ARCH_OF))
def test_released_architecture_has_the_checkpoint_keys_and_shapes(released):
    entry, name = RELEASED[released], ARCH_OF[released]
    arch = ARCHITECTURES[name]
    assert arch["family"] == FAMILY[entry["class"]] and arch["checkpoint"] == entry["checkpoint"]
    official = {k: v for k, v in entry["constructor_kwargs"].items() if k != "use_fp16"}
    assert {k: v for k, v in arch["kwargs"].items() if k != "use_fp16"} == official
    module = adm.from_config(adm_config(name)["kwargs"], arch["family"])
    shapes = adm.torch_state_dict_shapes(module)
    expected = {k: tuple(v) for k, v in entry["state_dict_shapes"].items()}
    assert shapes == expected
    assert sum(int(np.prod(s)) for s in shapes.values()) == entry["n_params"] == arch["n_params"]


def test_architecture_schedules():
    assert ARCHITECTURES["imagenet64"]["schedule"]["beta_schedule"] == "cosine"
    assert ARCHITECTURES["imagenet64"]["schedule"]["num_diffusion_timesteps"] == 4000
    assert ARCHITECTURES["imagenet64"]["schedule"]["time_input_scale"] == 0.25
    for name in ("imagenet128", "imagenet256", "imagenet512", "lsun_bedroom", "imagenet256_classifier"):
        schedule = ARCHITECTURES[name]["schedule"]
        assert (schedule["beta_schedule"], schedule["beta_start"], schedule["beta_end"]) == ("linear", 1e-4, 0.02)
        assert schedule["num_diffusion_timesteps"] == 1000 and schedule["time_input_scale"] == 1.0
    assert ARCHITECTURES["imagenet256"]["num_classes"] == 1000 and ARCHITECTURES["lsun_bedroom"]["num_classes"] is None
    assert ARCHITECTURES["imagenet128_classifier"]["num_classes"] == 1000
    assert all(ARCHITECTURES[n]["learn_sigma"] for n in ("imagenet64", "imagenet128", "imagenet512", "lsun_bedroom"))


def test_config_round_trip_and_json_path(tmp_path):
    kwargs = CASES["iddpm_unet"]["constructor_kwargs"]
    module = adm.from_config(kwargs, "improved_ddpm")
    config = module.to_config()  # all keyword arguments, defaults included (num_classes=None)
    assert isinstance(module, adm.IDDPMUNetModel) and config == {**kwargs, "num_classes": None}
    assert adm.from_config(config, "improved_ddpm") == module
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_config("gd_unet_cond")))
    resolved = adm_config(str(path))
    assert resolved["family"] == "guided_diffusion" and resolved["num_classes"] == 10
    assert adm.from_config(resolved["kwargs"], resolved["family"]).to_config() == CASES["gd_unet_cond"]["constructor_kwargs"]


def test_docstring_example():
    result = doctest.testmod(adm, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
