"""Stable Diffusion pipelines (:mod:`scire_jax.apps.pipelines`, ``scire-jax txt2img``) on tiny random components.

End to end against diffusers' PyTorch ``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline``
(float32): the same tiny random UNet / VAE / CLIP text encoder (a diffusers folder written here and
loaded by :func:`scire_jax.io.convert.sd.load_sd_pipeline`), the same tokenizer files, the same
scheduler timesteps (``times=`` from :func:`scire_jax.core.diffusers_grid.from_diffusers_timesteps`),
the same initial latents / noise.  diffusers encodes the prompts itself (transformers' tokenizer and
text encoder), so the comparison covers the whole chain: tokens, text embeddings, one guided UNet call
per step, the solver, the VAE decoder and the ``[0, 1]`` post-processing.
"""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import scire_jax as sj  # noqa: E402
from scire_jax.apps import pipelines  # noqa: E402
from scire_jax.apps.pipelines import encode_images, image_to_image, text_to_image  # noqa: E402
from scire_jax.apps.txt2img_cli import add_txt2img_parser, run_txt2img  # noqa: E402
from scire_jax.core.diffusers_grid import from_diffusers_timesteps  # noqa: E402
from scire_jax.io.convert.sd import load_sd_pipeline  # noqa: E402
from scire_jax.models.clip_text import CLIPTextModel  # noqa: E402

UNET = {"sample_size": 8, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
        "attention_head_dim": 2, "norm_num_groups": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
VAE = {"block_out_channels": [32, 64], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
       "sample_size": 16, "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
       "scaling_factor": 0.5}
MAX_LEN = 16
CLIP = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": MAX_LEN, "hidden_act": "quick_gelu"}
# Stable Diffusion 1.5's scheduler_config.json
SCHEDULER = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
             "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False, "trained_betas": None}
MODEL_INDEX = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
               "safety_checker": [None, None], "feature_extractor": [None, None]}
PROMPTS = ["a photo of a cat", "of cat photo"]
NEGATIVE = ["", "a photo"]
SIZE = 16  # pixels (VAE factor 2: 8x8 latents)
STEPS = 10
GUIDANCE = 7.5
# float32 on both sides.  Measured max abs errors on [0, 1] pixels: 7.0e-6 (DDIM), 6.4e-6 (DPM-Solver++ 2M),
# 7.0e-6 (img2img DDIM): the UNet / VAE / CLIP ports agree with PyTorch to ~1e-6 relative per call, guidance
# 7.5 multiplies the cond - uncond difference by 7.5, ten steps and the decoder accumulate it.  7x headroom
# for other CPUs / BLAS.  Sensitivity (measured): network timesteps k + 1 move pixels by 0.09, guidance 7.4
# instead of 7.5 by 0.012.
TOLERANCE = 5e-5


def _perturb(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # default inits leave norms at 1 / 0 and zero output layers: make every parameter count
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sd") / "pipe"
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    vocab = pipelines.write_clip_tokenizer(root / "tokenizer", MAX_LEN)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _perturb(diffusers.UNet2DConditionModel(**UNET), 0).save_pretrained(root / "unet")
        torch.manual_seed(1)
        _perturb(diffusers.AutoencoderKL(**VAE), 1).save_pretrained(root / "vae")
        config = transformers.CLIPTextConfig(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                             pad_token_id=vocab - 1, **CLIP)
        torch.manual_seed(2)
        _perturb(transformers.CLIPTextModel(config), 2).save_pretrained(root / "text_encoder")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    return root


@pytest.fixture(scope="module")
def pipe(folder):
    return load_sd_pipeline(folder)


@pytest.fixture(scope="module")
def torch_parts(folder):
    return dict(unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
                vae=diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval(),
                text_encoder=transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
                tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"))


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x, np.float32), (0, 3, 1, 2))))


def _latents(seed=0, batch=len(PROMPTS)):
    return np.asarray(sj.initial_noise(jax.random.key(seed), (batch, SIZE // 2, SIZE // 2, 4)))


def _compare(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape == (len(PROMPTS), SIZE, SIZE, 3)
    interior = np.mean((theirs > 0.01) & (theirs < 0.99))
    assert interior > 0.5, f"only {interior:.0%} of the pixels are unclipped: the comparison would be vacuous"
    error = float(np.max(np.abs(ours - theirs)))
    print(f"max abs error {error:.3g}, max rel error {float(np.max(np.abs(ours - theirs) / np.abs(theirs).clip(1e-3))):.3g}")
    assert error <= TOLERANCE, error
    return error


def _scheduler(kind):
    if kind == "ddim":
        return diffusers.DDIMScheduler.from_config(SCHEDULER)  # leading, steps_offset 1, set_alpha_to_one False
    return diffusers.DPMSolverMultistepScheduler.from_config(SCHEDULER, algorithm_type="dpmsolver++", solver_order=2)


def _solver(kind, timesteps):
    if kind == "ddim":  # DDIM steps k -> k - 100; the last one lands on alphas_cumprod[0] (set_alpha_to_one=False)
        return sj.DDIM(**from_diffusers_timesteps(timesteps, 1000, "sigma_min", step_ratio=1000 // STEPS)._asdict())
    # DPM-Solver++ 2M, final_sigmas_type="zero": the last step is the data prediction (denoise_to_zero)
    grid = from_diffusers_timesteps(timesteps, 1000, "zero")
    return sj.DPMSolver(algorithm="dpmsolver++", order=2, lower_order_final=False, **grid._asdict())


# -- parity with diffusers ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ddim", "dpm"])
def test_text_to_image_matches_diffusers(kind, pipe, torch_parts):
    scheduler = _scheduler(kind)
    reference = diffusers.StableDiffusionPipeline(**torch_parts, scheduler=scheduler, safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    latents = _latents()
    with torch.no_grad():
        theirs = reference(PROMPTS, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                           guidance_scale=GUIDANCE, latents=_nchw(latents), output_type="np").images
    scheduler.set_timesteps(STEPS)
    solver = _solver(kind, scheduler.timesteps.numpy())
    assert sj.plan(solver, pipe.schedule).nfe == STEPS
    ours = text_to_image(pipe, pipe.params, PROMPTS, NEGATIVE, solver=solver, guidance_scale=GUIDANCE,
                         latents=latents)
    assert ours.dtype == jnp.float32
    _compare(ours, theirs)
    if kind == "ddim":  # compiled once per (solver, shape, guidance > 1): new scale, prompts, seed reuse it
        traces = pipelines._TRACE_COUNT[0]
        again = text_to_image(pipe, pipe.params, ["other", "prompts"], solver=solver, guidance_scale=3.0, key=5)
        assert pipelines._TRACE_COUNT[0] == traces and again.shape == ours.shape
        assert not np.allclose(np.asarray(again), np.asarray(ours))


def test_image_to_image_matches_diffusers(pipe, torch_parts):
    """diffusers keeps int(steps * strength) of its timesteps: the same grid through times= and strength=None.

    Run through the sharded code path (a mesh of this process's devices; the notebook runs it on two) with a
    progress callback.
    """
    strength = 0.6
    scheduler = _scheduler("ddim")
    reference = diffusers.StableDiffusionImg2ImgPipeline(**torch_parts, scheduler=scheduler, safety_checker=None,
                                                         feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    images = np.random.default_rng(3).uniform(0.0, 1.0, (len(PROMPTS), SIZE, SIZE, 3)).astype(np.float32)
    latents = np.asarray(encode_images(pipe, pipe.params, images))
    with torch.no_grad():  # diffusers' VAE mean, for the record (sd_vae parity is tested in test_sd_models)
        mean = torch_parts["vae"].encode(_nchw(images * 2 - 1)).latent_dist.mean.numpy() * pipe.scaling_factor
    np.testing.assert_allclose(np.transpose(latents, (0, 3, 1, 2)), mean, atol=1e-5)
    noise_shape = (len(PROMPTS), 4, SIZE // 2, SIZE // 2)
    noise = torch.randn(noise_shape, generator=torch.Generator().manual_seed(0))  # = diffusers' randn_tensor
    with torch.no_grad():  # a 4-channel "image" is taken as ready-made latents
        theirs = reference(PROMPTS, image=_nchw(latents), strength=strength, negative_prompt=NEGATIVE,
                           num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                           generator=torch.Generator().manual_seed(0), output_type="np").images
    scheduler.set_timesteps(STEPS)
    kept = scheduler.timesteps.numpy()[STEPS - int(STEPS * strength):]
    solver = _solver("ddim", kept)
    mesh = sj.batch_mesh()
    steps = []
    ours = image_to_image(pipe, pipelines.place_params(pipe.params, mesh), PROMPTS, images, None, NEGATIVE,
                          solver=solver, guidance_scale=GUIDANCE, noise=np.transpose(noise.numpy(), (0, 2, 3, 1)),
                          mesh=mesh, callback=lambda step, t: steps.append(int(step)))
    assert steps == list(range(sj.plan(solver, pipe.schedule).num_steps))
    _compare(ours, theirs)


def test_image_to_image_strength_one_is_text_to_image(pipe):
    """strength = 1 starts at t_max from alpha(t_max) z0 + sigma(t_max) eps: text_to_image from those latents.

    The solver is the DPM-Solver++ 2M of the parity test (its grid starts at timestep 999, t = t_max = 1), so
    the text_to_image program is the one compiled there.
    """
    scheduler = _scheduler("dpm")
    scheduler.set_timesteps(STEPS)
    solver = _solver("dpm", scheduler.timesteps.numpy())
    assert solver.times[0] == pipe.schedule.t_max
    assert sj.plan(pipelines.image_to_image_solver(pipe, sj.SciRE(steps=6), 1.0), pipe.schedule).times.tolist() == \
        sj.plan(sj.SciRE(steps=6), pipe.schedule).times.tolist()  # the same grid as text_to_image's
    images = np.random.default_rng(4).uniform(0.0, 1.0, (SIZE, SIZE, 3)).astype(np.float32)  # one for all
    eps = _latents(7)
    ours = image_to_image(pipe, pipe.params, PROMPTS, images, 1.0, NEGATIVE, solver=solver, guidance_scale=GUIDANCE,
                          noise=eps)
    z0 = np.asarray(encode_images(pipe, pipe.params, images))
    t_max = np.float64(pipe.schedule.t_max)
    alpha = float(pipe.schedule.alpha(t_max))
    start = alpha * z0 + float(pipe.schedule.sigma(t_max)) * eps
    direct = text_to_image(pipe, pipe.params, PROMPTS, NEGATIVE, solver=solver, guidance_scale=GUIDANCE,
                           latents=start)
    assert ours.shape == (len(PROMPTS), SIZE, SIZE, 3)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(direct), atol=1e-5)
    assert 0.06 < alpha < 0.07  # sqrt(alphas_cumprod[999]) of SD: the image still counts a little (as diffusers)


def test_every_registered_solver_plans_for_both_pipelines(pipe):
    """text_to_image / image_to_image take any registered solver: the plans they run (no compilation here)."""
    for name in sj.solver_names():
        solver = sj.solver_from_spec(name, 10)
        assert sj.plan(solver, pipe.schedule).t_start == pipe.schedule.t_max
        partial = sj.plan(pipelines.image_to_image_solver(pipe, solver, 0.5), pipe.schedule)
        assert partial.t_start == 0.5 and partial.t_end == pipe.schedule.t_min and partial.nfe >= 1, name


# -- errors before any compilation ------------------------------------------------------------------------


def test_bad_inputs_fail_before_compilation(pipe, folder, tmp_path):
    traces = pipelines._TRACE_COUNT[0]
    p = pipe.params
    cases = [
        (dict(height=12), r"height=12 is not allowed: it must be divisible by 8"),
        (dict(width=20), r"width=20 is not allowed: it must be divisible by 8"),
        (dict(prompts=[]), r"prompts=\[\] is not allowed"),
        (dict(guidance_scale=-1.0), r"guidance_scale=-1.0 is not allowed"),
        (dict(negative_prompts=["a", "b", "c"]), r"negative_prompts has 3 entries but prompts has 2"),
        (dict(latents=np.zeros((2, 8, 8, 3), np.float32)), r"latents has shape \(2, 8, 8, 3\), expected \(2, 8, 8, 4\)"),
        (dict(solver="scire"), r"solver='scire' is not allowed"),
    ]
    for kwargs, match in cases:
        args = dict(prompts=PROMPTS, **{k: v for k, v in kwargs.items() if k != "prompts"})
        if "prompts" in kwargs:
            args["prompts"] = kwargs["prompts"]
        with pytest.raises(ValueError, match=match):
            text_to_image(pipe, p, **args)
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    for strength in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=rf"strength={strength} is not allowed: it must be in \(0, 1\]"):
            image_to_image(pipe, p, PROMPTS, image, strength)
    with pytest.raises(ValueError, match="strength=None is only allowed with a solver with explicit times="):
        image_to_image(pipe, p, PROMPTS, image, None)
    with pytest.raises(ValueError, match=r"height of init_images=12 is not allowed"):
        image_to_image(pipe, p, PROMPTS, np.zeros((12, SIZE, 3)), 0.5)
    with pytest.raises(ValueError, match="init_images has 3 images but prompts has 2"):
        image_to_image(pipe, p, PROMPTS, np.zeros((3, SIZE, SIZE, 3)), 0.5)
    # a text encoder of the wrong width: refused by the loader (test_sd_models) and by the pipeline entry
    wide = dataclasses.replace(pipe, text_encoder=CLIPTextModel.from_config({**CLIP, "hidden_size": 48}))
    with pytest.raises(ValueError, match=r"hidden_size=48 does not match the unet's cross_attention_dim=32"):
        text_to_image(wide, p, PROMPTS)
    broken = shutil.copytree(folder, tmp_path / "broken")
    config = json.loads((broken / "text_encoder" / "config.json").read_text())
    (broken / "text_encoder" / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(ValueError, match=r"hidden_size=48 does not match"):
        load_sd_pipeline(broken)
    assert pipelines._TRACE_COUNT[0] == traces  # nothing was traced, let alone compiled


# -- the command line ---------------------------------------------------------------------------------------


def _cli(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="scire-jax")
    add_txt2img_parser(parser.add_subparsers(dest="command"))
    return run_txt2img(parser.parse_args(["txt2img", *argv]))


def test_cli_writes_grid_and_images(folder, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "cats.png"
    rc = _cli(["--model", str(folder), "--prompt", "a photo of a cat", "--steps", "4", "--solver", "dpm:order=2",
               "--guidance", "1", "--num", "3", "--batch-size", "2", "--dtype", "bfloat16", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    for name in ("cats.png", "cats-0.png", "cats-1.png", "cats-2.png"):
        assert (tmp_path / name).is_file(), name
    assert Image.open(tmp_path / "cats-1.png").size == (SIZE, SIZE)
    assert "wrote" in capsys.readouterr().out


def test_cli_reads_and_resizes_the_init_image(tmp_path):
    from PIL import Image

    from scire_jax.apps.txt2img_cli import _read_image

    path = tmp_path / "photo.png"
    Image.fromarray(np.full((21, 35, 3), 255, np.uint8)).save(path)
    image = _read_image(str(path), None, None, 8)  # floored to multiples of 8
    assert image.shape == (16, 32, 3) and image.dtype == np.float32 and np.allclose(image, 1.0)
    assert _read_image(str(path), 24, 16, 8).shape == (24, 16, 3)


@pytest.mark.parametrize("argv,message", [
    (["--height", "30"], "--height=30 is not allowed: it must be a positive multiple of 8"),
    (["--guidance", "-2"], "--guidance=-2.0 is not allowed"),
    (["--strength", "0.5"], "--strength is only allowed with --init-image"),
    (["--out", "x.jpg"], "--out='x.jpg' is not allowed: it must end in .png"),
    (["--solver", "bogus"], "solver 'bogus' is not allowed"),
    (["--init-image", "nowhere.png"], "--init-image='nowhere.png' does not exist"),
    (["--model", "MISSING_VAE"], "missing the 'vae/' folder"),
])
def test_cli_errors_are_one_line(argv, message, folder, tmp_path, capsys):
    traces = pipelines._TRACE_COUNT[0]
    model = str(folder)
    if "MISSING_VAE" in argv:
        broken = shutil.copytree(folder, tmp_path / "novae")
        shutil.rmtree(broken / "vae")
        argv = ["--model", str(broken)]
    rc = _cli(["--model", model, "--prompt", "x", "--out", str(tmp_path / "o.png"), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("scire-jax txt2img: error: ") and message in err, err
    assert pipelines._TRACE_COUNT[0] == traces
    assert not list(tmp_path.glob("o*.png"))
