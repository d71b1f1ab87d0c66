import os
import pathlib
import sys

import jax
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# compiled programs are cached across test processes and runs (the suite compiles many small samplers)
jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(__file__).parent.parent / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def x64():
    """float64 for one test (parity with the float64 reference outputs); the default is float32, as users run it."""
    with jax.enable_x64(True):
        yield
