"""Stable Diffusion components against diffusers / transformers PyTorch on tiny random configs.

Flax ``UNet2DConditionModel`` (SD 1.x conv projections, SD 2.x linear projections with per-block heads,
SDXL text_time embedding), ``AutoencoderKL`` (encode / decode) and ``CLIPTextModel`` (quick_gelu / gelu,
all hidden states, clip-skip) loaded through :mod:`scire_jax.io.convert.sd` from pipeline folders
(safetensors, sharded safetensors, .bin, fp16 variant) and from original single-file checkpoints
(SD 1.x HF-CLIP layout as .safetensors, SD 2.x OpenCLIP layout as .ckpt) written with this file's own
diffusers -> LDM key map; the CLIP tokenizer against transformers'; clear errors for broken inputs.
"""

import json
import re
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from scire_jax.io.convert.sd import CLIPTokenizer, convert_ldm_checkpoint, load_sd_pipeline  # noqa: E402
from scire_jax.models.clip_text import CLIPTextModel  # noqa: E402
from scire_jax.models.sd_unet import UNet2DConditionModel  # noqa: E402
from scire_jax.models.sd_vae import AutoencoderKL  # noqa: E402

UNET_SD1 = {"sample_size": 8, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
            "attention_head_dim": 2, "norm_num_groups": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
UNET_SD2 = {"sample_size": 8, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
            "attention_head_dim": [2, 4], "use_linear_projection": True, "upcast_attention": True,
            "transformer_layers_per_block": [1, 2], "norm_num_groups": 8,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
UNET_XL = {**UNET_SD2, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
           "projection_class_embeddings_input_dim": 32 + 6 * 8}
VAE = {"block_out_channels": [32, 64], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
       "sample_size": 16, "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
       "scaling_factor": 0.5}
MAX_LEN = 16
CLIP_SD1 = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": MAX_LEN, "hidden_act": "quick_gelu"}
CLIP_SD2 = {**CLIP_SD1, "num_hidden_layers": 3, "hidden_act": "gelu", "eos_token_id": 2}
SCHED_SD1 = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon"}
SCHED_SD2 = {**SCHED_SD1, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}
MODEL_INDEX = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
               "safety_checker": [None, None], "feature_extractor": [None, None]}
PROMPTS = ["a photo of a cat", "A  PHOTO!! of\ta cat, 1234", "", "cat " * 20, "<|endoftext|> naïve café"]


# -- tiny CLIP tokenizer (GPT-2 byte alphabet + a few merges) -------------------------------------


def _byte_alphabet():
    """GPT-2 / CLIP byte -> unicode alphabet (printable bytes map to themselves, the rest to 256+)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


MERGES = [("c", "a"), ("ca", "t</w>"), ("p", "h"), ("ph", "o"), ("t", "o</w>"), ("pho", "to</w>"), ("o", "f</w>")]


def _write_tokenizer(folder, pad_token):
    folder.mkdir(parents=True)
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": MAX_LEN, "tokenizer_class": "CLIPTokenizer"}))
    return len(tokens)


VOCAB = len(_byte_alphabet()) * 2 + len(MERGES) + 2
BOS, EOS = VOCAB - 2, VOCAB - 1


# -- PyTorch reference models ---------------------------------------------------------------------


def _perturb(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # default inits leave norms at 1 / 0: make every parameter distinct
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def _clip(config, seed):
    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(vocab_size=VOCAB, bos_token_id=BOS, pad_token_id=EOS,
                                      **{"eos_token_id": EOS, **config})
    return _perturb(transformers.CLIPTextModel(cfg), seed)


@pytest.fixture(scope="module")
def torch_models():
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        models = {}
        for seed, (name, build) in enumerate([
                ("unet_sd1", lambda: diffusers.UNet2DConditionModel(**UNET_SD1)),
                ("unet_sd2", lambda: diffusers.UNet2DConditionModel(**UNET_SD2)),
                ("vae", lambda: diffusers.AutoencoderKL(**VAE))]):
            torch.manual_seed(seed)
            models[name] = _perturb(build(), seed)
        models["clip_sd1"] = _clip(CLIP_SD1, 3)
        clip_sd2 = _clip(CLIP_SD2, 4)
        with torch.no_grad():  # saved as an fp16 variant below: make the reference exactly representable
            for param in clip_sd2.parameters():
                param.copy_(param.half().float())
        models["clip_sd2"] = clip_sd2
    return models


def _write_pipeline(folder, unet, vae, clip, scheduler, pad_token, unet_kw=None, vae_kw=None, clip_kw=None):
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    unet.save_pretrained(folder / "unet", **(unet_kw or {}))
    vae.save_pretrained(folder / "vae", **(vae_kw or {}))
    clip.save_pretrained(folder / "text_encoder", **(clip_kw or {}))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    _write_tokenizer(folder / "tokenizer", pad_token)
    return folder


@pytest.fixture(scope="module")
def sd1(torch_models, tmp_path_factory):
    """SD 1.x-style folder: single safetensors files everywhere."""
    m = torch_models
    folder = _write_pipeline(tmp_path_factory.mktemp("sd1") / "pipe", m["unet_sd1"], m["vae"], m["clip_sd1"],
                             SCHED_SD1, "<|endoftext|>")
    return folder, load_sd_pipeline(folder)


@pytest.fixture(scope="module")
def sd2(torch_models, tmp_path_factory):
    """SD 2.x-style folder: sharded safetensors UNet, .bin VAE, fp16-variant text encoder, pad token "!"."""
    m = torch_models
    clip16 = _clip(CLIP_SD2, 4).half()
    clip16.load_state_dict({k: v.half() for k, v in m["clip_sd2"].state_dict().items()})
    folder = _write_pipeline(tmp_path_factory.mktemp("sd2") / "pipe", m["unet_sd2"], m["vae"], clip16, SCHED_SD2, "!",
                             unet_kw={"max_shard_size": "60KB"}, vae_kw={"safe_serialization": False},
                             clip_kw={"variant": "fp16"})
    return folder, load_sd_pipeline(folder)


def _run(fn, *args):
    """``jax.jit(fn)(*args)`` compiled with XLA's cheapest CPU pipeline: these tiny models are compile-bound."""
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(compiler_options=options if jax.default_backend() == "cpu" else None)(*args)


def _close(actual, expected, rtol=1e-4):
    """Flax vs PyTorch: elementwise within ``rtol`` of the reference scale (max |expected|)."""
    expected = np.asarray(expected, np.float64)
    chex.assert_trees_all_close(np.asarray(actual, np.float64), expected, rtol=rtol,
                                atol=rtol * float(np.abs(expected).max()))


def _nhwc(x):
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _unet_inputs(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 4, 8, 8)).astype(np.float32), np.array([3, 801])[:batch],
            rng.standard_normal((batch, 5, 32)).astype(np.float32))


# -- parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["sd1", "sd2"])
def test_unet_matches_diffusers(which, torch_models, request):
    _, pipe = request.getfixturevalue(which)
    x, t, ctx = _unet_inputs()
    with torch.no_grad():
        ref = torch_models[f"unet_{which}"](torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    args = (pipe.params["unet"], _nhwc(x), jnp.asarray(t), jnp.asarray(ctx))
    out = _run(pipe.unet.apply, *args)
    assert out.dtype == jnp.float32
    _close(_nchw(out), ref.numpy())
    if which == "sd1":  # bfloat16 computation with the float32 parameters
        out16 = _run(pipe.unet.clone(dtype=jnp.bfloat16).apply, *args)
        assert out16.dtype == jnp.bfloat16
        _close(_nchw(out16.astype(jnp.float32)), ref.numpy(), rtol=5e-2)


def test_unet_text_time_matches_diffusers():
    """SDXL's added text-time embedding (module-level check; the loader refuses SDXL pipelines)."""
    torch.manual_seed(5)
    model = _perturb(diffusers.UNet2DConditionModel(**UNET_XL), 5)
    flax_unet = UNet2DConditionModel.from_config(dict(model.config))
    params = {"params": _fill_unet(flax_unet, model)}
    x, t, ctx = _unet_inputs(1)
    text = np.random.default_rng(2).standard_normal((2, 32)).astype(np.float32)
    ids = np.array([[64, 64, 0, 0, 64, 64], [48, 64, 8, 4, 64, 64]], np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                    added_cond_kwargs={"text_embeds": torch.from_numpy(text), "time_ids": torch.from_numpy(ids)}).sample
    out = _run(flax_unet.apply, params, _nhwc(x), jnp.asarray(t), jnp.asarray(ctx), jnp.asarray(text),
               jnp.asarray(ids))
    _close(_nchw(out), ref.numpy())
    with pytest.raises(ValueError, match="text_embeds and time_ids"):
        flax_unet.apply(params, _nhwc(x), jnp.asarray(t), jnp.asarray(ctx))


def _fill_unet(module, model):
    from scire_jax.io.convert.sd import _fill

    return _fill("unet", module, {k: v.numpy() for k, v in model.state_dict().items()}, "test")["params"]


def test_vae_matches_diffusers(torch_models, sd1):
    _, pipe = sd1
    vae = torch_models["vae"]
    image = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(image)).latent_dist
        decoded = vae.decode(posterior.mean).sample.numpy()

    def encode_decode(params, image, latents):
        return (pipe.vae.apply(params, image, method=AutoencoderKL.encode),
                pipe.vae.apply(params, latents, method=AutoencoderKL.decode))

    got, out = _run(encode_decode, pipe.params["vae"], _nhwc(image), _nhwc(posterior.mean.numpy()))
    _close(_nchw(got.mean), posterior.mean.numpy())
    _close(_nchw(got.logvar), posterior.logvar.numpy())
    _close(_nchw(out), decoded)
    assert got.sample(jax.random.key(0)).shape == (2, 8, 8, 4)


@pytest.mark.parametrize("which", ["sd1", "sd2"])
def test_text_encoder_matches_transformers(which, torch_models, request):
    _, pipe = request.getfixturevalue(which)
    ids = pipe.tokenizer(PROMPTS[:3])
    model = torch_models[f"clip_{which}"]
    with torch.no_grad():
        ref = model(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
        final_norm = getattr(model, "final_layer_norm", None) or model.text_model.final_layer_norm
        clip_skip_1 = final_norm(ref.hidden_states[-2]).numpy()  # diffusers' encode_prompt(clip_skip=1)
    te = pipe.text_encoder

    def run(params, ids):
        return (te.apply(params, ids), te.apply(params, ids, output_layer=-2, method=CLIPTextModel.encode),
                te.apply(params, ids, method=CLIPTextModel.encode))

    out, skip_1, default = _run(run, pipe.params["text_encoder"], jnp.asarray(ids))
    _close(out.last_hidden_state, ref.last_hidden_state.numpy())
    _close(out.pooler_output, ref.pooler_output.numpy())
    assert len(out.hidden_states) == len(ref.hidden_states) == te.num_hidden_layers + 1
    for got, want in zip(out.hidden_states, ref.hidden_states):
        _close(got, want.numpy())
    _close(skip_1, clip_skip_1)
    np.testing.assert_array_equal(default, out.last_hidden_state)


@pytest.mark.parametrize("which", ["sd1", "sd2"])
def test_tokenizer_matches_transformers(which, request, tmp_path):
    folder, pipe = request.getfixturevalue(which)
    reference = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    want = reference(PROMPTS, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids
    got = pipe.tokenizer(PROMPTS)
    assert got.dtype == np.int32 and got.shape == (len(PROMPTS), MAX_LEN)
    np.testing.assert_array_equal(got, np.asarray(want))
    assert pipe.tokenizer("a cat").shape == (1, MAX_LEN)
    reference.save_pretrained(tmp_path / "saved")  # a tokenizer.json folder takes the other code path
    np.testing.assert_array_equal(CLIPTokenizer.from_folder(tmp_path / "saved")(PROMPTS), got)


def test_pipeline_metadata(sd1, sd2):
    (_, p1), (_, p2) = sd1, sd2
    assert (p1.prediction, p2.prediction) == ("noise", "v")
    assert p1.schedule.total_n == 1000
    assert p1.scaling_factor == 0.5 and p1.latent_channels == 4 and p1.vae_scale_factor == 2
    assert p1.sample_size == 8 and p1.image_size == 16 and p1.max_length == MAX_LEN
    assert p2.unet.num_attention_heads == (2, 4) and p2.unet.use_linear_projection
    assert p2.unet.transformer_layers_per_block == (1, 2)
    assert p1.tokenizer.pad_token_id == EOS and p2.tokenizer.pad_token_id == 0
    leaves = jax.tree.leaves(p2.params)
    assert all(leaf.dtype == np.float32 for leaf in leaves)


# -- single-file (CompVis / LDM) checkpoints, written with an independent diffusers -> LDM map ----------


def _ldm_unet_map(levels, layers, attn_down, attn_up):
    m = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
         "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
         "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
         "mid_block.resnets.1.": "middle_block.2."}
    idx = 1
    for i in range(levels):
        for j in range(layers):
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{idx}.0."
            m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{idx}.1."
            idx += 1
        if i < levels - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{idx}.0.op."
            idx += 1
    k = 0
    for i in range(levels):
        for j in range(layers + 1):
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{k}.0."
            m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{k}.1."
            if j == layers and i < levels - 1:
                m[f"up_blocks.{i}.upsamplers.0.conv."] = f"output_blocks.{k}.{2 if attn_up[i] else 1}.conv."
            k += 1
    return m


RESNET_TO_LDM = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "time_emb_proj.": "emb_layers.1.",
                 "norm2.": "out_layers.0.", "conv2.": "out_layers.3.", "conv_shortcut.": "skip_connection."}


def _unet_to_ldm(model, config):
    attn_down = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    attn_up = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    prefixes = _ldm_unet_map(len(config["block_out_channels"]), config["layers_per_block"], attn_down, attn_up)
    out = {}
    for key, value in model.state_dict().items():
        prefix = max((p for p in prefixes if key.startswith(p)), key=len)
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            inner = next(p for p in RESNET_TO_LDM if rest.startswith(p))
            rest = RESNET_TO_LDM[inner] + rest[len(inner):]
        out["model.diffusion_model." + prefixes[prefix] + rest] = value.numpy()
    return out


def _vae_to_ldm(model):
    n = len(model.config.block_out_channels)
    rules = [(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
             (r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", lambda m: f"{m[1]}.mid.attn_1.norm."),
             (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)\.", lambda m: f"{m[1]}.mid.attn_1.{m[2]}."),
             (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", lambda m: f"{m[1]}.mid.attn_1.proj_out."),
             (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
             (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
             (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
              lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}."),
             (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample."),
             (r"^(encoder|decoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out.")]
    out = {}
    for key, value in model.state_dict().items():
        value = value.numpy()
        for pattern, rule in rules:
            new = re.sub(pattern, rule, key)
            if new != key:
                key = new
                break
        if ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM stores the VAE attention projections as 1x1 convolutions
        out["first_stage_model." + key.replace("conv_shortcut", "nin_shortcut")] = value
    return out


def _clip_to_openclip(model, rng):
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    p = "cond_stage_model.model."
    out = {p + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           p + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           p + "ln_final.weight": sd.pop("final_layer_norm.weight"),
           p + "ln_final.bias": sd.pop("final_layer_norm.bias"),
           p + "text_projection": rng.standard_normal((32, 16)).astype(np.float32),
           p + "logit_scale": np.float32(4.6)}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    layers = model.config.num_hidden_layers
    for i in range(layers + 1):  # OpenCLIP has one more layer; SD 2.x uses the penultimate
        src = i if i < layers else 0
        for leaf in ("weight", "bias"):
            qkv = [sd[f"encoder.layers.{src}.self_attn.{n}_proj.{leaf}"] for n in "qkv"]
            out[f"{p}transformer.resblocks.{i}.attn.in_proj_{leaf}"] = np.concatenate(qkv) + (i == layers)
            for old, new in names.items():
                value = sd[f"encoder.layers.{src}.{old}.{leaf}"]
                out[f"{p}transformer.resblocks.{i}.{new}.{leaf}"] = value + (i == layers)
    return out


def _assert_same_params(a, b):
    chex.assert_trees_all_equal_structs(a, b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_single_file_sd1_safetensors(torch_models, sd1, tmp_path):
    import safetensors.numpy

    folder, pipe = sd1
    m = torch_models
    state = {**_unet_to_ldm(m["unet_sd1"], UNET_SD1), **_vae_to_ldm(m["vae"])}
    clip = m["clip_sd1"].state_dict()
    state.update({"cond_stage_model.transformer.text_model." + k: v.numpy() for k, v in clip.items()})
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = np.arange(MAX_LEN)[None]
    state.update({"alphas_cumprod": np.ones(1000, np.float32), "model_ema.decay": np.float32(0.999)})  # ignored
    path = tmp_path / "sd1.safetensors"
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    overrides = {"unet": {"norm_num_groups": 8, "sample_size": 8, "attention_head_dim": 2},
                 "vae": {"norm_num_groups": 8, "scaling_factor": 0.5, "sample_size": 16},
                 "text_encoder": {"num_attention_heads": 4, "eos_token_id": EOS}}
    single = load_sd_pipeline(path, config=overrides, tokenizer=folder / "tokenizer")
    _assert_same_params(single.params, pipe.params)
    assert single.unet == pipe.unet and single.vae == pipe.vae and single.text_encoder == pipe.text_encoder
    assert single.prediction == "noise" and single.tokenizer is not None
    assert single.schedule == pipe.schedule

    # inferred without overrides (what the shapes tell), and strictness on stray component keys
    configs, _ = convert_ldm_checkpoint(state)
    assert configs["unet"]["block_out_channels"] == [32, 64] and configs["unet"]["layers_per_block"] == [1, 1]
    assert configs["unet"]["down_block_types"] == UNET_SD1["down_block_types"]
    assert configs["unet"]["up_block_types"] == UNET_SD1["up_block_types"]
    assert configs["unet"]["use_linear_projection"] is False and configs["unet"]["cross_attention_dim"] == 32
    assert configs["vae"]["latent_channels"] == 4 and configs["text_encoder"]["hidden_act"] == "quick_gelu"
    state["model.diffusion_model.extra_block.weight"] = np.zeros(3, np.float32)
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    with pytest.raises(ValueError, match=r"(?s)unet weights.*1 unexpected keys.*diffusion_model\.extra_block\.weight"):
        load_sd_pipeline(path, config=overrides)


def test_single_file_sd2_openclip_ckpt(torch_models, sd2, tmp_path):
    _, pipe = sd2
    m = torch_models
    state = {**_unet_to_ldm(m["unet_sd2"], UNET_SD2), **_vae_to_ldm(m["vae"]),
             **_clip_to_openclip(m["clip_sd2"], np.random.default_rng(0))}
    path = tmp_path / "sd2.ckpt"
    torch.save({"state_dict": {k: torch.as_tensor(v) for k, v in state.items()}, "global_step": 1}, path)
    overrides = {"unet": {"norm_num_groups": 8, "sample_size": 8, "attention_head_dim": [2, 4],
                          "upcast_attention": True},
                 "vae": {"norm_num_groups": 8, "scaling_factor": 0.5, "sample_size": 16},
                 "text_encoder": {"num_attention_heads": 4},
                 "scheduler": {"prediction_type": "v_prediction"}}
    single = load_sd_pipeline(path, config=overrides)
    _assert_same_params(single.params, pipe.params)
    assert single.text_encoder.num_hidden_layers == 3 and single.text_encoder.hidden_act == "gelu"
    assert single.unet == pipe.unet and single.prediction == "v" and single.tokenizer is None


# -- errors ---------------------------------------------------------------------------------------


def test_missing_vae_folder(sd1, tmp_path):
    folder = shutil.copytree(sd1[0], tmp_path / "pipe")
    shutil.rmtree(folder / "vae")
    with pytest.raises(ValueError, match=r"missing the 'vae/' folder"):
        load_sd_pipeline(folder)


def test_text_encoder_width_mismatch(sd1, tmp_path):
    folder = shutil.copytree(sd1[0], tmp_path / "pipe")
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    (folder / "text_encoder" / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(ValueError, match=r"hidden_size=48 does not match the unet's cross_attention_dim=32"):
        load_sd_pipeline(folder)


def test_bad_inputs(sd1, tmp_path):
    folder = shutil.copytree(sd1[0], tmp_path / "pipe")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no unet weights in .*diffusion_pytorch_model\.safetensors"):
        load_sd_pipeline(folder)
    with pytest.raises(ValueError, match=r"no unet weights in .*diffusion_pytorch_model\.fp16\.safetensors"):
        load_sd_pipeline(sd1[0], variant="fp16")
    with pytest.raises(ValueError, match="does not exist"):
        load_sd_pipeline(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"config\['class_embed_type'\]='timestep' is not supported"):
        UNet2DConditionModel.from_config({**UNET_SD1, "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match=r"3 heads do not divide the 32 channels"):
        UNet2DConditionModel.from_config({**UNET_SD1, "attention_head_dim": 3})
    with pytest.raises(ValueError, match=r"hidden_act'\]='relu' is not supported"):
        CLIPTextModel.from_config({**CLIP_SD1, "hidden_act": "relu"})
    with pytest.raises(ValueError, match=r"up_block_types.*AttnUpDecoderBlock2D"):
        AutoencoderKL.from_config({**VAE, "up_block_types": ["AttnUpDecoderBlock2D"] * 2})
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder_2": ["transformers", "CLIPTextModel"]}))
    with pytest.raises(ValueError, match="SDXL"):
        load_sd_pipeline(folder)
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        load_sd_pipeline(folder / "scheduler")
    with pytest.raises(ValueError, match="tokenizer"):
        CLIPTokenizer.from_folder(folder / "unet")
