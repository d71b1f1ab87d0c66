import os
import pathlib
import sys

# Parity tests need float64; everything else in the suite states its dtype explicitly.
import jax

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(pathlib.Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
