"""Applications on top of the library: the ``scire-jax`` command line, solver comparison,
training, metrics, images and data sets."""
