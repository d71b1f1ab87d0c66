"""DDPM noise-prediction training of small image diffusion models (optax, orbax, EMA).

The model is trained exactly like DDPM (Ho et al., 2020): discrete linear betas
``linspace(beta_start, beta_end, num_train_timesteps)`` (default 1e-4..0.02, 1000 steps),
``alpha_bar_n = prod_{i<=n} (1 - beta_i)``, a uniformly drawn index ``n in {0..999}``,
``x_n = sqrt(alpha_bar_n) x_0 + sqrt(1 - alpha_bar_n) eps`` and the loss
``|| eps_theta(x_n, n) - eps ||^2``.  The network time input is the *index* ``n`` (as a float), which
matches ``schedules.discrete(betas).time_input(t) = 1000 (t - 1/1000)`` at ``t = (n + 1) / 1000``,
so a trained model plugs straight into ``scire_jax.wrap_model(apply_fn, schedule, "noise")``.

Features: optax AdamW with linear warm-up + cosine decay, global-norm clipping, an EMA of the
weights (``optax.incremental_update`` with a warm-up of the decay), one jit-compiled step,
determinism given ``config.seed`` (per-step RNG is ``fold_in(noise_key, step)`` and the data order
is a function of the step), resumable orbax checkpoints every ``save_every`` steps (resuming
reproduces the uninterrupted trajectory bit for bit), a ``tqdm`` progress bar
(:mod:`scire_jax.apps.progress`), a ``log.csv`` of per-step losses, and periodic PNG sample grids
of the EMA model (DDIM through :func:`scire_jax.make_sampler`).

Modules: :mod:`~scire_jax.apps.train.config` (:class:`TrainConfig`, validated; the model),
:mod:`~scire_jax.apps.train.loop` (step, loop, checkpoints, resume, extension),
:mod:`~scire_jax.apps.train.export` (a checkpoint for :func:`scire_jax.load_pretrained`) and
:mod:`~scire_jax.apps.train.cli` (``scire-jax train``).

Example (the commands that produced the shipped ``mnist`` model are in
``benchmarks/train_embedded.py``)::

    scire-jax train --out runs/mnist16 --dataset mnist --image-size 16 --steps 6000 --seed 0
"""

from scire_jax.apps.train.cli import add_train_parser, config_from_args, main, run_train
from scire_jax.apps.train.config import DATASETS, DEFAULT_UNET_CONFIG, TrainConfig, build_model, ddpm_betas
from scire_jax.apps.train.export import export
from scire_jax.apps.train.loop import (
    TrainState,
    batch_indices,
    ema_decay_at,
    ema_update,
    init_state,
    make_optimizer,
    make_preview_sampler,
    make_train_step,
    restore_run,
    train,
)

__all__ = [
    "TrainConfig",
    "TrainState",
    "DATASETS",
    "DEFAULT_UNET_CONFIG",
    "build_model",
    "ddpm_betas",
    "make_optimizer",
    "make_train_step",
    "init_state",
    "batch_indices",
    "ema_decay_at",
    "ema_update",
    "make_preview_sampler",
    "train",
    "restore_run",
    "export",
    "add_train_parser",
    "config_from_args",
    "run_train",
    "main",
]
