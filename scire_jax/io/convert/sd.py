"""Load Stable Diffusion 1.x / 2.x checkpoints into the Flax UNet, VAE and CLIP text encoder.

Two sources:

* **diffusers pipeline folders** (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``).  Weights may be single or sharded safetensors (read without
  torch), ``.bin`` files (need torch) and ``variant`` files such as
  ``diffusion_pytorch_model.fp16.safetensors`` / ``model.fp16.safetensors`` (widened to float32).
  When no plain weights exist, the ``fp16`` variant is used.
* **original single-file checkpoints** (CompVis / Stability LDM layout: ``model.diffusion_model.*``,
  ``first_stage_model.*``, and ``cond_stage_model.transformer.*`` (SD 1.x, HF CLIP) or
  ``cond_stage_model.model.*`` (SD 2.x, OpenCLIP)), ``.safetensors`` or ``.ckpt``.  Keys are renamed
  to the diffusers layout and the configs are inferred from the weight shapes; what the shapes cannot
  tell (GroupNorm groups: 32; heads: 8 for SD 1.x, 64-channel heads for SD 2.x; VAE scaling factor
  0.18215; latent size 64; scheduler: scaled_linear 0.00085..0.012, epsilon) uses the Stable
  Diffusion values and can be overridden with ``config={"unet": {...}, "vae": {...},
  "text_encoder": {...}, "scheduler": {...}}`` (diffusers-style keys; SD 2.x 768-v checkpoints need
  ``{"scheduler": {"prediction_type": "v_prediction"}, "unet": {"sample_size": 96}}``).  For SD 2.x the
  last OpenCLIP layer is dropped, as diffusers does, so the text encoder returns the penultimate layer
  (after ``ln_final``) that SD 2.x was trained on.  Keys outside the three component prefixes (EMA
  copies ``model_ema.*``, schedule buffers, ``first_stage_model.loss.*``, OpenCLIP's
  ``text_projection`` / ``logit_scale`` / ``visual.*``) are ignored; a single file holds no tokenizer,
  pass ``tokenizer=<folder with vocab.json + merges.txt>``.

Conversion is strict: every parameter must be filled and every component weight consumed, otherwise a
``ValueError`` lists missing / unexpected keys and shape mismatches.  SDXL (``text_encoder_2``,
``conditioner.*``) and inpainting UNets are refused with a clear message.

Example::

    pipe = load_sd_pipeline("stable-diffusion-v1-5", dtype=jnp.bfloat16)
    ids = pipe.tokenizer(["a photo of a cat", ""])                       # (2, 77) int32
    ctx = pipe.text_encoder.apply(pipe.params["text_encoder"], ids, method=CLIPTextModel.encode)
    eps = pipe.unet.apply(pipe.params["unet"], latents_nhwc, t, ctx)
    images = pipe.vae.apply(pipe.params["vae"], latents_nhwc / pipe.scaling_factor, method=AutoencoderKL.decode)
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np

from scire_jax.core import schedules
from scire_jax.io.convert.from_diffusers import _diffusers_candidates
from scire_jax.io.convert.scheduler import read_json, schedule_from_scheduler_config
from scire_jax.io.convert.weights import fill_params, load_state_dict, load_torch_object, to_numpy_state_dict
from scire_jax.models.clip_text import CLIPTextModel
from scire_jax.models.sd_unet import UNet2DConditionModel
from scire_jax.models.sd_vae import AutoencoderKL

__all__ = ["SDPipeline", "CLIPTokenizer", "load_sd_pipeline", "load_unet", "load_vae", "load_text_encoder",
           "convert_ldm_checkpoint", "SD_SCHEDULER_CONFIG"]

# diffusers' default for single-file SD checkpoints (the DDPM training schedule of SD 1.x / 2.x).
SD_SCHEDULER_CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "num_train_timesteps": 1000, "prediction_type": "epsilon"}

# Expected ``model_index.json`` class names per component.
_COMPONENTS = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any scheduler class: only its training schedule and prediction type are used
}

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model.safetensors.index{v}.json",
                      "diffusion_pytorch_model{v}.safetensors.index.json", "diffusion_pytorch_model{v}.bin",
                      "diffusion_pytorch_model.bin.index{v}.json", "diffusion_pytorch_model{v}.bin.index.json")
_TRANSFORMERS_WEIGHTS = ("model{v}.safetensors", "model.safetensors.index{v}.json", "model{v}.safetensors.index.json",
                         "pytorch_model{v}.bin", "pytorch_model.bin.index{v}.json", "pytorch_model{v}.bin.index.json")

# Flax module names ``transformer_blocks_0`` / ``net_0`` / ``layers_0`` are list entries in PyTorch;
# ``flax_path_to_torch_key`` knows the UNet2DModel list names, this adds the transformer ones.
_LIST_NAMES = re.compile(r"(?<![^.])(transformer_blocks|net|layers)_(\d+)(?=\.)")


def _list_candidates(key: str) -> Iterable[str]:
    yield _LIST_NAMES.sub(r"\1.\2", key)


# -- pipeline container ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SDPipeline:
    """A loaded Stable Diffusion pipeline: Flax modules, their parameters and the sampling metadata.

    Attributes:
      unet, vae, text_encoder: Flax modules (computation dtype as requested; parameters float32).
      params: ``{"unet": {"params": ...}, "vae": {...}, "text_encoder": {...}}`` (numpy float32 trees,
        the first argument of each module's ``apply``).
      tokenizer: :class:`CLIPTokenizer` (``None`` for a single file loaded without ``tokenizer=``).
      schedule: training noise schedule (:func:`scire_jax.core.schedules.discrete`).
      prediction: ``"noise"`` | ``"v"`` | ``"x_start"`` (what the UNet predicts).
      scaling_factor: latents = ``scaling_factor * vae.encode(x).mean``; decode ``latents / scaling_factor``.
      latent_channels: UNet / VAE latent channels (4).
      sample_size: default latent side length (64 for 512 px SD 1.x; 96 for 768 px SD 2.x).
      vae_scale_factor: image pixels per latent pixel (8).
      configs: the diffusers-style configs of the components (``"unet"``, ``"vae"``, ``"text_encoder"``,
        ``"scheduler"``), as used to build them.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    params: Mapping[str, Any]
    tokenizer: Optional[CLIPTokenizer]
    schedule: schedules.DiscreteSchedule
    prediction: str
    scaling_factor: float
    latent_channels: int
    sample_size: int
    vae_scale_factor: int
    configs: Mapping[str, dict]

    @property
    def image_size(self) -> int:
        """Default image side length in pixels (``sample_size * vae_scale_factor``)."""
        return self.sample_size * self.vae_scale_factor

    @property
    def max_length(self) -> int:
        """Prompt length in tokens (the tokenizer's ``model_max_length``, else the text encoder's positions)."""
        return self.tokenizer.max_length if self.tokenizer is not None else self.text_encoder.max_position_embeddings


# -- tokenizer ------------------------------------------------------------------------------------


def _token_str(value, default):
    if isinstance(value, Mapping):
        value = value.get("content")
    return default if value is None else str(value)


class CLIPTokenizer:
    """CLIP byte-level BPE tokenizer on the ``tokenizers`` library (no torch, no transformers).

    Reproduces transformers' ``CLIPTokenizer(Fast)`` with ``padding="max_length", truncation=True``:
    NFC + whitespace collapsing + lower-casing, CLIP's pre-tokenisation regex, BPE with ``</w>`` word
    ends, ``<|startoftext|> ... <|endoftext|>`` around the text, padding with the pad token (SD 1.x:
    ``<|endoftext|>``; SD 2.x: ``!``) to ``max_length`` (``model_max_length``, 77).

    ``tokenizer(["a cat", "a dog"])`` -> ``np.ndarray`` ``(2, max_length)`` int32.
    """

    def __init__(self, tokenizer, max_length: int, pad_token: str, bos_token: str, eos_token: str):
        self.backend = tokenizer
        self.max_length = int(max_length)
        ids = {}
        for name, token in (("pad", pad_token), ("bos", bos_token), ("eos", eos_token)):
            ids[name] = tokenizer.token_to_id(token)
            if ids[name] is None:
                raise ValueError(f"tokenizer: {name} token {token!r} is not in the vocabulary")
        self.pad_token_id, self.bos_token_id, self.eos_token_id = ids["pad"], ids["bos"], ids["eos"]
        self.backend.enable_truncation(max_length=self.max_length)
        self.backend.enable_padding(pad_id=self.pad_token_id, pad_token=pad_token, length=self.max_length)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder) -> CLIPTokenizer:
        """Read a transformers tokenizer folder: ``tokenizer.json``, or ``vocab.json`` + ``merges.txt``, with
        ``tokenizer_config.json`` / ``special_tokens_map.json`` for the special tokens and ``model_max_length``."""
        try:
            import tokenizers
            from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
        except ImportError as error:  # pragma: no cover - tokenizers is installed with the test extras
            raise ImportError("the CLIP tokenizer needs the 'tokenizers' package (pip install tokenizers)") from error
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"tokenizer folder {str(folder)!r} does not exist")
        settings: Dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins, as in transformers
            if (folder / name).is_file():
                settings.update(read_json(folder / name))
        bos = _token_str(settings.get("bos_token"), "<|startoftext|>")
        eos = _token_str(settings.get("eos_token"), "<|endoftext|>")
        unk = _token_str(settings.get("unk_token"), "<|endoftext|>")
        pad = _token_str(settings.get("pad_token"), eos)
        max_length = settings.get("model_max_length", 77)
        if not isinstance(max_length, (int, float)) or isinstance(max_length, bool) or not 2 <= max_length <= 1e6:
            max_length = 77  # transformers writes a huge sentinel when no length is known; CLIP's is 77
        if (folder / "tokenizer.json").is_file():
            backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        else:
            if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
                raise ValueError(f"tokenizer folder {str(folder)!r} has neither tokenizer.json nor "
                                 "vocab.json + merges.txt")
            vocab = read_json(folder / "vocab.json")
            merges = []
            for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
                if line.startswith("#version") or not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"cannot read merges.txt in {str(folder)!r}: bad line {line!r}")
                merges.append((parts[0], parts[1]))
            backend = tokenizers.Tokenizer(tokenizers.models.BPE(
                vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False,
                unk_token=unk))
            backend.normalizer = normalizers.Sequence(
                [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
            backend.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"
                                           r"[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False)])
            backend.decoder = decoders.ByteLevel()
            # transformers registers the special tokens as unsplittable added tokens (so a pad token
            # such as SD 2.x's "!" is matched before BPE), then wraps the text in BOS ... EOS.
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(
                (bos, eos, unk, pad))])
            bos_id, eos_id = backend.token_to_id(bos), backend.token_to_id(eos)
            if bos_id is None or eos_id is None:
                raise ValueError(f"tokenizer in {str(folder)!r}: {bos!r} / {eos!r} are not in vocab.json")
            backend.post_processor = processors.RobertaProcessing((eos, eos_id), (bos, bos_id), trim_offsets=False,
                                                                  add_prefix_space=False)
        return cls(backend, int(max_length), pad, bos, eos)

    def __call__(self, prompts: Union[str, Sequence[str]]) -> np.ndarray:
        """Token ids ``(batch, max_length)`` int32 of one prompt or a list of prompts."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be strings")
        encodings = self.backend.encode_batch(list(prompts))
        return np.asarray([e.ids for e in encodings], dtype=np.int32).reshape(len(prompts), self.max_length)


# -- diffusers folders ----------------------------------------------------------------------------


def _find_weights(folder: Path, patterns: Sequence[str], variant: Optional[str], what: str) -> Path:
    variants = [f".{variant}"] if variant else ["", ".fp16"]  # fall back to fp16 when only that exists
    for suffix in variants:
        for pattern in patterns:
            candidate = folder / pattern.format(v=suffix)
            if candidate.is_file():
                return candidate
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    wanted = patterns[0].format(v=f".{variant}" if variant else "")
    raise ValueError(f"no {what} weights in {str(folder)!r}: expected e.g. {wanted!r} (.safetensors / .bin, "
                     f"optionally sharded with an index.json); found {present}")


def _build(kind: str, config: Mapping, dtype):
    builder = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}[kind]
    try:
        return builder.from_config(config, dtype=dtype)
    except ValueError as error:
        raise ValueError(f"{kind}: {error}") from None


@functools.lru_cache(maxsize=16)
def _abstract_params(module):
    # Tracing ``init`` costs about a second for a UNet; modules are hashable, shape trees immutable.
    return module.abstract_params()


def _fill(kind: str, module, state_dict: Mapping[str, np.ndarray], source: str) -> Dict[str, Any]:
    # Old diffusers VAE files name the mid-block attention query / key / value / proj_attn.
    candidates: Callable[[str], Iterable[str]] = _diffusers_candidates if kind == "vae" else _list_candidates
    return {"params": fill_params(_abstract_params(module), state_dict, candidates, source=source)}


def _text_encoder_state(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """transformers < 5 prefixes the CLIPTextModel keys with ``text_model.``; ``position_ids`` is a buffer."""
    out = {}
    for key, value in state_dict.items():
        key = key[len("text_model."):] if key.startswith("text_model.") else key
        if key != "embeddings.position_ids":
            out[key] = value
    return out


def _load_weights(folder: Path, kind: str, module, variant: Optional[str]) -> Dict[str, Any]:
    patterns = _TRANSFORMERS_WEIGHTS if kind == "text_encoder" else _DIFFUSERS_WEIGHTS
    weights = _find_weights(folder, patterns, variant, kind)
    state_dict = load_state_dict(weights)
    if kind == "text_encoder":
        state_dict = _text_encoder_state(state_dict)
    return _fill(kind, module, state_dict, f"{kind} weights {weights.name!r}")


def _load_component(folder: Path, kind: str, dtype, variant: Optional[str]):
    config = read_json(folder / "config.json")
    module = _build(kind, config, dtype)
    return module, _load_weights(folder, kind, module, variant), config


def load_unet(folder, dtype=None, variant: Optional[str] = None) -> Tuple[UNet2DConditionModel, dict, dict]:
    """``(module, {"params": ...}, config)`` from a diffusers ``unet/`` folder (``config.json`` + weights)."""
    return _load_component(Path(folder), "unet", dtype, variant)


def load_vae(folder, dtype=None, variant: Optional[str] = None) -> Tuple[AutoencoderKL, dict, dict]:
    """``(module, {"params": ...}, config)`` from a diffusers ``vae/`` folder."""
    return _load_component(Path(folder), "vae", dtype, variant)


def load_text_encoder(folder, dtype=None, variant: Optional[str] = None) -> Tuple[CLIPTextModel, dict, dict]:
    """``(module, {"params": ...}, config)`` from a transformers ``text_encoder/`` folder."""
    return _load_component(Path(folder), "text_encoder", dtype, variant)


def _check_model_index(folder: Path) -> None:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        if not (folder / "unet").is_dir():
            raise ValueError(f"{str(folder)!r} is not a diffusers pipeline folder: no model_index.json")
        index: Dict[str, Any] = {}
    else:
        index = read_json(index_path)
    for extra in ("text_encoder_2", "tokenizer_2"):
        if index.get(extra) not in (None, [None, None]) or (folder / extra).is_dir():
            raise ValueError(f"{str(folder)!r} has a {extra!r} component (SDXL-style pipeline), which load_sd_pipeline "
                             "does not support")
    for name, classes in _COMPONENTS.items():
        entry = index.get(name)
        if index and (not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None):
            raise ValueError(f"model_index.json in {str(folder)!r} has no {name!r} component (got {entry!r})")
        if classes is not None and entry is not None and entry[1] not in classes:
            raise ValueError(f"model_index.json: {name!r} is {entry[1]!r}, which is not supported; expected "
                             f"{' or '.join(classes)}")
        if not (folder / name).is_dir():
            raise ValueError(f"pipeline folder {str(folder)!r} is missing the '{name}/' folder")


def _check_compatible(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel) -> None:
    if unet.addition_embed_type is not None:
        raise ValueError(f"unet: addition_embed_type={unet.addition_embed_type!r} (SDXL) needs a second text encoder; "
                         "load_sd_pipeline supports SD 1.x / 2.x pipelines")
    if text_encoder.hidden_size != unet.cross_attention_dim[0]:
        raise ValueError(f"text encoder hidden_size={text_encoder.hidden_size} does not match the unet's "
                         f"cross_attention_dim={unet.cross_attention_dim[0]}")
    if unet.in_channels != vae.latent_channels or unet.out_channels != vae.latent_channels:
        raise ValueError(f"unet in/out channels ({unet.in_channels}, {unet.out_channels}) do not match the VAE's "
                         f"latent_channels={vae.latent_channels} (inpainting / depth UNets are not supported)")


def _assemble(unet, vae, text_encoder, params, tokenizer, scheduler_config, configs) -> SDPipeline:
    _check_compatible(unet, vae, text_encoder)
    if tokenizer is not None and tokenizer.max_length > text_encoder.max_position_embeddings:
        raise ValueError(f"tokenizer model_max_length={tokenizer.max_length} exceeds the text encoder's "
                         f"max_position_embeddings={text_encoder.max_position_embeddings}")
    schedule, prediction = schedule_from_scheduler_config(scheduler_config)
    configs = dict(configs, scheduler=dict(scheduler_config))
    return SDPipeline(unet=unet, vae=vae, text_encoder=text_encoder, params=params, tokenizer=tokenizer,
                      schedule=schedule, prediction=prediction, scaling_factor=vae.scaling_factor,
                      latent_channels=vae.latent_channels, sample_size=unet.sample_size or 64,
                      vae_scale_factor=vae.downsample_factor, configs=configs)


def _load_folder(folder: Path, dtype, variant: Optional[str]) -> SDPipeline:
    _check_model_index(folder)
    configs = {kind: read_json(folder / kind / "config.json") for kind in ("unet", "vae", "text_encoder")}
    modules = {kind: _build(kind, configs[kind], dtype) for kind in configs}
    _check_compatible(modules["unet"], modules["vae"], modules["text_encoder"])  # before reading any weights
    params = {kind: _load_weights(folder / kind, kind, modules[kind], variant) for kind in modules}
    tokenizer = CLIPTokenizer.from_folder(folder / "tokenizer")
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
    return _assemble(modules["unet"], modules["vae"], modules["text_encoder"], params, tokenizer, scheduler_config,
                     configs)


# -- original (CompVis / Stability) single-file checkpoints -------------------------------------------

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_CLIP_PREFIX = "cond_stage_model.transformer."
_OPENCLIP_PREFIX = "cond_stage_model.model."

_LDM_RESNET = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
               ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


def _indices(keys: Iterable[str], pattern: str) -> list:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _require(sd: Mapping[str, np.ndarray], key: str, what: str) -> np.ndarray:
    if key not in sd:
        raise ValueError(f"single-file checkpoint: cannot infer the {what}: key {key!r} is missing")
    return sd[key]


def _rename(sd: Mapping[str, np.ndarray], prefix_map: Mapping[str, Tuple[str, bool]], source_prefix: str):
    """Rename by longest matching prefix (``ldm prefix -> (diffusers prefix, is_resnet)``); unmatched keys
    keep their original full name so the strict fill reports them."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:n]) + "."
            if prefix in prefix_map:
                target, resnet = prefix_map[prefix]
                rest = key[len(prefix):]
                if resnet:
                    for old, new in _LDM_RESNET:
                        if rest.startswith(old):
                            rest = new + rest[len(old):]
                            break
                out[target + rest] = value
                break
        else:
            out[source_prefix + key] = value
    return out


def _convert_ldm_unet(sd: Mapping[str, np.ndarray]) -> Tuple[dict, Dict[str, np.ndarray]]:
    keys = list(sd)
    conv_in = _require(sd, "input_blocks.0.0.weight", "UNet input convolution")
    # Walk the input blocks: resnet (+ attention) blocks, a ".0.op" downsampler closes each level.
    levels, current = [], []
    for idx in _indices(keys, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{idx}.0.op.weight" in sd:
            levels.append((current, idx))
            current = []
        else:
            current.append(idx)
    levels.append((current, None))
    if any(not blocks for blocks, _ in levels):
        raise ValueError("single-file checkpoint: UNet input_blocks have an unexpected layout")
    prefix_map: Dict[str, Tuple[str, bool]] = {
        "input_blocks.0.0.": ("conv_in.", False), "time_embed.0.": ("time_embedding.linear_1.", False),
        "time_embed.2.": ("time_embedding.linear_2.", False), "out.0.": ("conv_norm_out.", False),
        "out.2.": ("conv_out.", False), "label_emb.0.0.": ("add_embedding.linear_1.", False),
        "label_emb.0.2.": ("add_embedding.linear_2.", False), "middle_block.0.": ("mid_block.resnets.0.", True),
        "middle_block.1.": ("mid_block.attentions.0.", False), "middle_block.2.": ("mid_block.resnets.1.", True)}

    def attention_layers(prefix):
        return len(_indices(keys, re.escape(prefix) + r"transformer_blocks\.(\d+)\."))

    block_out, down_types, layers, t_layers, linear = [], [], [], [], None
    for level, (blocks, down_idx) in enumerate(levels):
        block_out.append(int(_require(sd, f"input_blocks.{blocks[0]}.0.in_layers.2.weight", "UNet widths").shape[0]))
        attn = [f"input_blocks.{i}.1.proj_in.weight" in sd for i in blocks]
        if any(attn) != all(attn):
            raise ValueError(f"single-file checkpoint: UNet level {level} mixes blocks with and without attention")
        down_types.append("CrossAttnDownBlock2D" if attn[0] else "DownBlock2D")
        layers.append(len(blocks))
        t_layers.append(attention_layers(f"input_blocks.{blocks[0]}.1.") if attn[0] else 1)
        if attn[0]:
            linear = sd[f"input_blocks.{blocks[0]}.1.proj_in.weight"].ndim == 2
        for j, idx in enumerate(blocks):
            prefix_map[f"input_blocks.{idx}.0."] = (f"down_blocks.{level}.resnets.{j}.", True)
            prefix_map[f"input_blocks.{idx}.1."] = (f"down_blocks.{level}.attentions.{j}.", False)
        if down_idx is not None:
            prefix_map[f"input_blocks.{down_idx}.0.op."] = (f"down_blocks.{level}.downsamplers.0.conv.", False)
    n = len(levels)
    up_types, k = [], 0
    for i in range(n):
        count = layers[n - 1 - i] + 1
        attn = f"output_blocks.{k}.1.proj_in.weight" in sd
        up_types.append("CrossAttnUpBlock2D" if attn else "UpBlock2D")
        for j in range(count):
            prefix_map[f"output_blocks.{k}.0."] = (f"up_blocks.{i}.resnets.{j}.", True)
            if attn:
                prefix_map[f"output_blocks.{k}.1."] = (f"up_blocks.{i}.attentions.{j}.", False)
            if j == count - 1 and i < n - 1:
                prefix_map[f"output_blocks.{k}.{2 if attn else 1}.conv."] = (f"up_blocks.{i}.upsamplers.0.conv.", False)
            k += 1
    has_mid = any(key.startswith("middle_block.") for key in keys)
    if has_mid and "middle_block.1.proj_in.weight" not in sd:
        raise ValueError("single-file checkpoint: UNet middle block without cross-attention is not supported")
    to_k = next((key for key in keys if key.endswith("attn2.to_k.weight")), None)
    if to_k is None:
        raise ValueError("single-file checkpoint: the UNet has no cross-attention (attn2) layers")
    if linear is None:
        linear = sd["middle_block.1.proj_in.weight"].ndim == 2
    # Heads are not visible in the weights: SD 1.x uses 8 heads, SD 2.x (linear projections) 64-channel heads.
    heads = [c // 64 if linear and c % 64 == 0 else 8 for c in block_out]
    time_dim = int(_require(sd, "time_embed.0.weight", "time embedding").shape[0])
    config = {
        "_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": int(conv_in.shape[1]),
        "out_channels": int(_require(sd, "out.2.weight", "UNet output convolution").shape[0]),
        "block_out_channels": block_out, "down_block_types": down_types, "up_block_types": up_types,
        "mid_block_type": "UNetMidBlock2DCrossAttn" if has_mid else None, "layers_per_block": layers,
        "transformer_layers_per_block": t_layers, "cross_attention_dim": int(sd[to_k].shape[1]),
        "attention_head_dim": heads, "use_linear_projection": bool(linear), "norm_num_groups": 32,
        "time_embedding_dim": None if time_dim == 4 * block_out[0] else time_dim,
        "flip_sin_to_cos": True, "freq_shift": 0,
    }
    if "label_emb.0.0.weight" in sd:  # SDXL-style text_time embedding
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=int(sd["label_emb.0.0.weight"].shape[1]))
    return config, _rename(sd, prefix_map, _UNET_PREFIX)


_VAE_RULES = (
    (re.compile(r"^(encoder|decoder)\.mid\.block_(\d)\.(.*)$"),
     lambda m, n: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3]}"),
    (re.compile(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(.*)$"),
     lambda m, n: f"{m[1]}.mid_block.attentions.0."
                  f"{dict(norm='group_norm', q='to_q', k='to_k', v='to_v', proj_out='to_out.0')[m[2]]}.{m[3]}"),
    (re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.(.*)$"),
     lambda m, n: f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}"),
    (re.compile(r"^encoder\.down\.(\d+)\.downsample\.conv\.(.*)$"),
     lambda m, n: f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"),
    (re.compile(r"^decoder\.up\.(\d+)\.block\.(\d+)\.(.*)$"),  # LDM numbers the decoder levels from the bottom
     lambda m, n: f"decoder.up_blocks.{n - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"),
    (re.compile(r"^decoder\.up\.(\d+)\.upsample\.conv\.(.*)$"),
     lambda m, n: f"decoder.up_blocks.{n - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"),
    (re.compile(r"^(encoder|decoder)\.norm_out\.(.*)$"), lambda m, n: f"{m[1]}.conv_norm_out.{m[2]}"),
)


def _convert_ldm_vae(sd: Mapping[str, np.ndarray]) -> Tuple[dict, Dict[str, np.ndarray]]:
    keys = list(sd)
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ValueError("single-file checkpoint: no VAE encoder blocks (first_stage_model.encoder.down.*)")
    n = len(levels)
    block_out = [int(_require(sd, f"encoder.down.{i}.block.0.conv1.weight", "VAE widths").shape[0]) for i in levels]
    conv_out = _require(sd, "encoder.conv_out.weight", "VAE latent channels")
    config = {
        "_class_name": "AutoencoderKL",
        "in_channels": int(_require(sd, "encoder.conv_in.weight", "VAE input").shape[1]),
        "out_channels": int(_require(sd, "decoder.conv_out.weight", "VAE output").shape[0]),
        "block_out_channels": block_out, "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "layers_per_block": len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")),
        "latent_channels": int(conv_out.shape[0]) // 2, "norm_num_groups": 32, "sample_size": 512,
        "scaling_factor": 0.18215, "use_quant_conv": "quant_conv.weight" in sd,
        "use_post_quant_conv": "post_quant_conv.weight" in sd,
        "mid_block_add_attention": any(k.startswith("encoder.mid.attn_1.") for k in keys),
    }
    out = {}
    for key, value in sd.items():
        for regex, rule in _VAE_RULES:
            m = regex.match(key)
            if m:
                key = rule(m, n)
                break
        key = key.replace(".nin_shortcut.", ".conv_shortcut.")
        out[key] = value
    return config, out


def _clip_config(sd: Mapping[str, np.ndarray], num_layers: int, hidden_act: str) -> dict:
    tokens = _require(sd, "embeddings.token_embedding.weight", "text encoder vocabulary")
    hidden = int(tokens.shape[1])
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": int(tokens.shape[0]),
            "hidden_size": hidden,
            "intermediate_size": int(_require(sd, "encoder.layers.0.mlp.fc1.weight", "text MLP width").shape[0]),
            "num_hidden_layers": num_layers, "num_attention_heads": max(hidden // 64, 1),
            "max_position_embeddings": int(_require(sd, "embeddings.position_embedding.weight", "positions").shape[0]),
            "hidden_act": hidden_act, "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 2}


def _convert_hf_clip(sd: Mapping[str, np.ndarray]) -> Tuple[dict, Dict[str, np.ndarray]]:
    sd = _text_encoder_state(sd)
    return _clip_config(sd, len(_indices(sd, r"encoder\.layers\.(\d+)\.")), "quick_gelu"), sd


_OPENCLIP_IGNORED = re.compile(r"^(text_projection|logit_scale|attn_mask|visual\..*)$")
_OPENCLIP_RULES = (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
                   ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))


def _convert_openclip(sd: Mapping[str, np.ndarray]) -> Tuple[dict, Dict[str, np.ndarray]]:
    blocks = _indices(sd, r"transformer\.resblocks\.(\d+)\.")
    if len(blocks) < 2:
        raise ValueError("single-file checkpoint: OpenCLIP text encoder with fewer than 2 layers")
    last = blocks[-1]  # SD 2.x conditions on the penultimate layer: drop the last one, as diffusers does
    out = {}
    for key, value in sd.items():
        if _OPENCLIP_IGNORED.match(key) or key.startswith(f"transformer.resblocks.{last}."):
            continue
        m = re.match(r"^transformer\.resblocks\.(\d+)\.(.*)$", key)
        if m is None:
            name = {"token_embedding.weight": "embeddings.token_embedding.weight",
                    "positional_embedding": "embeddings.position_embedding.weight",
                    "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}.get(key)
            out[name or _OPENCLIP_PREFIX + key] = value
            continue
        layer, rest = f"encoder.layers.{m[1]}.", m[2]
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):  # fused q/k/v -> three projections
            leaf = "weight" if rest.endswith("weight") else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(np.asarray(value), 3, axis=0)):
                out[f"{layer}self_attn.{name}.{leaf}"] = part
            continue
        for old, new in _OPENCLIP_RULES:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        out[layer + rest] = value
    return _clip_config(out, len(blocks) - 1, "gelu"), out


def _split(state_dict: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _merge(base: dict, override: Optional[Mapping]) -> dict:
    if override is None:
        return base
    if not isinstance(override, Mapping):
        raise ValueError(f"config overrides must be dicts, got {type(override).__name__}")
    return {**base, **override}


def convert_ldm_checkpoint(state_dict: Mapping[str, np.ndarray], config: Optional[Mapping[str, Mapping]] = None
                           ) -> Tuple[Dict[str, dict], Dict[str, Dict[str, np.ndarray]]]:
    """Split and rename an original SD single-file state dict to diffusers names, inferring the configs.

    Args:
      state_dict: the flat checkpoint (``model.diffusion_model.*``, ``first_stage_model.*``,
        ``cond_stage_model.*`` ...), numpy arrays.
      config: optional overrides ``{"unet" | "vae" | "text_encoder" | "scheduler": {diffusers keys}}``
        merged over the inferred configs.

    Returns:
      ``(configs, state_dicts)``: diffusers-style configs for ``"unet"``, ``"vae"``, ``"text_encoder"``,
      ``"scheduler"`` and diffusers-layout state dicts for the first three.
    """
    config = dict(config or {})
    unknown = set(config) - {"unet", "vae", "text_encoder", "scheduler"}
    if unknown:
        raise ValueError(f"config overrides: unknown components {sorted(unknown)}; expected unet, vae, text_encoder, "
                         "scheduler")
    if any(key.startswith("conditioner.embedders.") for key in state_dict):
        raise ValueError("single-file checkpoint: SDXL layout (conditioner.embedders.*) is not supported")
    parts = {"unet": _split(state_dict, _UNET_PREFIX),
             "vae": {k: v for k, v in _split(state_dict, _VAE_PREFIX).items() if not k.startswith("loss.")}}
    for kind, prefix in (("unet", _UNET_PREFIX), ("vae", _VAE_PREFIX)):
        if not parts[kind]:
            raise ValueError(f"not a Stable Diffusion single-file checkpoint: no {prefix}* keys ({kind})")
    configs, state_dicts = {}, {}
    configs["unet"], state_dicts["unet"] = _convert_ldm_unet(parts["unet"])
    configs["vae"], state_dicts["vae"] = _convert_ldm_vae(parts["vae"])
    clip, openclip = _split(state_dict, _CLIP_PREFIX), _split(state_dict, _OPENCLIP_PREFIX)
    if clip:
        configs["text_encoder"], state_dicts["text_encoder"] = _convert_hf_clip(clip)
    elif openclip:
        configs["text_encoder"], state_dicts["text_encoder"] = _convert_openclip(openclip)
    else:
        raise ValueError(f"not a Stable Diffusion single-file checkpoint: no text encoder ({_CLIP_PREFIX}* or "
                         f"{_OPENCLIP_PREFIX}* keys)")
    configs["scheduler"] = dict(SD_SCHEDULER_CONFIG)
    for kind in configs:
        configs[kind] = _merge(configs[kind], config.get(kind))
    return configs, state_dicts


def _read_single_file(path: Path) -> Dict[str, np.ndarray]:
    if path.name.endswith(".safetensors"):
        return load_state_dict(path)
    obj = load_torch_object(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):  # Lightning checkpoints
        obj = obj["state_dict"]
    return to_numpy_state_dict(obj)


def _load_single_file(path: Path, dtype, config, tokenizer) -> SDPipeline:
    configs, state_dicts = convert_ldm_checkpoint(_read_single_file(path), config)
    modules = {kind: _build(kind, configs[kind], dtype) for kind in ("unet", "vae", "text_encoder")}
    _check_compatible(modules["unet"], modules["vae"], modules["text_encoder"])
    params = {kind: _fill(kind, modules[kind], state_dicts[kind], f"{kind} weights in {path.name!r}")
              for kind in modules}
    if tokenizer is not None and not isinstance(tokenizer, CLIPTokenizer):
        tokenizer = CLIPTokenizer.from_folder(tokenizer)
    scheduler = configs.pop("scheduler")
    return _assemble(modules["unet"], modules["vae"], modules["text_encoder"], params, tokenizer, scheduler, configs)


def load_sd_pipeline(folder_or_file, dtype=None, *, variant: Optional[str] = None,
                     config: Optional[Mapping[str, Mapping]] = None, tokenizer=None) -> SDPipeline:
    """Load a Stable Diffusion 1.x / 2.x pipeline (see the module docstring).

    Args:
      folder_or_file: a diffusers pipeline folder, or an original single-file checkpoint
        (``.safetensors`` read without torch; ``.ckpt`` / ``.pt`` / ``.bin`` need torch).
      dtype: computation dtype of the modules (e.g. ``jnp.bfloat16``); parameters stay float32.
      variant: weights variant of a folder, e.g. ``"fp16"`` (default: plain weights, else fp16).
      config: single file only: config overrides per component (``"unet"``, ``"vae"``,
        ``"text_encoder"``, ``"scheduler"``).
      tokenizer: single file only: a tokenizer folder or :class:`CLIPTokenizer`.

    Raises:
      ValueError: missing component folders or files, unsupported configs (naming the key),
        incompatible components (text encoder width vs. the UNet's ``cross_attention_dim``, latent
        channels), or weights that do not match the configs.
    """
    dtype = None if dtype is None else jnp.dtype(dtype)  # accepts "bfloat16" as well as jnp.bfloat16
    path = Path(folder_or_file)
    if path.is_dir():
        if config is not None or tokenizer is not None:
            raise ValueError("config / tokenizer overrides apply to single-file checkpoints only")
        return _load_folder(path, dtype, variant)
    if path.is_file():
        if variant is not None:
            raise ValueError("variant applies to diffusers folders only")
        return _load_single_file(path, dtype, config, tokenizer)
    raise ValueError(f"{str(path)!r} does not exist")

