"""Denoising networks (Flax linen).  :class:`UNet2D` is the DDPM / diffusers ``UNet2DModel`` family."""
from scire_jax.models.unet import UNet2D, timestep_embedding

__all__ = ["UNet2D", "timestep_embedding"]
