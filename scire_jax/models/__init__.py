"""Denoising networks (Flax linen) and analytic test models.

Networks import only jax / flax / numpy; :mod:`scire_jax.models.analytic` (exact denoisers of
Gaussian data) uses the core's schedules.  :class:`UNet2D` is the DDPM / diffusers
``UNet2DModel`` family.
"""
from scire_jax.models.unet2d import UNet2D, timestep_embedding

__all__ = ["UNet2D", "timestep_embedding"]
