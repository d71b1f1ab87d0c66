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

Example:
    >>> import jax, scire_jax as sj
    >>> mesh = sj.batch_mesh()                                # all devices, axis "batch"
    >>> # sample_fn = sj.make_sharded_sampler(solver, schedule, noise_fn, mesh)
    >>> # x = jax.jit(sample_fn, static_argnums=2)(params, key, (64, 32, 32, 3))
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from scire_jax.core.sampling import initial_noise, plan, solve

__all__ = ["batch_mesh", "make_sharded_sampler", "make_pmap_sampler", "replicate"]

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


def make_sharded_sampler(solver, schedule, noise_fn: Callable, mesh: Optional[jax.sharding.Mesh] = None, *,
                         dtype=None, axis_name: Optional[str] = None, callback: Optional[Callable] = None):
    """``sample_fn(params, key, shape, first_index=0)`` with the batch axis sharded over ``mesh``.

    Params (and the plan's constants) are replicated; the initial noise, every state and the
    output are sharded along the batch axis.  ``shape[0]`` must be divisible by the mesh size.

    Args:
      solver, schedule, noise_fn: as :func:`scire_jax.make_sampler`.
      mesh: a mesh (default :func:`batch_mesh` over all devices).
      dtype: dtype of ``x_T`` and of the solver arithmetic.
      axis_name: the mesh axis to shard the batch over (default: the mesh's first axis).
      callback: optional per-step host callback ``callback(step, t)``.
    """
    plan(solver, schedule)
    mesh = batch_mesh() if mesh is None else mesh
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
        x_start = jax.lax.with_sharding_constraint(initial_noise(key, shape, dtype, first_index), batch_sharding)
        x = solve(solver, schedule, noise_fn, params, x_start, callback=callback)
        return jax.lax.with_sharding_constraint(x, batch_sharding)

    return sample_fn


def make_pmap_sampler(solver, schedule, noise_fn: Callable, *, devices=None, dtype=None):
    """``sample_fn(params, key, shape)`` that splits the batch over devices with ``jax.pmap``.

    Returns the full batch ``(shape[0], ...)`` (gathered), identical to the single-device sampler
    for the same key.  ``shape`` is a static Python tuple; ``shape[0]`` must be divisible by the
    number of devices.
    """
    plan(solver, schedule)
    devices = jax.local_devices() if devices is None else list(devices)
    count = len(devices)

    def per_device(params, key, indices, sample_shape):
        x_start = jax.vmap(lambda i: jax.random.normal(
            jax.random.fold_in(key, i), sample_shape, jnp.result_type(float) if dtype is None else dtype))(indices)
        return solve(solver, schedule, noise_fn, params, x_start)

    compiled = {}

    def sample_fn(params, key, shape):
        shape = tuple(shape)
        if shape[0] % count:
            raise ValueError(f"shape[0]={shape[0]} is not allowed: the batch must be divisible by {count} devices")
        if shape not in compiled:
            compiled[shape] = jax.pmap(lambda p, k, i: per_device(p, k, i, shape[1:]), in_axes=(None, None, 0),
                                       devices=devices)
        indices = np.arange(shape[0]).reshape(count, shape[0] // count)
        out = compiled[shape](params, key, indices)
        return out.reshape(shape)

    return sample_fn
