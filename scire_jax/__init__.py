"""scire-jax: SciRE-Solver and baseline diffusion samplers for JAX."""
from scire_jax import schedules

__version__ = "0.1.0"
