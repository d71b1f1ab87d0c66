"""Argument types shared by the ``scire-jax`` subcommands: each rejects a bad value with one line
naming the flag, the value and what is allowed."""

from __future__ import annotations

import argparse

from scire_jax.core.sampling import MAX_SEED

__all__ = ["positive_int", "seed"]


def positive_int(name: str):
    """An ``argparse`` type for ``--NAME``: an integer >= 1."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name}={text!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"--{name}={value} is not allowed: it must be >= 1")
        return value

    return parse


def seed(text):
    """An ``argparse`` type for ``--seed``: an integer in ``0 .. 2**64 - 1`` (see :func:`scire_jax.seed_key`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed={text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"--seed={value} is not allowed: it must be an integer in 0 .. 2**64 - 1 "
                                         f"({MAX_SEED})")
    return value
