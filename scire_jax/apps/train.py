"""DDPM noise-prediction training of small image diffusion models (optax, orbax, EMA).

The model is trained exactly like DDPM (Ho et al., 2020): discrete linear betas
``linspace(beta_start, beta_end, num_train_timesteps)`` (default 1e-4..0.02, 1000 steps),
``alpha_bar_n = prod_{i<=n} (1 - beta_i)``, a uniformly drawn index ``n in {0..999}``,
``x_n = sqrt(alpha_bar_n) x_0 + sqrt(1 - alpha_bar_n) eps`` and the loss
``|| eps_theta(x_n, n) - eps ||^2``.  The network time input is the *index* ``n`` (as a float), which
matches ``schedules.discrete(betas).time_input(t) = 1000 (t - 1/1000)`` at ``t = (n + 1) / 1000``,
so a trained model plugs straight into ``scire_jax.wrap_model(apply_fn, schedule, "noise")``.

Features: optax AdamW with linear warm-up + cosine decay, global-norm gradient clipping, an EMA of
the weights, one jit-compiled step, determinism given ``config.seed`` (per-step RNG is
``fold_in(noise_key, step)`` and the data order is a function of the step), resumable orbax
checkpoints every ``save_every`` steps (resuming reproduces the uninterrupted trajectory bit for
bit), a plain progress line on stderr (``tqdm`` when installed and stderr is a terminal), a
``log.csv`` of per-step losses, and periodic PNG sample grids of the EMA model.

Example (the command that produced the shipped ``mnist`` model is in
``benchmarks/train_embedded.py``)::

    scire-jax train --out runs/mnist16 --dataset mnist --image-size 16 --steps 6000 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scire_jax.io.files import atomic_write_text
from scire_jax.apps.images import image_grid, write_png

__all__ = [
    "TrainConfig",
    "TrainState",
    "DEFAULT_UNET_CONFIG",
    "build_model",
    "ddpm_betas",
    "make_train_step",
    "batch_indices",
    "train",
    "restore_run",
    "export",
    "sample_ddim",
    "save_image_grid",
    "write_png",
    "add_train_parser",
    "run_train",
    "main",
]

# A ~0.7 M parameter diffusers-style UNet2DModel config for 16x16 single-channel digits.
DEFAULT_UNET_CONFIG: Dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 32,
}


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run (saved as ``config.json`` in the run folder).

    ``model`` is a diffusers-style ``UNet2DModel`` config dict for
    :meth:`scire_jax.models.unet2d.UNet2D.from_config`, or ``{"arch": "tiny", ...}`` for the small
    built-in :class:`TinyNoiseNet` (tests).
    """

    dataset: str = "mnist"
    image_size: Optional[int] = 16
    model: Dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_UNET_CONFIG))
    # diffusion
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # optimisation
    steps: int = 6000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    end_learning_rate_factor: float = 0.05
    weight_decay: float = 1e-4
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    # bookkeeping
    save_every: int = 500
    sample_every: int = 1000
    num_samples: int = 64
    sample_steps: int = 50
    log_every: int = 50

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**values)


@dataclasses.dataclass
class TrainState:
    """Result of :func:`train`: the final step, parameters, EMA parameters, optimiser state and the
    per-step loss history of the whole run (read back from ``log.csv``, so it spans resumes)."""

    step: int
    params: Any
    ema_params: Any
    opt_state: Any
    losses: np.ndarray
    config: TrainConfig
    model: Any = None

    def apply_fn(self, params, x, t):
        """``apply_fn(params, x_nhwc, t_input)`` -> predicted noise."""
        return self.model.apply({"params": params}, x, t)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tiny_net_cls():
    import flax.linen as nn

    class TinyNoiseNet(nn.Module):
        """A small conv net ``(x_nhwc, t) -> eps`` with a sinusoidal time embedding (tests only)."""

        channels: int = 16
        out_channels: int = 1
        depth: int = 2

        @nn.compact
        def __call__(self, x, t):
            half = self.channels // 2
            freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
            angles = jnp.asarray(t, jnp.float32).reshape(-1)[:, None] * freqs[None]
            emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
            emb = nn.Dense(self.channels)(nn.silu(nn.Dense(self.channels)(emb)))
            h = nn.Conv(self.channels, (3, 3))(x)
            for _ in range(self.depth):
                r = nn.silu(nn.GroupNorm(num_groups=4)(h))
                r = nn.Conv(self.channels, (3, 3))(r) + emb[:, None, None, :]
                r = nn.Conv(self.channels, (3, 3))(nn.silu(nn.GroupNorm(num_groups=4)(r)))
                h = h + r
            return nn.Conv(self.out_channels, (3, 3))(nn.silu(h))

    return TinyNoiseNet


def build_model(model_config: Dict[str, Any]):
    """Flax module for a model config: ``UNet2D.from_config(config)`` or the tiny test net."""
    cfg = dict(model_config)
    arch = cfg.pop("arch", "unet2d")
    if arch == "tiny":
        return _tiny_net_cls()(**cfg)
    if arch != "unet2d":
        raise ValueError(f"unknown model arch {arch!r}; allowed: 'unet2d', 'tiny'")
    from scire_jax.models.unet2d import UNet2D

    return UNet2D.from_config(cfg)


# ---------------------------------------------------------------------------------------------
# Training pieces
# ---------------------------------------------------------------------------------------------
def ddpm_betas(config: TrainConfig) -> np.ndarray:
    """The float64 DDPM betas of the config (``linspace(beta_start, beta_end, N)``)."""
    return np.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=np.float64)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW with linear warm-up and cosine decay."""
    lr = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=max(1, config.warmup_steps),
        decay_steps=max(config.steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.end_learning_rate_factor,
    )
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(lr, b1=config.adam_b1, b2=config.adam_b2, weight_decay=config.weight_decay),
    ), lr


def batch_indices(step: int, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
    """Data indices of batch ``step``: epoch ``e = step // (N // B)`` is a permutation seeded by
    ``(seed, e)``; the batch is its ``step % (N // B)``-th slice (the remainder is dropped)."""
    per_epoch = num_examples // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size={batch_size} exceeds the data set size {num_examples}")
    epoch, index = divmod(int(step), per_epoch)
    order = np.random.default_rng([int(seed), 7, epoch]).permutation(num_examples)
    return order[index * batch_size:(index + 1) * batch_size].astype(np.int32)


def make_train_step(model, optimizer, config: TrainConfig):
    """``step_fn(state, data, indices, noise_key) -> (state, metrics)``, jit-compiled.

    ``state`` is a dict ``{step, params, ema_params, opt_state}``; the step's RNG is
    ``fold_in(noise_key, state['step'])``.
    """
    return _cached_train_step(model, json.dumps(config.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=8)
def _cached_train_step(model, config_json: str):
    # keyed on the (hashable) module and the config, so repeated train() calls reuse one compilation
    config = TrainConfig.from_dict(json.loads(config_json))
    optimizer, _ = make_optimizer(config)
    alpha_bar = np.cumprod(1.0 - ddpm_betas(config))
    sqrt_ab = jnp.asarray(np.sqrt(alpha_bar), jnp.float32)
    sqrt_1mab = jnp.asarray(np.sqrt(1.0 - alpha_bar), jnp.float32)
    total = config.num_train_timesteps
    ema_decay = config.ema_decay

    def loss_fn(params, x0, key):
        key_t, key_eps = jax.random.split(key)
        n = jax.random.randint(key_t, (x0.shape[0],), 0, total)
        eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
        xt = sqrt_ab[n][:, None, None, None] * x0 + sqrt_1mab[n][:, None, None, None] * eps
        pred = model.apply({"params": params}, xt, n.astype(jnp.float32))
        return jnp.mean(jnp.square(pred.astype(jnp.float32) - eps))

    def step_fn(state, data, indices, noise_key):
        step = state["step"]
        x0 = jnp.take(data, indices, axis=0)
        key = jax.random.fold_in(noise_key, step)
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], x0, key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        stepf = step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + stepf) / (10.0 + stepf))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema_params"], params)
        new_state = {"step": step + 1, "params": params, "ema_params": ema, "opt_state": opt_state}
        return new_state, {"loss": loss, "grad_norm": _tree_norm(grads)}

    return jax.jit(step_fn, donate_argnums=(0,))


@functools.lru_cache(maxsize=8)
def _jit_init(model):
    return jax.jit(model.init)


def _tree_norm(tree):
    norm = getattr(getattr(optax, "tree", None), "norm", None)  # optax >= 0.2.4; global_norm is deprecated
    return norm(tree) if norm is not None else optax.global_norm(tree)


def init_state(model, optimizer, config: TrainConfig, sample_shape):
    """Initial ``{step, params, ema_params, opt_state}`` from ``PRNGKey(seed)``."""
    init_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    x = jnp.zeros((1,) + tuple(sample_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    params = _jit_init(model)(init_key, x, t)["params"]
    return {
        "step": jnp.asarray(0, jnp.int32),
        "params": params,
        "ema_params": jax.tree_util.tree_map(jnp.copy, params),
        "opt_state": optimizer.init(params),
    }


# ---------------------------------------------------------------------------------------------
# Sampling previews and PNG output
# ---------------------------------------------------------------------------------------------
def sample_ddim(apply_fn: Callable, params, key, shape, betas: np.ndarray, steps: int = 50):
    """Deterministic DDIM (eta = 0) with uniform index spacing; used only for training previews.

    ``apply_fn(params, x, n)`` predicts the noise at DDPM index ``n`` (float, 0..N-1).
    """
    alpha_bar = np.cumprod(1.0 - np.asarray(betas, np.float64))
    total = len(alpha_bar)
    idx = np.unique(np.linspace(0, total - 1, steps).round().astype(np.int64))[::-1]
    a_now = jnp.asarray(alpha_bar[idx], jnp.float32)
    a_next = jnp.asarray(np.append(alpha_bar[idx[1:]], 1.0), jnp.float32)
    n_now = jnp.asarray(idx, jnp.float32)

    def body(x, inputs):
        n, a, an = inputs
        eps = apply_fn(params, x, jnp.full((shape[0],), n))
        x0 = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
        return jnp.sqrt(an) * x0 + jnp.sqrt(1.0 - an) * eps, None

    x = jax.random.normal(key, shape, jnp.float32)
    x, _ = jax.lax.scan(body, x, (n_now, a_now, a_next))
    return x


def save_image_grid(path: str, images, ncol: Optional[int] = None, scale: int = 2, pad: int = 1) -> None:
    """Tile NHWC images in ``[-1, 1]`` into a grid PNG (nearest-neighbour upscaled by ``scale``)."""
    write_png(path, image_grid(images, columns=ncol, scale=scale, pad=pad))


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, total: int, start: int):
        self.total, self.start = total, start
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=start, file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass
        self.t0 = time.perf_counter()
        self.last = start

    def update(self, step: int, loss: float, lr: float):
        rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        else:
            eta = (self.total - step) / max(rate, 1e-9)
            sys.stderr.write(
                f"step {step}/{self.total}  loss {loss:.5f}  lr {lr:.2e}  {rate:.2f} steps/s  eta {eta / 60:.1f} min\n"
            )
            sys.stderr.flush()
        self.last = step

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _read_log(path: str):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        lines = handle.read().splitlines()
    return [line.split(",") for line in lines[1:] if line]


def _write_log(path: str, rows):
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write("step,loss,grad_norm,lr\n")
        for row in rows:
            handle.write(",".join(row) + "\n")
    os.replace(tmp, path)


def _checkpoint_manager(out_dir: str, keep: int = 2):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, "checkpoints")), options=options)


def _save(manager, state, step):
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()


def train(
    config: TrainConfig,
    out_dir: str,
    resume: bool = True,
    stop_at: Optional[int] = None,
    max_wall_s: Optional[float] = None,
    verbose: bool = True,
    extend: bool = False,
) -> TrainState:
    """Train (or resume training) a DDPM noise-prediction model; see the module docstring.

    Args:
      config: the run's :class:`TrainConfig`.
      out_dir: run folder: ``config.json``, ``log.csv``, ``checkpoints/``, ``samples/*.png``.
      resume: continue from the latest checkpoint in ``out_dir`` when there is one (its
        ``config.json`` must match ``config``); ``False`` starts over (old checkpoints are removed).
      stop_at: stop (after saving a checkpoint) once this step is reached, before ``config.steps``.
        Used to interrupt runs; the learning-rate schedule still uses ``config.steps``.
      max_wall_s: also stop, with a checkpoint, after this many seconds.
      verbose: print the progress line.
      extend: allow resuming a run whose ``config.json`` differs from ``config`` only in a larger
        ``steps``: a second training stage.  The learning rate follows the new schedule from the
        resumed step on (a warm restart of the cosine decay); each extension is recorded in
        ``stages.json`` of the run folder (the step it resumed from and both ``steps``).

    Returns:
      :class:`TrainState` at the step where training stopped.
    """
    from scire_jax.apps import data as data_lib

    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, "config.json")
    log_path = os.path.join(out_dir, "log.csv")
    manager = _checkpoint_manager(out_dir)
    latest = manager.latest_step() if resume else None
    if latest is not None and os.path.exists(config_path):
        with open(config_path) as handle:
            saved = json.load(handle)
        if saved != config.to_dict():
            diff = sorted(k for k in set(saved) | set(config.to_dict()) if saved.get(k) != config.to_dict().get(k))
            if extend and diff == ["steps"] and config.steps > latest:
                stages_path = os.path.join(out_dir, "stages.json")
                stages = []
                if os.path.exists(stages_path):
                    with open(stages_path) as handle:
                        stages = json.load(handle)
                stages.append({"resumed_at_step": int(latest), "previous_steps": saved["steps"],
                               "steps": config.steps})
                atomic_write_text(stages_path, json.dumps(stages, indent=2))
            elif extend:
                raise ValueError(f"extend=True allows only a larger 'steps' (> the checkpointed step {latest}); "
                                 f"the config differs from the run in {out_dir} in fields {diff}")
            else:
                raise ValueError(f"config differs from the checkpointed run in {out_dir} (fields {diff}); "
                                 "use resume=False, extend=True (a larger 'steps' only) or another out_dir")
    if not resume:
        for step in manager.all_steps():
            manager.delete(step)
        latest = None
    with open(config_path, "w") as handle:
        json.dump(config.to_dict(), handle, indent=2)

    images, _ = data_lib.load(config.dataset, config.image_size)
    data = jnp.asarray(images)
    model = build_model(config.model)
    optimizer, lr_fn = make_optimizer(config)
    state = init_state(model, optimizer, config, images.shape[1:])
    rows = []
    if latest is not None:
        import orbax.checkpoint as ocp

        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
        rows = [row for row in _read_log(log_path) if int(row[0]) < latest]
    start = int(state["step"])
    _write_log(log_path, rows)

    step_fn = make_train_step(model, optimizer, config)  # the optimizer is rebuilt from config
    noise_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    betas = ddpm_betas(config)
    sampler = jax.jit(
        lambda params, key: sample_ddim(lambda p, x, t: model.apply({"params": p}, x, t), params, key,
                                        (config.num_samples,) + images.shape[1:], betas, config.sample_steps)
    )
    end = config.steps if stop_at is None else min(config.steps, int(stop_at))
    progress = _Progress(config.steps, start) if verbose else None
    pending = []
    t_start = time.perf_counter()

    def flush():
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        with open(log_path, "a") as handle:
            for (s, _), m in zip(pending, fetched):
                row = [str(s), repr(float(m["loss"])), repr(float(m["grad_norm"])), repr(float(lr_fn(s)))]
                rows.append(row)
                handle.write(",".join(row) + "\n")
        last_step, last = pending[-1][0], fetched[-1]
        pending.clear()
        if progress is not None:
            progress.update(last_step + 1, float(last["loss"]), float(lr_fn(last_step)))

    step = start
    while step < end:
        idx = batch_indices(step, len(images), config.batch_size, config.seed)
        state, metrics = step_fn(state, data, jnp.asarray(idx), noise_key)
        pending.append((step, metrics))
        step += 1
        if step % config.log_every == 0:
            flush()
        if config.save_every and step % config.save_every == 0:
            flush()
            _save(manager, state, step)
        if config.sample_every and (step % config.sample_every == 0 or step == config.steps):
            os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
            grid = sampler(state["ema_params"], sample_key)
            save_image_grid(os.path.join(out_dir, "samples", f"step_{step:07d}.png"), jax.device_get(grid))
        if max_wall_s is not None and time.perf_counter() - t_start > max_wall_s:
            break
    flush()
    if manager.latest_step() != step:
        _save(manager, state, step)
    if progress is not None:
        progress.close()
    losses = np.array([float(row[1]) for row in rows], np.float64)
    return TrainState(
        step=step,
        params=state["params"],
        ema_params=state["ema_params"],
        opt_state=state["opt_state"],
        losses=losses,
        config=config,
        model=model,
    )


def restore_run(out_dir: str, step: Optional[int] = None) -> TrainState:
    """Read-only: the :class:`TrainState` of checkpoint ``step`` (default: the latest) of a run folder."""
    import orbax.checkpoint as ocp

    from scire_jax.apps import data as data_lib

    with open(os.path.join(out_dir, "config.json")) as handle:
        config = TrainConfig.from_dict(json.load(handle))
    manager = _checkpoint_manager(out_dir)
    step = manager.latest_step() if step is None else int(step)
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {out_dir}")
    model = build_model(config.model)
    optimizer, _ = make_optimizer(config)
    images, _ = data_lib.load(config.dataset, config.image_size)
    # abstract target from shapes only (no compilation of model.init)
    abstract = jax.eval_shape(lambda: init_state(model, optimizer, config, images.shape[1:]))
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    rows = [row for row in _read_log(os.path.join(out_dir, "log.csv")) if int(row[0]) < step]
    return TrainState(step=int(state["step"]), params=state["params"], ema_params=state["ema_params"],
                      opt_state=state["opt_state"], losses=np.array([float(r[1]) for r in rows]), config=config,
                      model=model)


def export(state: TrainState, path: str, extra: Optional[Dict[str, Any]] = None, overwrite: bool = True) -> None:
    """Save the EMA parameters with the model config and the schedule for :mod:`scire_jax.io.pretrained`.

    The checkpoint config is ``{"model": <UNet2D config>, "schedule": {"type": "discrete", "betas":
    [...]}, "prediction": "noise", "time_input": "discrete", "train": <TrainConfig>}``.
    """
    from scire_jax.io import checkpoints

    model_config = dict(state.config.model)
    if model_config.get("arch", "unet2d") == "unet2d":
        model_config = build_model(model_config).to_config()  # explicit diffusers-style config
    config = {
        "model": model_config,
        "schedule": {"type": "discrete", "betas": [float(b) for b in ddpm_betas(state.config)]},
        "prediction": "noise",
        "time_input": "discrete",
        "image_shape": None,
        "train": state.config.to_dict(),
    }
    size = state.config.image_size
    if size is not None:
        config["image_shape"] = [size, size, int(state.config.model.get("in_channels", 1))]
    info = {"step": int(state.step), "final_loss": float(np.mean(state.losses[-200:])) if len(state.losses) else None}
    info.update(extra or {})
    params = jax.device_get(state.ema_params)
    checkpoints.save(path, params, config, info, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser("train", help="train a small DDPM noise-prediction model (needs mlxtend/scikit-learn)",
                                   description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(parser)
    parser.set_defaults(func=run_train)
    return parser


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--out", required=True, help="run folder (checkpoints, log.csv, samples)")
    parser.add_argument("--config", help="JSON file of TrainConfig fields (command-line flags override it)")
    parser.add_argument("--dataset", choices=("mnist", "digits"))
    parser.add_argument("--image-size", type=int, help=f"default {defaults.image_size}")
    parser.add_argument("--steps", type=int, help=f"default {defaults.steps}")
    parser.add_argument("--batch-size", type=int, help=f"default {defaults.batch_size}")
    parser.add_argument("--learning-rate", type=float, help=f"default {defaults.learning_rate}")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--ema-decay", type=float)
    parser.add_argument("--seed", type=int, help=f"default {defaults.seed}")
    parser.add_argument("--save-every", type=int)
    parser.add_argument("--sample-every", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--stop-at", type=int, help="stop (with a checkpoint) at this step")
    parser.add_argument("--max-wall-min", type=float, help="stop (with a checkpoint) after this many minutes")
    parser.add_argument("--no-resume", action="store_true", help="start over even if out/ has checkpoints")
    parser.add_argument("--extend", action="store_true",
                        help="resume a run with a larger --steps: a second stage (warm restart of the cosine decay)")
    parser.add_argument("--export", help="after training, save the EMA model for load_pretrained() here")


def config_from_args(args) -> TrainConfig:
    values: Dict[str, Any] = {}
    if getattr(args, "config", None):
        with open(args.config) as handle:
            values.update(json.load(handle))
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = value
    if values.get("dataset") == "digits" and "image_size" not in values:
        values["image_size"] = 8
    config = TrainConfig.from_dict(values)
    if "model" not in values and config.image_size is not None:
        config.model = dict(config.model, sample_size=config.image_size)
    return config


def run_train(args) -> int:
    """Run the ``train`` sub-command for parsed ``args``."""
    config = config_from_args(args)
    max_wall = None if args.max_wall_min is None else 60.0 * args.max_wall_min
    state = train(config, args.out, resume=not args.no_resume, stop_at=args.stop_at, max_wall_s=max_wall,
                  extend=bool(getattr(args, "extend", False)))
    tail = float(np.mean(state.losses[-200:])) if len(state.losses) else float("nan")
    print(f"stopped at step {state.step}; mean loss of the last 200 steps {tail:.5f}")
    if args.export:
        export(state, args.export)
        print(f"exported EMA model to {args.export}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scire-jax-train", description=__doc__.split("\n\n")[0])
    _add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
