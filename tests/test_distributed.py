"""Multi-device sampling on 8 fake CPU devices (a subprocess: the device count is fixed at jax import)."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scire_jax as sj

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "eight_devices.py"


@pytest.mark.slow
def test_sharded_and_pmap_sampling_equal_single_device_on_eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ALL OK" in result.stdout


def test_progress_callback_fires_once_per_step_and_does_not_change_results():
    schedule = sj.schedules.linear()
    noise_fn = sj.wrap_model(lambda p, x, t: 0.3 * x, schedule)
    solver = sj.SciRE(method="singlestep_agile", order=3, steps=10)
    seen = []
    with_callback = sj.make_sampler(solver, schedule, noise_fn, callback=lambda step, t: seen.append((int(step), float(t))))
    without = sj.make_sampler(solver, schedule, noise_fn)
    a = jax.jit(with_callback, static_argnums=2)(None, jax.random.key(0), (2, 3))
    jax.effects_barrier()
    b = jax.jit(without, static_argnums=2)(None, jax.random.key(0), (2, 3))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    the_plan = sj.plan(solver, schedule)
    assert [step for step, _ in seen] == list(range(the_plan.num_steps))
    np.testing.assert_allclose([t for _, t in seen], the_plan.times, rtol=1e-6)


def test_bf16_network_with_float32_solver_is_close_to_float32_network():
    import flax.linen as nn

    class ConvNet(nn.Module):
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x, t):
            h = nn.Conv(16, (3, 3), dtype=self.dtype)(x) + (t[:, None, None, None] / 1000.0).astype(self.dtype)
            return 0.5 * nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype)(nn.tanh(h))

    schedule = sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))
    params = ConvNet().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)))
    solver = sj.SciRE(algorithm="v2", order=3, steps=10, denoise_to_zero=True)
    outputs = {}
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        module = ConvNet(dtype=dtype)
        noise_fn = sj.wrap_model(lambda p, x, t, m=module: m.apply(p, x, t), schedule,
                                 network_dtype=None if dtype == jnp.float32 else dtype)
        sample_fn = sj.make_sampler(solver, schedule, noise_fn, dtype=jnp.float32)
        outputs[name] = np.asarray(jax.jit(sample_fn, static_argnums=2)(params, jax.random.key(1), (4, 8, 8, 3)))
    assert outputs["bfloat16"].dtype == np.float32
    assert np.all(np.isfinite(outputs["bfloat16"]))
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per network call); over 11 calls of a
    # contracting flow the difference stays within a few percent of the sample scale.
    scale = np.max(np.abs(outputs["float32"]))
    assert np.max(np.abs(outputs["bfloat16"] - outputs["float32"])) < 0.05 * scale
