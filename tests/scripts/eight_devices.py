"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8: sharded/pmap sampling equals one device."""
import os

assert "xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")

import chex
import flax.linen as nn
import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np

import scire_jax as sj

assert jax.device_count() == 8, jax.devices()


schedule = sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))
GAUSSIAN = sj.analytic.Gaussian(mean=np.full((8, 8, 2), 0.2), std=np.full((8, 8, 2), 0.5))


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        h = nn.Conv(8, (3, 3))(x) + t[:, None, None, None] / 1000.0
        # the exact noise of Gaussian data plus a small convolutional term: samples stay O(1)
        exact = GAUSSIAN.noise(x, t / 1000.0 + 1.0 / 1000, schedule)
        return exact + 0.05 * jnp.tanh(nn.Conv(x.shape[-1], (3, 3))(nn.silu(h)))


module = ConvNet()
params32 = module.init(jax.random.key(1), jnp.zeros((1, 8, 8, 2), jnp.float32), jnp.zeros((1,), jnp.float32))
noise_fn = sj.wrap_model(lambda p, x, t: module.apply(p, x, t), schedule)
shape = (16, 8, 8, 2)
key = jax.random.key(42)
mesh = sj.batch_mesh()
configurations = [
    sj.SciRE(algorithm="v1", method="multistep", order=3, steps=8),
    sj.SciRE(algorithm="v2", method="multistep", order=2, steps=8),
    sj.SciRE(algorithm="v1", method="singlestep_agile", order=3, steps=8),
    sj.SciRE(algorithm="v2", method="singlestep_fixed", order=2, steps=8),
]
# float64: the sharded program must agree to 1e-6 (it does to round-off).  float32: XLA may pick
# different convolution blockings for 2 vs 16 samples per device; the first SciRE v1 step from t_start
# amplifies that last-bit difference by 1/alpha(T) ~ 160, so agreement is to ~1e-5 relative there.
TOLERANCES = {jnp.float64: 1e-6, jnp.float32: 1e-4}
for (dtype, tolerance), solver in [(d, c) for d in TOLERANCES.items() for c in configurations]:
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params32)
    single = jax.jit(sj.make_sampler(solver, schedule, noise_fn, dtype=dtype), static_argnums=2)(params, key, shape)
    assert single.dtype == dtype
    chex.clear_trace_counter()

    sharded_fn = sj.make_sampler(solver, schedule, noise_fn, mesh=mesh, dtype=dtype)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, key):
        return sharded_fn(params, key, shape)

    sharded = run(params, key)
    sharded_again = run(params, jax.random.key(43))
    chex.assert_trees_all_close(sharded, single, atol=tolerance, rtol=tolerance)
    assert sharded.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")),
                                             sharded.ndim), sharded.sharding
    assert len({shard.device for shard in sharded.addressable_shards}) == 8
    pmapped = sj.make_pmap_sampler(solver, schedule, noise_fn, dtype=dtype)(params, key, shape)
    chex.assert_trees_all_close(pmapped, single, atol=tolerance, rtol=tolerance)
    # a different batch split gives the same leading samples
    first = jax.jit(sj.make_sampler(solver, schedule, noise_fn, dtype=dtype), static_argnums=2)(
        params, key, (8,) + shape[1:])
    chex.assert_trees_all_close(first, single[:8], atol=tolerance, rtol=tolerance)
    print("ok", jnp.dtype(dtype).name, solver.algorithm, solver.method, solver.order,
          float(jnp.max(jnp.abs(sharded - single))))
try:
    sj.make_sharded_sampler(configurations[0], schedule, noise_fn, mesh)(params32, key, (12, 8, 8, 2))
except ValueError as error:
    assert "shape[0]=12 is not allowed" in str(error) and "divisible" in str(error)
else:
    raise AssertionError("a batch of 12 on 8 devices must be rejected")

# chunks of a sharded sampler (first_index) reassemble the one-device batch; the CLI's --devices
from scire_jax.apps.comparison import sample_in_chunks  # noqa: E402

solver = configurations[0]
single = jax.jit(sj.make_sampler(solver, schedule, noise_fn), static_argnums=2)(params32, key, (20,) + shape[1:])
chunked = sample_in_chunks(sj.make_sampler(solver, schedule, noise_fn, mesh=mesh), params32, key,
                           (20,) + shape[1:], batch_size=8)
chex.assert_trees_all_close(chunked, np.asarray(single), atol=1e-6, rtol=1e-6)
print("ok sharded chunks")

import tempfile  # noqa: E402

# parameters restored from a checkpoint work under a mesh as they come (uncommitted arrays)
mnist = sj.load_pretrained("mnist")
mnist_params, mnist_schedule = mnist.params, mnist.schedule
mnist_fn = sj.make_sampler(sj.DDIM(steps=2), mnist_schedule, mnist.noise_fn(), mesh=mesh)
assert jax.jit(mnist_fn, static_argnums=2)(mnist_params, key, (8, 16, 16, 1)).shape == (8, 16, 16, 1)
print("ok restored params under a mesh")

from scire_jax.apps import cli  # noqa: E402

with tempfile.TemporaryDirectory() as folder:
    outputs = {}
    for devices in ("1", "8"):
        outputs[devices] = os.path.join(folder, f"d{devices}.npz")
        assert cli.main(["sample", "--num", "12", "--steps", "3", "--batch-size", "5", "--devices", devices,
                         "--out", outputs[devices]]) == 0
    one, eight = (np.load(outputs[d])["samples"] for d in ("1", "8"))
    assert one.shape == eight.shape == (12, 16, 16, 1)
    np.testing.assert_allclose(eight, one, atol=1e-4)  # the embedded model is float32
print("ok cli --devices 8")
print("ALL OK")
