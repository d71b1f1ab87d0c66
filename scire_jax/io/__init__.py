"""Checkpoint input and output: converters from PyTorch files, orbax checkpoints, atomic file
writes and :func:`load_pretrained`.  Depends on :mod:`scire_jax.core` and :mod:`scire_jax.models`."""
