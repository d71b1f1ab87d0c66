"""Sampling on many devices: batch sharding with ``jax.jit`` (recommended) or ``jax.pmap``.

Randomness is device-count invariant: sample ``i`` starts from ``normal(fold_in(key, i))``
(:func:`scire_jax.initial_noise`), and every solver step acts on each sample independently, so the
same key gives the same samples on 1, 2 or 8 devices and for any batch split.

Recommended (current JAX): SPMD through ``jax.jit`` with a ``NamedSharding`` of the batch axis —
one program for all devices, shardings propagate through the scan, no per-device code, and it
extends to several hosts unchanged.  ``jax.pmap`` still works and is offered for code bases built
on it, but it is the older API (one program per device, explicit device axis).

Several hosts: call ``jax.distributed.initialize()`` on every host, build the mesh over
``jax.devices()`` (all hosts' devices) with :func:`batch_mesh`, run the same ``jax.jit`` sampler
on every host, and let each host write its own shard:
``[s.data for s in samples.addressable_shards]`` (global sample indices from ``s.index``).

This module holds the device mechanics (meshes, constraints, ``pmap``); the samplers built on them
are :func:`scire_jax.make_sharded_sampler` and :func:`scire_jax.make_pmap_sampler`.

Example:
    >>> import jax, scire_jax as sj
    >>> mesh = sj.batch_mesh()                                # all devices, axis "batch"
    >>> # sample_fn = sj.make_sharded_sampler(solver, schedule, noise_fn, mesh)
    >>> # x = jax.jit(sample_fn, static_argnums=2)(params, key, (64, 32, 32, 3))
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["batch_mesh", "replicate", "shard_batch", "pmap_batch"]

BATCH_AXIS = "batch"


def batch_mesh(devices=None, axis_name: str = BATCH_AXIS) -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: all) with an *Auto* axis, for batch sharding.

    ``jax.make_mesh`` defaults to Explicit axes, under which ``with_sharding_constraint`` fails;
    this mesh uses ``AxisType.Auto`` so the compiler propagates the batch sharding.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (axis_name,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicate(tree, mesh: jax.sharding.Mesh):
    """Copy every array of ``tree`` to all devices of ``mesh`` (replicated sharding).

    Parameters restored from a checkpoint are committed to one device; a sharded sampler jitted
    over the mesh rejects them until they are placed on the mesh's devices.
    """
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(draw_and_solve: Callable, mesh: jax.sharding.Mesh, axis_name: Optional[str] = None) -> Callable:
    """Wrap ``draw_and_solve(params, key, shape, first_index) -> x`` to shard the batch over ``mesh``.

    Params are constrained to be replicated; the result (and, through propagation, every state)
    is sharded along the batch axis.  ``shape[0]`` must be divisible by the mesh axis size.
    """
    axis_name = mesh.axis_names[0] if axis_name is None else axis_name
    if axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name={axis_name!r} is not an axis of the mesh; allowed: {mesh.axis_names}")
    batch_sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    replicated = NamedSharding(mesh, PartitionSpec())
    size = mesh.shape[axis_name]

    def sample_fn(params, key, shape, first_index=0):
        if shape[0] % size:
            raise ValueError(f"shape[0]={shape[0]} is not allowed: the batch must be divisible by the "
                             f"{size} devices of mesh axis {axis_name!r}")
        params = jax.lax.with_sharding_constraint(params, jax.tree_util.tree_map(lambda _: replicated, params))
        x = draw_and_solve(params, key, shape, first_index,
                           lambda x_start: jax.lax.with_sharding_constraint(x_start, batch_sharding))
        return jax.lax.with_sharding_constraint(x, batch_sharding)

    return sample_fn


def pmap_batch(solve_indices: Callable, devices=None) -> Callable:
    """``sample_fn(params, key, shape)`` splitting sample indices over devices with ``jax.pmap``.

    ``solve_indices(params, key, indices, sample_shape) -> x`` solves the samples ``indices`` on one
    device; the gathered result has shape ``shape``.
    """
    devices = jax.local_devices() if devices is None else list(devices)
    count = len(devices)
    compiled = {}

    def sample_fn(params, key, shape):
        shape = tuple(shape)
        if shape[0] % count:
            raise ValueError(f"shape[0]={shape[0]} is not allowed: the batch must be divisible by {count} devices")
        if shape not in compiled:
            compiled[shape] = jax.pmap(lambda p, k, i: solve_indices(p, k, i, shape[1:]), in_axes=(None, None, 0),
                                       devices=devices)
        indices = np.arange(shape[0]).reshape(count, shape[0] // count)
        return compiled[shape](params, key, indices).reshape(shape)

    return sample_fn
