"""Stable Diffusion text-to-image and image-to-image with any registered solver (SciRE by default).

:func:`text_to_image` and :func:`image_to_image` are functions of a loaded pipeline
(:func:`scire_jax.io.convert.sd.load_sd_pipeline`) and its parameters.  Each call runs ONE jitted
program: prompt encoding (tokenizer on the host, CLIP text encoder on the device), the solver
(:func:`scire_jax.execute` of :func:`scire_jax.plan`; one ``lax.scan`` per plan segment, so the
compile time hardly depends on the number of steps), classifier-free guidance as ONE network call per
model evaluation on the doubled batch (:class:`scire_jax.ClassifierFree`, unconditional half first, as
diffusers) and the VAE decoder.

Compilation.  The jitted program is cached per (pipeline modules, solver, guidance > 1, mesh, compute
dtype, progress on/off); ``jax.jit`` then caches per input shape (batch, height, width).  The guidance
scale, the prompts, the seed and the initial latents are arguments: changing them does not recompile.
As in diffusers, ``guidance_scale <= 1`` runs the conditional model only (no doubled batch, negative
prompts unused); any scale > 1 shares one compiled program.

Devices.  With ``mesh=`` (e.g. :func:`scire_jax.batch_mesh`) the batch (prompts, latents, images) is
split over the mesh's devices and the parameters are replicated; the text encoder, every network
evaluation (with its doubled guidance batch) and the decoder run per device under ``jax.shard_map``, so
the guidance never moves data between devices; the solver arithmetic is sharded by ``jax.jit``.  A
batch that the device count does not divide is padded (the padding is computed and dropped).  Sample
``i`` starts from ``normal(fold_in(key, i))`` (:func:`scire_jax.initial_noise`): the same key gives
the same images on any number of devices.  Place the parameters once with :func:`place_params`
(numpy parameters are copied to the devices on every call).

Precision.  ``dtype=jnp.bfloat16`` (or a pipeline loaded with ``dtype=``) runs the UNet, VAE and
text encoder in bfloat16 with float32 parameters; the solver state and arithmetic stay float32.

Time convention.  On the pipeline's discrete schedule, diffusers' integer timestep ``k`` is the
continuous time ``t = (k + 1) / N`` and the UNet receives ``1000 (t - 1/N) = k`` (N = 1000); a
solver with ``times=`` from :func:`scire_jax.core.diffusers_grid.from_diffusers_timesteps` reproduces
a diffusers scheduler's steps exactly.

Image-to-image strength.  ``strength`` s in (0, 1] starts the solver at ``t_start = s * t_max`` (t_max = 1
on SD's discrete schedule, i.e. diffusers timestep ``1000 s - 1``) from ``x = alpha(t_start) z0 +
sigma(t_start) eps``, ``z0 = scaling_factor * (vae.encode(image).mean - shift)``, and spends ALL of the
solver's ``steps`` between ``t_start`` and ``t_end`` (the NFE does not shrink with s).  diffusers'
``StableDiffusionImg2ImgPipeline`` instead keeps ``int(steps * s)`` of its ``steps`` timesteps: it starts
at ``timesteps[steps - int(steps * s)]`` (DDIM "leading", steps_offset 1, 20 steps, s = 0.8: 16 steps from
``timesteps[4] = 751``, t = 0.752) and samples the VAE posterior instead of taking its mean.  To
reproduce diffusers exactly, pass ``strength=None`` and a solver whose ``times=`` is
``from_diffusers_timesteps(timesteps[steps - int(steps * s):], ...)``; the noise level is then
``times[0]``.  At s = 1 the image still contributes ``alpha(t_max) z0`` (alpha(1) = 0.068 for SD), as in
diffusers.

Example::

    import jax, scire_jax as sj
    from scire_jax.io.convert.sd import load_sd_pipeline
    from scire_jax.apps.pipelines import text_to_image, place_params

    pipe = load_sd_pipeline("stable-diffusion-v1-5", dtype="bfloat16")
    mesh = sj.batch_mesh()                                    # all devices
    params = place_params(pipe.params, mesh)                  # once
    images = text_to_image(pipe, params, ["a photo of a cat"] * 8, key=jax.random.key(0),
                           solver=sj.SciRE(steps=20), guidance_scale=7.5, mesh=mesh)   # (8, 512, 512, 3) in [0, 1]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import numbers
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from scire_jax.core.sampling import execute, initial_noise, plan
from scire_jax.core.solvers.base import Solver
from scire_jax.core.solvers.scire import SciRE
from scire_jax.core.wrapping import ClassifierFree, wrap_model

__all__ = ["text_to_image", "image_to_image", "image_to_image_solver", "encode_images", "lower_text_to_image",
           "reporting_steps_to", "place_params", "check_pipeline", "image_multiple", "solver_steps",
           "random_sd_pipeline", "write_clip_tokenizer"]

DEFAULT_SOLVER = SciRE(steps=20)

# number of times a generation program was traced (= compiled); tests read it
_TRACE_COUNT = [0]


# -- validation ------------------------------------------------------------------------------------


def check_pipeline(pipeline) -> None:
    """``ValueError`` unless ``pipeline`` is a usable SD pipeline (compatible components, a tokenizer)."""
    for name in ("unet", "vae", "text_encoder", "tokenizer", "schedule", "prediction", "scaling_factor"):
        if not hasattr(pipeline, name):
            raise ValueError(f"pipeline={type(pipeline).__name__} is not a Stable Diffusion pipeline: no {name!r} "
                             "(load one with scire_jax.io.convert.sd.load_sd_pipeline)")
    if pipeline.tokenizer is None:
        raise ValueError("the pipeline has no tokenizer: a single-file checkpoint needs "
                         "load_sd_pipeline(path, tokenizer=<folder with vocab.json + merges.txt>)")
    unet, vae, text = pipeline.unet, pipeline.vae, pipeline.text_encoder
    if getattr(unet, "addition_embed_type", None) is not None:
        raise ValueError(f"unet: addition_embed_type={unet.addition_embed_type!r} (SDXL) is not supported: the "
                         "pipelines run Stable Diffusion 1.x / 2.x")
    if text.hidden_size != unet.cross_attention_dim[0]:
        raise ValueError(f"text encoder hidden_size={text.hidden_size} does not match the unet's "
                         f"cross_attention_dim={unet.cross_attention_dim[0]}")
    if unet.in_channels != vae.latent_channels or unet.out_channels != vae.latent_channels:
        raise ValueError(f"unet in/out channels ({unet.in_channels}, {unet.out_channels}) do not match the VAE's "
                         f"latent_channels={vae.latent_channels}")
    if pipeline.tokenizer.max_length > text.max_position_embeddings:
        raise ValueError(f"tokenizer max_length={pipeline.tokenizer.max_length} exceeds the text encoder's "
                         f"max_position_embeddings={text.max_position_embeddings}")
    if pipeline.tokenizer.vocab_size > text.vocab_size:
        raise ValueError(f"tokenizer vocabulary ({pipeline.tokenizer.vocab_size} tokens) is larger than the text "
                         f"encoder's vocab_size={text.vocab_size}")


def image_multiple(pipeline) -> int:
    """Image sizes must be multiples of this: 8 (as diffusers) and VAE factor x UNet factor (64 for SD)."""
    unet_factor = 2 ** (len(pipeline.unet.block_out_channels) - 1)
    vae_factor = pipeline.vae.downsample_factor
    return int(np.lcm(8, vae_factor * unet_factor))


def _check_params(params) -> None:
    if not isinstance(params, Mapping) or any(k not in params for k in ("unet", "vae", "text_encoder")):
        keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"params must be the pipeline's parameter dict with 'unet', 'vae' and 'text_encoder' "
                         f"entries (pipeline.params), got {keys}")


def _prompt_list(prompts, name: str) -> list:
    if isinstance(prompts, str):
        prompts = [prompts]
    try:
        prompts = list(prompts)
    except TypeError:
        raise ValueError(f"{name}={prompts!r} is not allowed: pass a string or a list of strings") from None
    if not prompts:
        raise ValueError(f"{name}=[] is not allowed: pass at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"{name} must be strings, got {bad[0]!r}")
    return prompts


def _negative_list(negative_prompts, count: int) -> list:
    if negative_prompts is None:
        return [""] * count
    if isinstance(negative_prompts, str):
        return [negative_prompts] * count
    negatives = _prompt_list(negative_prompts, "negative_prompts")
    if len(negatives) != count:
        raise ValueError(f"negative_prompts has {len(negatives)} entries but prompts has {count}: pass one negative "
                         "prompt per prompt, a single string, or None")
    return negatives


def _check_guidance(guidance_scale) -> float:
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale={guidance_scale!r} is not allowed: it must be a finite number >= 0 "
                         "(<= 1: conditional model only, as diffusers)")
    return float(guidance_scale)


def _check_size(name: str, value, multiple: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed: it must be a positive integer")
    if value % 8:
        raise ValueError(f"{name}={value} is not allowed: it must be divisible by 8 (the VAE's scale factor)")
    if value % multiple:
        raise ValueError(f"{name}={value} is not allowed: this model needs a multiple of {multiple} "
                         f"(VAE scale factor x UNet downsampling)")
    return int(value)


def _check_solver(solver) -> None:
    if not isinstance(solver, Solver):
        raise ValueError(f"solver={solver!r} is not allowed: pass a solver configuration such as sj.SciRE(steps=20) "
                         "or solver_from_spec('dpm:order=2', 20)")


def _check_mesh(mesh) -> None:
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"mesh={mesh!r} is not allowed: pass None or a jax.sharding.Mesh (e.g. sj.batch_mesh())")


def _as_key(key):
    if key is None:
        return jax.random.key(0)
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return jax.random.key(int(key))
    return key


def _resolve_dtype(dtype):
    return None if dtype is None else jnp.dtype(dtype)


def _float_array(name: str, value, shape):
    array = value if isinstance(value, jax.Array) else np.asarray(value)
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}, expected {tuple(shape)} (NHWC: batch, "
                         f"height / vae_scale_factor, width / vae_scale_factor, latent channels)")
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{name} has dtype {array.dtype}: a floating dtype is required")
    return array


def solver_steps(solver, schedule) -> int:
    """Steps of ``solver`` on ``schedule`` = per-step callbacks of one generation (for a progress bar)."""
    return plan(solver, schedule).num_steps


# -- devices ---------------------------------------------------------------------------------------


def place_params(params, mesh=None):
    """Copy ``params`` to the device (``mesh=None``) or replicate them over ``mesh``, once, before sampling."""
    if mesh is None:
        return jax.device_put(params)
    _check_mesh(mesh)
    return jax.device_put(params, NamedSharding(mesh, PartitionSpec()))


def _batch_axis(mesh):
    return None if mesh is None else mesh.axis_names[0]


def _local(fn, mesh, in_specs, out_specs):
    """``fn`` per device under ``shard_map`` (``"b"`` = split along the batch axis, ``"r"`` = replicated)."""
    if mesh is None:
        return fn
    axis = _batch_axis(mesh)

    def spec(code):
        return PartitionSpec(axis) if code == "b" else PartitionSpec()

    return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec(c) for c in in_specs),
                         out_specs=jax.tree.map(spec, out_specs), check_vma=False)


def _pad(array, multiple: int):
    count = array.shape[0]
    extra = -count % multiple
    if not extra:
        return array
    xp = jnp if isinstance(array, jax.Array) else np
    return xp.concatenate([array, xp.repeat(array[-1:], extra, axis=0)], axis=0)


# -- progress callbacks ------------------------------------------------------------------------------
# The compiled program calls one module-level hook; the user's callback of the current call is looked up
# at run time, so a new callback does not recompile.  Unordered host callbacks work on several devices
# (ordered ones do not); the solver's steps are sequential, so they still arrive in order.

_CALLBACK_LOCK = threading.Lock()
_CURRENT_CALLBACK: list = [None]


def _dispatch(step, t, _sample):
    callback = _CURRENT_CALLBACK[0]
    if callback is not None:
        callback(step, t)


def _progress_hook(x, t, step):
    # one element of the new state as an operand: the report waits for the network call the update needs
    # (step and t alone are plan constants, and XLA may run the callback long before).  The start-up step
    # does not change the state, so it reports at once.
    jax.debug.callback(_dispatch, step, t, x[(0,) * x.ndim])
    return x


@contextlib.contextmanager
def reporting_steps_to(callback: Callable):
    """Inside, programs compiled with a callback report their steps to ``callback(step, t)``.

    :func:`text_to_image` and :func:`image_to_image` do this themselves; use it around a program from
    :func:`lower_text_to_image` (``callback=`` given there) and block on its result inside.  One
    generation at a time reports (a lock).
    """
    with _CALLBACK_LOCK:
        _CURRENT_CALLBACK[0] = callback
        try:
            yield
        finally:
            _CURRENT_CALLBACK[0] = None


def _run(program, args, callback):
    if callback is None:
        return program(*args)
    with reporting_steps_to(callback):
        return jax.block_until_ready(program(*args))


# -- the programs ----------------------------------------------------------------------------------


class _Scale:
    """A traced guidance scale inside :class:`ClassifierFree`.

    ``ClassifierFree`` compares ``scale == 1.0`` in Python to skip the doubled batch; this program is
    compiled for guidance > 1, so the comparison is False and ``scale * d`` multiplies by the traced value.
    """

    __slots__ = ("value",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return False

    def __mul__(self, other):
        return self.value * other

    __rmul__ = __mul__


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about a generation program (the cache key)."""

    unet: Any
    vae: Any
    text_encoder: Any
    schedule: Any
    prediction: str
    scaling_factor: float
    shift_factor: Optional[float]
    solver: Solver
    guided: bool
    mesh: Any
    progress: bool
    mode: str  # "txt2img" | "img2img"


def _spec(pipeline, solver, guided, mesh, dtype, progress, mode) -> _Spec:
    unet, vae, text = pipeline.unet, pipeline.vae, pipeline.text_encoder
    if dtype is not None:
        unet, vae, text = unet.clone(dtype=dtype), vae.clone(dtype=dtype), text.clone(dtype=dtype)
    return _Spec(unet, vae, text, pipeline.schedule, pipeline.prediction, float(pipeline.scaling_factor),
                 getattr(vae, "shift_factor", None), solver, bool(guided), mesh, bool(progress), mode)


def _encode_text(spec: _Spec):
    from scire_jax.models.clip_text import CLIPTextModel

    def encode(text_params, ids, negative_ids):
        if spec.guided:  # one call on [negative; positive], split after
            both = spec.text_encoder.apply(text_params, jnp.concatenate([negative_ids, ids], axis=0),
                                           method=CLIPTextModel.encode)
            negative, positive = jnp.split(both.astype(jnp.float32), 2, axis=0)
            return positive, negative
        positive = spec.text_encoder.apply(text_params, ids, method=CLIPTextModel.encode).astype(jnp.float32)
        return positive, positive  # the second output is unused

    return _local(encode, spec.mesh, ("r", "b", "b"), ("b", "b"))


class _GuidedNoise:
    """``noise_fn`` of the solver: the wrapped UNet with classifier-free guidance, per device."""

    def __init__(self, spec: _Spec, context, negative_context, scale):
        self.spec = spec
        self.context = context
        self.negative_context = negative_context
        self.scale = scale

    def _local_noise(self, unet_params, x, t, context, negative_context, scale, alpha, sigma):
        spec = self.spec

        def apply(params, latents, t_input, ctx):
            return spec.unet.apply(params, latents, t_input, ctx)

        if spec.guided:
            guidance = ClassifierFree(_Scale(scale), context, negative_context)
        else:
            guidance = ClassifierFree(1.0, context)
        wrapped = wrap_model(apply, spec.schedule, spec.prediction, guidance=guidance,
                             network_dtype=spec.unet.dtype)
        return wrapped.noise(unet_params, x, t, alpha, sigma)

    def noise(self, unet_params, x, t, alpha, sigma):
        """The guided noise prediction; ``t``: ``(batch,)``, ``alpha``, ``sigma``: scalars (from the plan)."""
        local = _local(self._local_noise, self.spec.mesh, ("r", "b", "b", "b", "b", "r", "r", "r"), "b")
        return local(unet_params, x, t, self.context, self.negative_context, self.scale, alpha, sigma)


def _decode(spec: _Spec):
    from scire_jax.models.sd_vae import AutoencoderKL

    def decode(vae_params, latents):
        z = latents / spec.scaling_factor
        if spec.shift_factor is not None:
            z = z + spec.shift_factor
        images = spec.vae.apply(vae_params, z, method=AutoencoderKL.decode).astype(jnp.float32)
        return jnp.clip(images / 2.0 + 0.5, 0.0, 1.0)

    return _local(decode, spec.mesh, ("r", "b"), "b")


def _encode_images(spec: _Spec):
    from scire_jax.models.sd_vae import AutoencoderKL

    def encode(vae_params, images):
        posterior = spec.vae.apply(vae_params, images * 2.0 - 1.0, method=AutoencoderKL.encode)
        mean = posterior.mean.astype(jnp.float32)
        if spec.shift_factor is not None:
            mean = mean - spec.shift_factor
        return mean * spec.scaling_factor

    return _local(encode, spec.mesh, ("r", "b"), "b")


def _solve(spec: _Spec, params, x_start, context, negative_context, scale):
    solver = spec.solver
    noise_fn = _GuidedNoise(spec, context, negative_context, scale)
    correct: Any = solver.correct_xt
    if spec.progress:
        if correct is None:
            correct = _progress_hook
        else:
            user = correct

            def correct_then_report(x, t, step):
                return _progress_hook(user(x, t, step), t, step)

            correct = correct_then_report
    return execute(plan(solver, spec.schedule), noise_fn, params["unet"], x_start,
                   thresholding=solver.thresholding, correct_xt=correct)


def _shardings(spec: _Spec, codes: str):
    if spec.mesh is None:
        return None
    batch = NamedSharding(spec.mesh, PartitionSpec(_batch_axis(spec.mesh)))
    replicated = NamedSharding(spec.mesh, PartitionSpec())
    return tuple(batch if c == "b" else replicated for c in codes)


@functools.lru_cache(maxsize=32)
def _program(spec: _Spec):
    """The jitted generation program of ``spec`` (jax.jit caches it per input shape)."""
    encode_text, decode = _encode_text(spec), _decode(spec)

    if spec.mode == "txt2img":
        def generate(params, ids, negative_ids, latents, scale):  # pyright: ignore[reportRedeclaration]
            _TRACE_COUNT[0] += 1
            context, negative_context = encode_text(params["text_encoder"], ids, negative_ids)
            x0 = _solve(spec, params, latents.astype(jnp.float32), context, negative_context, scale)
            return decode(params["vae"], x0)

        codes = "rbbbr"
    else:
        encode_images = _encode_images(spec)
        t_start = plan(spec.solver, spec.schedule).t_start
        alpha = float(spec.schedule.alpha(np.float64(t_start)))
        sigma = float(spec.schedule.sigma(np.float64(t_start)))

        def generate(params, ids, negative_ids, images, noise, scale):
            _TRACE_COUNT[0] += 1
            context, negative_context = encode_text(params["text_encoder"], ids, negative_ids)
            z0 = encode_images(params["vae"], images.astype(jnp.float32))
            x_start = alpha * z0 + sigma * noise.astype(jnp.float32)
            x0 = _solve(spec, params, x_start, context, negative_context, scale)
            return decode(params["vae"], x0)

        codes = "rbbbbr"
    return _Program(generate, _shardings(spec, codes))


class _Program:
    """A jitted program; with a mesh, the arguments are first placed (re-sharded) as it expects."""

    def __init__(self, fn, shardings):
        self.shardings = shardings
        if shardings is None:
            self.jitted = jax.jit(fn)
        else:
            self.jitted = jax.jit(fn, in_shardings=shardings, out_shardings=shardings[1])

    def _place(self, args):
        if self.shardings is None:
            return args
        return tuple(jax.device_put(a, s) for a, s in zip(args, self.shardings))

    def __call__(self, *args):
        return self.jitted(*self._place(args))

    def lower(self, *args):
        return self.jitted.lower(*self._place(args))


@functools.lru_cache(maxsize=32)
def _noise_program(mesh):
    def draw(key, shape):
        return initial_noise(key, shape, jnp.float32)

    if mesh is None:
        return jax.jit(draw, static_argnums=1)
    batch = NamedSharding(mesh, PartitionSpec(_batch_axis(mesh)))
    return jax.jit(draw, static_argnums=1, out_shardings=batch)


# -- argument preparation (all validation happens here, before anything is traced) --------------------


def _tokens(pipeline, prompts, negatives, guided, pad_to):
    ids = pipeline.tokenizer(prompts)
    negative_ids = pipeline.tokenizer(negatives) if guided else ids
    return _pad(ids, pad_to), _pad(negative_ids, pad_to)


def _latent_shape(pipeline, batch, height, width):
    factor = pipeline.vae.downsample_factor
    return (batch, height // factor, width // factor, pipeline.vae.latent_channels)


def _common(pipeline, params, prompts, negative_prompts, solver, guidance_scale, mesh, dtype):
    check_pipeline(pipeline)
    _check_params(params)
    prompts = _prompt_list(prompts, "prompts")
    negatives = _negative_list(negative_prompts, len(prompts))
    scale = _check_guidance(guidance_scale)
    _check_solver(solver)
    _check_mesh(mesh)
    return prompts, negatives, scale, _resolve_dtype(dtype)


def _prepare_txt2img(pipeline, params, prompts, negative_prompts, key, solver, guidance_scale, height, width, mesh,
                     latents, callback, dtype):
    prompts, negatives, scale, dtype = _common(pipeline, params, prompts, negative_prompts, solver, guidance_scale,
                                               mesh, dtype)
    batch = len(prompts)
    factor = pipeline.vae.downsample_factor
    if latents is not None and (height is None or width is None):
        shape = np.shape(latents)
        if len(shape) == 4:
            height = shape[1] * factor if height is None else height
            width = shape[2] * factor if width is None else width
    multiple = image_multiple(pipeline)
    height = _check_size("height", pipeline.image_size if height is None else height, multiple)
    width = _check_size("width", pipeline.image_size if width is None else width, multiple)
    shape = _latent_shape(pipeline, batch, height, width)
    if latents is not None:
        latents = _float_array("latents", latents, shape)
    plan(solver, pipeline.schedule)  # validates the time range on this schedule
    guided = scale > 1.0
    devices = 1 if mesh is None else mesh.size
    padded = batch + (-batch % devices)
    if latents is None:
        latents = _noise_program(mesh)(_as_key(key), (padded,) + shape[1:])
    else:
        latents = _pad(latents, devices)
    ids, negative_ids = _tokens(pipeline, prompts, negatives, guided, devices)
    spec = _spec(pipeline, solver, guided, mesh, dtype, callback is not None, "txt2img")
    args = (params, ids, negative_ids, latents, np.float32(scale))
    return _program(spec), args, batch


def text_to_image(pipeline, params, prompts: Union[str, Sequence[str]],
                  negative_prompts: Union[None, str, Sequence[str]] = None, *, key=None,
                  solver: Solver = DEFAULT_SOLVER, guidance_scale: float = 7.5, height: Optional[int] = None,
                  width: Optional[int] = None, mesh=None, latents=None, callback: Optional[Callable] = None,
                  dtype=None):
    """Generate one image per prompt with ``solver`` and classifier-free guidance.

    Args:
      pipeline: an :class:`scire_jax.io.convert.sd.SDPipeline` (modules, tokenizer, schedule, prediction).
      params: its parameters (``pipeline.params``, or a copy from :func:`place_params`).
      prompts: a prompt or a list of prompts (the batch).
      negative_prompts: ``None`` (``""``: the unconditional prompt), one string for all, or one per prompt.
      key: PRNG key (or an int seed; default 0) of the initial latents; sample ``i`` uses ``fold_in(key, i)``.
      solver: any solver configuration (:func:`scire_jax.core.solvers.registry.solver_from_spec`); explicit
        ``times=`` / ``t_start`` are honoured (e.g. diffusers' timesteps through
        :mod:`scire_jax.core.diffusers_grid`).
      guidance_scale: classifier-free guidance scale ``s >= 0``: ``eps_u + s (eps_c - eps_u)``; ``s <= 1``
        runs the conditional model only (as diffusers).
      height, width: image size in pixels (default ``pipeline.image_size``, or that of ``latents``);
        multiples of 8 and of :func:`image_multiple` (64 for SD).
      mesh: optional ``jax.sharding.Mesh``: the batch is split over its devices (see the module docstring).
      latents: optional initial latents ``x_T``, NHWC ``(batch, height / 8, width / 8, 4)``, standard normal
        (diffusers' ``latents`` transposed to NHWC; its ``init_noise_sigma`` is 1 for DDIM / DPM-Solver).
      callback: optional host function ``callback(step, t)`` called once per solver step (progress bars).
      dtype: computation dtype of the networks (e.g. ``jnp.bfloat16``; default: the pipeline's).

    Returns:
      ``jax.Array`` float32 images ``(batch, height, width, 3)`` in ``[0, 1]``.

    Raises:
      ValueError: before anything is compiled, for an empty prompt list, mismatched negative prompts, a
        negative guidance scale, image sizes that are not multiples of 8 (or of the model's multiple),
        latents of the wrong shape, a solver whose time range does not fit the schedule, or incompatible
        pipeline components.
    """
    program, args, batch = _prepare_txt2img(pipeline, params, prompts, negative_prompts, key, solver, guidance_scale,
                                            height, width, mesh, latents, callback, dtype)
    return _run(program, args, callback)[:batch]


def lower_text_to_image(pipeline, params, prompts, negative_prompts=None, *, key=None, solver: Solver = DEFAULT_SOLVER,
                        guidance_scale: float = 7.5, height=None, width=None, mesh=None, latents=None,
                        callback=None, dtype=None):
    """``(lowered, args)``: the jitted program of :func:`text_to_image` lowered for these arguments.

    ``lowered.compile()`` compiles it (e.g. to time the compilation); ``compiled(*args)[:len(prompts)]``
    is then what :func:`text_to_image` returns.  With ``callback=`` the program reports its steps to the
    callback of the enclosing :func:`reporting_steps_to` (none outside it).
    """
    program, args, _ = _prepare_txt2img(pipeline, params, prompts, negative_prompts, key, solver, guidance_scale,
                                        height, width, mesh, latents, callback, dtype)
    return program.lower(*args), program._place(args)


def _images_array(init_images, batch):
    images = init_images if isinstance(init_images, jax.Array) else np.asarray(init_images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"init_images has shape {tuple(images.shape)}: expected (H, W, 3) or (batch, H, W, 3) RGB")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"init_images has dtype {images.dtype}: expected uint8 (0..255) or float in [0, 1]")
    if images.shape[0] == 1 and batch > 1:
        images = (jnp if isinstance(images, jax.Array) else np).repeat(images, batch, axis=0)
    if images.shape[0] != batch:
        raise ValueError(f"init_images has {images.shape[0]} images but prompts has {batch}: pass one image, or one "
                         "per prompt")
    return images


@functools.lru_cache(maxsize=16)
def _encode_program(spec: _Spec):
    return _Program(_encode_images(spec), _shardings(spec, "rb"))


def encode_images(pipeline, params, images, *, mesh=None, dtype=None):
    """Latents ``scaling_factor * (vae.encode(2 x - 1).mean - shift)`` of RGB images in ``[0, 1]`` (or uint8).

    ``images``: ``(H, W, 3)`` or ``(batch, H, W, 3)``; returns NHWC ``(batch, H / 8, W / 8, 4)`` float32
    (the starting point of :func:`image_to_image`; diffusers' ``image`` argument accepts them transposed
    to NCHW as ready-made latents).
    """
    check_pipeline(pipeline)
    _check_params(params)
    _check_mesh(mesh)
    images = _images_array(images, np.shape(images)[0] if np.ndim(images) == 4 else 1)
    multiple = pipeline.vae.downsample_factor
    _check_size("height of images", int(images.shape[1]), multiple)
    _check_size("width of images", int(images.shape[2]), multiple)
    spec = _spec(pipeline, DEFAULT_SOLVER, False, mesh, _resolve_dtype(dtype), False, "encode")
    batch = images.shape[0]
    devices = 1 if mesh is None else mesh.size
    return _encode_program(spec)(params["vae"], _pad(images, devices))[:batch]


def image_to_image_solver(pipeline, solver, strength):
    """The solver :func:`image_to_image` runs: ``solver`` from ``t_start = strength * t_max`` (or its own
    ``times=`` when ``strength`` is None); ``ValueError`` for a strength outside (0, 1] or one that leaves
    nothing to integrate."""
    schedule = pipeline.schedule
    if strength is None:
        if solver.times is None:
            raise ValueError("strength=None is only allowed with a solver with explicit times= (the noise level is "
                             "times[0]); pass a strength in (0, 1]")
        return solver
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength={strength!r} is not allowed: it must be in (0, 1] (1: start from t_max)")
    t_start = float(strength) * schedule.t_max
    if solver.times is not None:
        if not math.isclose(solver.times[0], t_start, rel_tol=1e-12):
            raise ValueError(f"strength={strength!r} (t_start={t_start!r}) contradicts the solver's times "
                             f"(which start at {solver.times[0]!r}): pass strength=None to use the solver's times")
        return solver
    if solver.t_start is not None:
        raise ValueError(f"the solver has t_start={solver.t_start!r}: image_to_image sets it from strength; pass a "
                         "solver without t_start")
    t_end = schedule.t_min if solver.t_end is None else float(solver.t_end)
    if t_start <= t_end:
        raise ValueError(f"strength={strength!r} is not allowed: t_start = strength x t_max = {t_start!r} must exceed "
                         f"the solver's end time {t_end!r}")
    return dataclasses.replace(solver, t_start=t_start)


def image_to_image(pipeline, params, prompts: Union[str, Sequence[str]], init_images, strength: Optional[float] = 0.8,
                   negative_prompts: Union[None, str, Sequence[str]] = None, *, key=None,
                   solver: Solver = DEFAULT_SOLVER, guidance_scale: float = 7.5, mesh=None, noise=None,
                   callback: Optional[Callable] = None, dtype=None):
    """Re-generate ``init_images`` from noise level ``strength`` (SDEdit), guided by ``prompts``.

    The images are encoded with the VAE (posterior mean x ``scaling_factor``), noised to
    ``t_start = strength * t_max`` with ``noise`` and solved to ``t_end`` with all of ``solver``'s steps;
    see the module docstring for the exact mapping against diffusers' ``int(steps * strength)`` timesteps.

    Args:
      init_images: ``(H, W, 3)`` or ``(batch, H, W, 3)`` RGB, float in ``[0, 1]`` or uint8; one image is
        used for every prompt.  ``H``, ``W``: multiples of 8 and of :func:`image_multiple`.
      strength: in ``(0, 1]``; ``None`` with a solver with explicit ``times=`` (noise level ``times[0]``).
      noise: optional ``eps`` NHWC ``(batch, H / 8, W / 8, 4)`` (default: ``normal(fold_in(key, i))``).
      Other arguments: as :func:`text_to_image`.

    Returns:
      ``jax.Array`` float32 images ``(batch, H, W, 3)`` in ``[0, 1]``.
    """
    prompts, negatives, scale, dtype = _common(pipeline, params, prompts, negative_prompts, solver, guidance_scale,
                                               mesh, dtype)
    batch = len(prompts)
    images = _images_array(init_images, batch)
    multiple = image_multiple(pipeline)
    height = _check_size("height of init_images", int(images.shape[1]), multiple)
    width = _check_size("width of init_images", int(images.shape[2]), multiple)
    solver = image_to_image_solver(pipeline, solver, strength)
    plan(solver, pipeline.schedule)
    shape = _latent_shape(pipeline, batch, height, width)
    if noise is not None:
        noise = _float_array("noise", noise, shape)
    guided = scale > 1.0
    devices = 1 if mesh is None else mesh.size
    padded = batch + (-batch % devices)
    if noise is None:
        noise = _noise_program(mesh)(_as_key(key), (padded,) + shape[1:])
    else:
        noise = _pad(noise, devices)
    ids, negative_ids = _tokens(pipeline, prompts, negatives, guided, devices)
    spec = _spec(pipeline, solver, guided, mesh, dtype, callback is not None, "img2img")
    args = (params, ids, negative_ids, _pad(images, devices), noise, np.float32(scale))
    return _run(_program(spec), args, callback)[:batch]


# -- random pipelines (smoke runs, benchmarks; no torch, no download) ---------------------------------

_TOKENIZER_MERGES = [("c", "a"), ("ca", "t</w>"), ("p", "h"), ("ph", "o"), ("t", "o</w>"), ("pho", "to</w>"),
                     ("o", "f</w>")]


def _byte_alphabet():
    """GPT-2 / CLIP byte -> unicode alphabet (printable bytes map to themselves, the rest to 256+)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def write_clip_tokenizer(folder, max_length: int = 77, pad_token: str = "<|endoftext|>") -> int:
    """Write a tiny CLIP BPE tokenizer (byte alphabet + a few merges; ``vocab.json`` + ``merges.txt``).

    Readable by :meth:`scire_jax.io.convert.sd.CLIPTokenizer.from_folder` and by transformers'
    ``CLIPTokenizer``.  Returns its vocabulary size.  For smoke runs and tests (no download).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in _TOKENIZER_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in _TOKENIZER_MERGES) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": int(max_length), "tokenizer_class": "CLIPTokenizer"}))
    return len(tokens)


def _random_params(abstract, seed: int, std: float):
    """Normal(0, std) leaves; norm scales 1 + Normal(0, std).  Built leaf by leaf on the host (float32)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        value = rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(std)
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            value += np.float32(1.0)
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


def random_sd_pipeline(unet_config: Mapping, vae_config: Mapping, text_encoder_config: Mapping,
                       scheduler_config: Optional[Mapping] = None, *, seed: int = 0, std: float = 0.02, dtype=None,
                       max_length: Optional[int] = None):
    """An :class:`~scire_jax.io.convert.sd.SDPipeline` with random weights from diffusers-style configs.

    Parameter shapes come from ``jax.eval_shape`` of each module's ``init`` (nothing is traced at full
    size); values are ``Normal(0, std)`` (norm scales ``1 + Normal(0, std)``), float32 numpy.  The
    tokenizer is the tiny one of :func:`write_clip_tokenizer` (ids < 530).  For smoke runs and benchmarks:
    the images are meaningless.

    Args:
      unet_config, vae_config, text_encoder_config: diffusers / transformers config dicts.
      scheduler_config: diffusers scheduler config (default: Stable Diffusion's scaled_linear, epsilon).
      seed, std: the random values.
      dtype: computation dtype of the modules.
      max_length: prompt length in tokens (default: the text encoder's ``max_position_embeddings``).
    """
    from scire_jax.io.convert.scheduler import schedule_from_scheduler_config
    from scire_jax.io.convert.sd import SD_SCHEDULER_CONFIG, CLIPTokenizer, SDPipeline
    from scire_jax.models.clip_text import CLIPTextModel
    from scire_jax.models.sd_unet import UNet2DConditionModel
    from scire_jax.models.sd_vae import AutoencoderKL

    dtype = _resolve_dtype(dtype)
    unet = UNet2DConditionModel.from_config(unet_config, dtype=dtype)
    vae = AutoencoderKL.from_config(vae_config, dtype=dtype)
    text = CLIPTextModel.from_config(text_encoder_config, dtype=dtype)
    length = text.max_position_embeddings if max_length is None else int(max_length)
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(folder, length)
        tokenizer = CLIPTokenizer.from_folder(folder)
    params = {name: {"params": _random_params(module.abstract_params(), [int(seed), index], std)}
              for index, (name, module) in enumerate((("unet", unet), ("vae", vae), ("text_encoder", text)))}
    scheduler = dict(SD_SCHEDULER_CONFIG if scheduler_config is None else scheduler_config)
    schedule, prediction = schedule_from_scheduler_config(scheduler)
    pipeline = SDPipeline(unet=unet, vae=vae, text_encoder=text, params=params, tokenizer=tokenizer,
                          schedule=schedule, prediction=prediction, scaling_factor=vae.scaling_factor,
                          latent_channels=vae.latent_channels, sample_size=unet.sample_size or 64,
                          vae_scale_factor=vae.downsample_factor,
                          configs={"unet": dict(unet_config), "vae": dict(vae_config),
                                   "text_encoder": dict(text_encoder_config), "scheduler": scheduler})
    check_pipeline(pipeline)
    return pipeline

