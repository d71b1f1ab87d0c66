"""ADM / improved-DDPM end to end: convert -> load_pretrained -> sample, classifier guidance, the CLI.

Fixtures: tests/data/adm (random-weight guided-diffusion / improved-DDPM networks and a noisy
classifier with the PyTorch outputs and the unscaled guidance gradient, see its README).  Compiling
dominates: the unguided and the guided sampler compile once each (scale and labels are arguments),
and the CLI run finds the guided one in the persistent compilation cache of tests/conftest.py.
"""

import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scire_jax as sj
from scire_jax.apps import cli
from scire_jax.apps.convert_cli import convert_main
from scire_jax.io import adm_loading
from scire_jax.io.convert.scheduler import betas_from_scheduler_config

DATA = Path(__file__).parent / "data" / "adm"
CASES = {case["id"]: case for case in json.loads((DATA / "cases.json").read_text())["cases"]}
FAMILY = {"guided_diffusion.unet.UNetModel": "guided_diffusion",
          "guided_diffusion.unet.EncoderUNetModel": "guided_diffusion_classifier",
          "improved_ddpm.unet.UNetModel": "improved_ddpm"}
STEPS, LABELS = 3, np.array([1, 7], np.int32)  # the CLI test below samples the same shapes (2 samples, 3 NFE)
_SAMPLES = {}
# XLA's cheap CPU optimisation for the one-off compilations (the samplers keep the CLI's defaults)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False}


def _run(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def _config(case_id, **extra):
    case = CASES[case_id]
    return dict(case["constructor_kwargs"], family=FAMILY[case["class"]], **extra)


def _nhwc(x):
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The conditional UNet (config from a JSON file) and the classifier (.pt, dict config) converted."""
    root = tmp_path_factory.mktemp("adm")
    (root / "unet.json").write_text(json.dumps(_config("gd_unet_cond")))
    summary = convert_main(DATA / "gd_unet_cond.safetensors", root / "unet", adm_config=root / "unet.json")
    assert summary["family"] == "guided_diffusion" and summary["num_train_timesteps"] == 1000
    convert_main(DATA / "gd_classifier.pt", root / "classifier", adm_config=_config("gd_classifier"))
    return root / "unet", root / "classifier"


def _sample(model, classifier, labels, scale=None):
    """SciRE (the CLI's default solver) with STEPS NFE; one compilation per (model, classifier) pair."""
    key = ("guided" if classifier is not None else "plain", id(model))
    if key not in _SAMPLES:
        noise_fn = adm_loading.class_conditional_noise_fn(model, classifier)
        sample_fn = sj.make_sampler(sj.solver_from_spec("scire", STEPS), model.schedule, noise_fn)
        params = adm_loading.sampling_params(model, labels, classifier, scale)
        shape = (len(labels),) + model.sample_shape
        _SAMPLES[key] = jax.jit(sample_fn, static_argnums=2).lower(params, jax.random.key(0), shape, 0).compile()
    params = adm_loading.sampling_params(model, labels, classifier, scale)
    return np.asarray(_SAMPLES[key](params, jax.random.key(0), 0))


def test_converted_checkpoint_records_family_kwargs_and_schedule(converted):
    unet, classifier = converted
    config = json.loads((unet / "config.json").read_text())
    assert config["family"] == "guided_diffusion" and config["kwargs"]["model_channels"] == 32
    assert config["num_classes"] == 10 and config["image_size"] == 32 and config["eps_channels"] == 3
    assert config["schedule"]["beta_schedule"] == "linear" and config["schedule"]["num_diffusion_timesteps"] == 1000
    assert json.loads((classifier / "config.json").read_text())["family"] == "guided_diffusion_classifier"


def test_load_pretrained_gives_the_record_and_samples(converted):
    model = sj.load_pretrained(converted[0])
    assert (model.family, model.prediction, model.sample_shape) == ("guided_diffusion", "noise", (32, 32, 3))
    assert (model.conditioning, model.num_classes, model.time_input) == ("class", 10, "discrete")
    trained = sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))
    assert model.schedule == trained
    x = _sample(model, None, LABELS)
    assert x.shape == (2, 32, 32, 3) and np.all(np.isfinite(x))
    with pytest.raises(ValueError, match="class labels"):  # a class-conditional model needs its labels
        jax.eval_shape(model.noise_fn(), model.params, jnp.zeros((2, 32, 32, 3)), jnp.full((2,), 0.5))


def test_guided_sample_with_scale_zero_is_bitwise_the_unguided_one(converted):
    model = sj.load_pretrained(converted[0])
    classifier = adm_loading.load_classifier(converted[1])
    unguided = _sample(model, None, LABELS)
    guided = _sample(model, classifier, LABELS, scale=0.0)
    assert np.array_equal(guided, unguided)  # bitwise, though the classifier was evaluated
    assert not np.allclose(_sample(model, classifier, LABELS, scale=4.0), unguided)  # same executable


def test_guidance_follows_the_official_convention_of_the_fixture_gradient():
    """eps_guided - eps = -scale * sigma_t * d/dx sum_i log_softmax(classifier(x, t))[i, y_i]."""
    classifier = adm_loading.load_classifier(DATA / "gd_classifier.pt", config=_config("gd_classifier"))
    assert classifier.num_classes == 10 and classifier.sample_shape == (32, 32, 3)
    arrays = np.load(DATA / "gd_classifier.npz")
    x, t, y = _nhwc(arrays["x"]), jnp.asarray(arrays["t"]), jnp.asarray(arrays["y"])
    scale, sigma = 2.5, jnp.asarray([0.3, 0.6, 0.9], jnp.float32)
    guidance = adm_loading.classifier_guidance(classifier, scale, y)
    # zero network, network time = t (the classifier sees the model's t_input)
    noise_fn = sj.wrap_model(lambda p, x_, t_: jnp.zeros_like(x_), sj.schedules.linear(), time_input="continuous",
                             guidance=guidance)
    eps = _run(noise_fn.noise, None, x, t, 1.0, sigma)
    expected = -scale * np.asarray(sigma)[:, None, None, None] * np.transpose(arrays["grad_f32"], (0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(eps), expected, atol=scale * 0.9 * 3e-6, rtol=0)


def test_cli_samples_with_a_class_label_and_a_classifier(converted, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = cli.main(["sample", "--checkpoint", str(converted[0]), "--classifier", str(converted[1]),
                     "--class-label", "7", "--classifier-scale", "4.0", "--num", "2", "--steps", str(STEPS),
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "class 7, classifier guidance scale 4" in capsys.readouterr().err
    width, height = struct.unpack(">II", out.read_bytes()[16:24])
    assert width > 32 and height >= 32
    # a label outside the classes is a one-line error before anything is compiled
    code = cli.main(["sample", "--checkpoint", str(converted[0]), "--class-label", "10", "--num", "2",
                     "--out", str(tmp_path / "bad.png")])
    assert code == 2 and "0 .. 9" in capsys.readouterr().err and not (tmp_path / "bad.png").exists()


def test_random_labels_per_sample_depend_on_the_seed_and_index_only():
    key = jax.random.key(3)
    labels = adm_loading.class_labels(key, 64, 10)
    assert labels.shape == (64,) and labels.min() >= 0 and labels.max() <= 9 and len(set(labels.tolist())) > 3
    np.testing.assert_array_equal(adm_loading.class_labels(key, 5, 10), labels[:5])
    assert not np.array_equal(adm_loading.class_labels(jax.random.key(4), 64, 10), labels)
    np.testing.assert_array_equal(adm_loading.class_labels(key, 3, 10, label=7), [7, 7, 7])


def test_raw_improved_ddpm_file_loads_with_its_cosine_4000_schedule():
    config = _config("iddpm_unet", image_size=16)
    model = sj.load_pretrained(DATA / "iddpm_unet.safetensors", config=config)
    assert (model.family, model.conditioning, model.sample_shape) == ("improved_ddpm", "none", (16, 16, 3))
    betas = betas_from_scheduler_config({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 4000})
    assert model.schedule == sj.schedules.discrete(betas=betas) and model.schedule.total_n == 4000
    # network time of step n (t = (n + 1) / 4000) is n * 1000 / 4000 (rescale_timesteps)
    steps = np.array([0.0, 1.0, 417.0, 3999.0])
    np.testing.assert_allclose(model.schedule.time_input((steps + 1) / 4000, model.time_input), steps * 0.25,
                               atol=1e-9)
    np.testing.assert_allclose(model.schedule.alpha(np.array([1, 4000]) / 4000) ** 2,
                               np.cumprod(1 - betas)[[0, -1]], rtol=1e-9)
    arrays = np.load(DATA / "iddpm_unet.npz")
    eps = _run(model.apply_fn, model.params, _nhwc(arrays["x"]), jnp.asarray(arrays["t"]))
    np.testing.assert_allclose(np.asarray(eps), np.transpose(arrays["out_f32"][:, :3], (0, 2, 3, 1)), atol=2e-5, rtol=0)
    official = sj.load_pretrained(DATA / "iddpm_unet.safetensors", config=config, schedule="official_vp")
    assert official.schedule == sj.schedules.linear(0.1, 20.0) and official.time_input == "discrete"


def test_config_may_give_the_training_schedule():
    """guided-diffusion's 64x64 model was trained with the cosine schedule over 1000 steps."""
    model = sj.load_pretrained(DATA / "gd_unet_uncond_noss.safetensors",
                               config=_config("gd_unet_uncond_noss", schedule="cosine"))
    betas = betas_from_scheduler_config({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000})
    assert model.schedule == sj.schedules.discrete(betas=betas) and model.conditioning == "none"
    with pytest.raises(ValueError, match="schedule="):
        sj.load_pretrained(DATA / "gd_unet_uncond_noss.safetensors",
                           config=_config("gd_unet_uncond_noss", schedule="quadratic"))


def test_loading_errors_are_clear(converted):
    with pytest.raises(ValueError, match="pass config="):  # a weights file needs its architecture
        sj.load_pretrained(DATA / "gd_unet_cond.safetensors")
    with pytest.raises(ValueError, match="load_classifier"):
        sj.load_pretrained(converted[1])
    with pytest.raises(ValueError, match="not a noisy classifier"):
        adm_loading.load_classifier(converted[0])
    with pytest.raises(ValueError, match="schedule='vp' is not allowed"):
        sj.load_pretrained(converted[0], schedule="vp")
    with pytest.raises(ValueError, match="image_size"):  # improved-DDPM kwargs have no image size
        sj.load_pretrained(DATA / "iddpm_unet.safetensors", config=_config("iddpm_unet"))


def _state_dict():
    import safetensors.numpy

    return dict(safetensors.numpy.load_file(str(DATA / "gd_classifier.safetensors")))


def _broken(kind, tmp_path):
    """(source file, config, expected message) of a conversion that must fail."""
    import safetensors.numpy

    config = _config("gd_classifier")
    if kind == "truncated_pt":
        data = (DATA / "gd_classifier.pt").read_bytes()
        (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
        return tmp_path / "cut.pt", config, "cut.pt"
    if kind == "truncated_safetensors":
        data = (DATA / "gd_classifier.safetensors").read_bytes()
        (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
        return tmp_path / "cut.safetensors", config, "cut.safetensors"
    if kind == "wrong_architecture_name":
        return DATA / "gd_classifier.pt", "imagenet999", "unknown ADM architecture 'imagenet999'"
    state = _state_dict()
    if kind == "renamed_key":
        state["out.2.c_proj.weights"] = state.pop("out.2.c_proj.weight")
        expected = "missing key: out.2.c_proj.weight; unexpected key: out.2.c_proj.weights"
    else:  # wrong shape
        state["out.2.c_proj.bias"] = np.zeros((11,), np.float32)
        expected = "shape mismatch: out.2.c_proj.bias: checkpoint (11,) vs expected (10,)"
    safetensors.numpy.save_file(state, str(tmp_path / f"{kind}.safetensors"))
    return tmp_path / f"{kind}.safetensors", config, expected


@pytest.mark.parametrize("kind", ["truncated_pt", "truncated_safetensors", "wrong_architecture_name", "renamed_key",
                                  "wrong_shape"])
def test_failed_conversion_is_one_line_and_leaves_no_directory(kind, tmp_path, capsys):
    src, config, expected = _broken(kind, tmp_path)
    dst = tmp_path / "new" / "converted"
    with pytest.raises(ValueError) as raised:
        convert_main(src, dst, adm_config=config)
    message = str(raised.value)
    assert "\n" not in message and expected in message, message
    assert not dst.exists() and not dst.parent.exists()
    if isinstance(config, str):  # the command line: one line on stderr, exit status 2
        code = cli.main(["convert", str(src), str(dst), "--config", config])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and expected in err, err
        assert not dst.exists() and not dst.parent.exists()
