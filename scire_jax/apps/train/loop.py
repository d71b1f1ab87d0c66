"""The training loop: optimiser, one jit-compiled step, EMA, checkpoints, resume and extension."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scire_jax.apps.train.config import TrainConfig, build_model, ddpm_betas
from scire_jax.io.files import atomic_write_text

__all__ = ["TrainState", "make_optimizer", "batch_indices", "ema_decay_at", "ema_update", "make_train_step",
           "init_state", "make_preview_sampler", "train", "restore_run"]


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
# Training pieces
# ---------------------------------------------------------------------------------------------
def make_optimizer(config: TrainConfig):
    """``(optimizer, learning_rate_fn)``: global-norm clipping, then AdamW with linear warm-up and cosine decay."""
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


def ema_decay_at(step, ema_decay: float):
    """The EMA decay after optimiser step ``step`` (0-based): ``min(ema_decay, (1 + step) / (10 + step))``,
    a warm-up that lets the average forget the random initialisation quickly."""
    step = jnp.asarray(step).astype(jnp.float32)
    return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, step, ema_decay: float):
    """``decay * ema + (1 - decay) * params`` with ``decay = ema_decay_at(step)`` (``optax.incremental_update``)."""
    return optax.incremental_update(params, ema_params, step_size=1.0 - ema_decay_at(step, ema_decay))


def make_train_step(model, optimizer, config: TrainConfig):
    """``step_fn(state, data, indices, noise_key) -> (state, metrics)``, jit-compiled.

    ``state`` is a dict ``{step, params, ema_params, opt_state}``; the step's RNG is
    ``fold_in(noise_key, state['step'])``.  The optimizer is rebuilt from ``config``
    (:func:`make_optimizer`), so compilations are shared between calls with equal configs.
    """
    del optimizer  # a function of the config
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
        ema = ema_update(state["ema_params"], params, step, config.ema_decay)
        new_state = {"step": step + 1, "params": params, "ema_params": ema, "opt_state": opt_state}
        return new_state, {"loss": loss, "grad_norm": _tree_norm(grads)}

    return jax.jit(step_fn, donate_argnums=(0,))


def _tree_norm(tree):
    norm = getattr(getattr(optax, "tree", None), "norm", None)  # optax >= 0.2.4; global_norm is deprecated
    return norm(tree) if norm is not None else optax.global_norm(tree)


@functools.lru_cache(maxsize=8)
def _jit_init(model):
    return jax.jit(model.init)


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


def make_preview_sampler(model, config: TrainConfig, sample_shape):
    """``sample(params, key) -> (num_samples, *sample_shape)``: jit-compiled DDIM of the model under
    training (``sj.DDIM(steps=config.sample_steps)`` through :func:`scire_jax.make_sampler`)."""
    sample_fn = _cached_preview_sampler(model, config.num_train_timesteps, config.beta_start, config.beta_end,
                                        config.sample_steps)
    shape = (config.num_samples,) + tuple(sample_shape)
    return lambda params, key: sample_fn(params, key, shape)


@functools.lru_cache(maxsize=8)
def _cached_preview_sampler(model, num_train_timesteps: int, beta_start: float, beta_end: float, steps: int):
    # keyed on what the sampler depends on: resumed, extended or repeated runs reuse one compilation
    from scire_jax.core import schedules
    from scire_jax.core.sampling import make_sampler
    from scire_jax.core.solvers import DDIM
    from scire_jax.core.wrapping import wrap_model

    betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)  # = ddpm_betas(config)
    schedule = schedules.discrete(betas=betas)
    noise_fn = wrap_model(lambda params, x, t: model.apply({"params": params}, x, t), schedule, prediction="noise")
    return jax.jit(make_sampler(DDIM(steps=steps), schedule, noise_fn), static_argnums=2)


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------
def _read_log(path: str):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        lines = handle.read().splitlines()
    return [line.split(",") for line in lines[1:] if line]


def _write_log(path: str, rows):
    atomic_write_text(path, "step,loss,grad_norm,lr\n" + "".join(",".join(row) + "\n" for row in rows))


def _checkpoint_manager(out_dir: str, keep: int = 2):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, "checkpoints")), options=options)


def _save(manager, state, step):
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()


def _check_resume(out_dir: str, config: TrainConfig, latest: int, extend: bool) -> None:
    """Compare ``config`` with the run's ``config.json``; record an extension in ``stages.json``."""
    with open(os.path.join(out_dir, "config.json")) as handle:
        saved = json.load(handle)
    current = config.to_dict()
    if saved == current:
        return
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if extend and diff == ["steps"] and config.steps > latest:
        stages_path = os.path.join(out_dir, "stages.json")
        stages = []
        if os.path.exists(stages_path):
            with open(stages_path) as handle:
                stages = json.load(handle)
        stages.append({"resumed_at_step": int(latest), "previous_steps": saved["steps"], "steps": config.steps})
        atomic_write_text(stages_path, json.dumps(stages, indent=2))
    elif extend:
        raise ValueError(f"extend=True allows only a larger 'steps' (> the checkpointed step {latest}); "
                         f"the config differs from the run in {out_dir} in fields {diff}")
    else:
        raise ValueError(f"config differs from the checkpointed run in {out_dir} (fields {diff}); "
                         "use resume=False, extend=True (a larger 'steps' only) or another out_dir")


def train(
    config: TrainConfig,
    out_dir: str,
    resume: bool = True,
    stop_at: Optional[int] = None,
    max_wall_s: Optional[float] = None,
    verbose: bool = True,
    extend: bool = False,
) -> TrainState:
    """Train (or resume training) a DDPM noise-prediction model; see :mod:`scire_jax.apps.train`.

    Args:
      config: the run's :class:`TrainConfig`.
      out_dir: run folder: ``config.json``, ``log.csv``, ``checkpoints/``, ``samples/*.png``.
      resume: continue from the latest checkpoint in ``out_dir`` when there is one (its
        ``config.json`` must match ``config``); ``False`` starts over (old checkpoints are removed).
      stop_at: stop (after saving a checkpoint) once this step is reached, before ``config.steps``.
        Used to interrupt runs; the learning-rate schedule still uses ``config.steps``.
      max_wall_s: also stop, with a checkpoint, after this many seconds.
      verbose: show the progress bar (step, loss, learning rate) on stderr when it is a terminal
        (or when forced, :mod:`scire_jax.apps.progress`); ``log.csv`` records every step either way.
      extend: allow resuming a run whose ``config.json`` differs from ``config`` only in a larger
        ``steps``: a second training stage.  The learning rate follows the new schedule from the
        resumed step on (a warm restart of the cosine decay); each extension is recorded in
        ``stages.json`` of the run folder (the step it resumed from and both ``steps``).

    Returns:
      :class:`TrainState` at the step where training stopped.
    """
    from scire_jax.apps import data as data_lib
    from scire_jax.apps.images import image_grid, write_png
    from scire_jax.apps.progress import progress

    # the data first: a missing dataset extra must fail before the run folder exists
    images, _ = data_lib.load(config.dataset, config.image_size)
    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, "config.json")
    log_path = os.path.join(out_dir, "log.csv")
    manager = _checkpoint_manager(out_dir)
    latest = manager.latest_step() if resume else None
    if latest is not None and os.path.exists(config_path):
        _check_resume(out_dir, config, latest, extend)
    if not resume:
        for step in manager.all_steps():
            manager.delete(step)
        latest = None
    atomic_write_text(config_path, json.dumps(config.to_dict(), indent=2))

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

    step_fn = make_train_step(model, optimizer, config)
    noise_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    preview = make_preview_sampler(model, config, images.shape[1:]) if config.sample_every else None
    end = config.steps if stop_at is None else min(config.steps, int(stop_at))
    bar = progress(config.steps, "train", "step", None if verbose else True, initial=start)
    pending = []
    t_start = time.perf_counter()

    def flush():
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        with open(log_path, "a") as handle:
            for (s, _), m in zip(pending, fetched):
                row = [str(s), repr(float(m["loss"])), repr(float(m["grad_norm"])), repr(float(np.asarray(lr_fn(s))))]
                rows.append(row)
                handle.write(",".join(row) + "\n")
        last_step, last = pending[-1][0], fetched[-1]
        pending.clear()
        bar.update(last_step + 1 - bar.n)
        bar.set_postfix(loss=f"{float(last['loss']):.4f}", lr=f"{float(np.asarray(lr_fn(last_step))):.2e}")

    step = start
    try:
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
            if preview is not None and (step % config.sample_every == 0 or step == config.steps):
                os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
                grid = image_grid(np.clip(jax.device_get(preview(state["ema_params"], sample_key)), -1.0, 1.0),
                                  scale=2, pad=1)
                write_png(os.path.join(out_dir, "samples", f"step_{step:07d}.png"), grid)
            if max_wall_s is not None and time.perf_counter() - t_start > max_wall_s:
                break
        flush()
        if manager.latest_step() != step:
            _save(manager, state, step)
    finally:
        bar.close()
    losses = np.array([float(row[1]) for row in rows], np.float64)
    return TrainState(step=step, params=state["params"], ema_params=state["ema_params"], opt_state=state["opt_state"],
                      losses=losses, config=config, model=model)


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
