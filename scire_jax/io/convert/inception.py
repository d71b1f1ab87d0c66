"""pytorch-fid Inception weights -> :class:`scire_jax.models.inception.FIDInceptionV3` parameters.

The released file ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's ``FID_WEIGHTS_URL``, a
PyTorch port of TensorFlow's ``inception-2015-12-05``) is a plain state dict of torchvision's
``Inception3(num_classes=1008, aux_logits=False)`` with the FID blocks, read here with
``torch.load(weights_only=True)`` (:func:`scire_jax.io.convert.weights.load_state_dict`).

Mapping (strict, through :func:`~scire_jax.io.convert.weights.fill_params`):

* ``<block>.conv.weight`` (OIHW) -> ``<block>/conv/kernel`` (HWIO);
* ``<block>.bn.{weight, bias, running_mean, running_var}`` -> ``<block>/bn/{scale, bias, mean, var}``.

Ignored, because pool3 features do not use them: the 1008-way classifier ``fc.weight`` /
``fc.bias`` and BatchNorm's ``num_batches_tracked`` counters.  Every other key must be consumed and
every parameter filled with the right shape, or one ``ValueError`` lists what does not match.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from scire_jax.io.convert.weights import fill_params, load_state_dict, to_numpy_state_dict

__all__ = ["FID_WEIGHTS_FILE", "IGNORED_KEYS", "convert_inception_state_dict", "load_inception_params"]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
IGNORED_KEYS = ("fc.weight", "fc.bias")
_STATS = {"mean": "running_mean", "var": "running_var"}


def _candidates(key: str) -> Iterator[str]:
    # fill_params names BatchNorm leaves "<...>.bn.mean" / ".var"; PyTorch stores running_mean / running_var.
    prefix, _, leaf = key.rpartition(".")
    yield f"{prefix}.{_STATS[leaf]}" if leaf in _STATS else key


@functools.lru_cache(maxsize=1)
def _target_shapes():
    # Tracing the network for its shapes takes ~1 s; the tree of ShapeDtypeStructs is immutable.
    from scire_jax.models.inception import abstract_params

    return abstract_params()


def convert_inception_state_dict(state_dict: Mapping[str, Any], source: str = "Inception state dict") -> dict:
    """Convert a pytorch-fid Inception state dict to Flax parameters.

    Args:
      state_dict: ``{name: tensor or ndarray}`` in PyTorch layout (torchvision ``Inception3`` names).
      source: what the state dict came from, for error messages.

    Returns:
      The ``"params"`` tree of :class:`~scire_jax.models.inception.FIDInceptionV3` (float32 numpy).

    Raises:
      ValueError: on missing, unexpected (renamed) or wrongly shaped tensors.
    """
    arrays = to_numpy_state_dict(state_dict)
    kept = {key: value for key, value in arrays.items()
            if key not in IGNORED_KEYS and not key.endswith(".num_batches_tracked")}
    return fill_params(_target_shapes(), kept, candidates=_candidates, dtype=np.float32, source=source)


def load_inception_params(path: str | os.PathLike) -> dict:
    """Read ``pt_inception-2015-12-05-6726825d.pth`` (or a ``.safetensors`` copy) as Flax parameters.

    Raises:
      ValueError: if the file is missing or unreadable, or its tensors do not match the network.
    """
    return convert_inception_state_dict(load_state_dict(path), source=f"weights file {str(path)!r}")
