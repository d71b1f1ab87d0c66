"""Reading PyTorch-layout weights and filling Flax parameter trees strictly.

* ``.safetensors`` files are read with ``safetensors.numpy`` (no torch needed); bf16 tensors arrive
  as ``ml_dtypes.bfloat16`` arrays (safetensors >= 0.4.3 with ``ml_dtypes``, a JAX dependency) and are
  widened to float32.
* ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` files need torch and are read with
  ``torch.load(..., map_location="cpu", weights_only=True)`` (torch is imported lazily).

:func:`fill_params` maps every leaf of an abstract Flax parameter tree to a PyTorch state-dict key
(``down_blocks_0/resnets_1/conv1/kernel`` -> ``down_blocks.0.resnets.1.conv1.weight``), transposes
the kernels (``OIHW -> HWIO``, ``(out, in) -> (in, out)``) and raises one ``ValueError`` listing
missing keys, unexpected keys and shape mismatches unless every key is used and every leaf filled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

__all__ = ["load_state_dict", "load_torch_object", "to_numpy_state_dict", "fill_params", "flax_path_to_torch_key"]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_SHOW = 5  # how many keys of each kind an error message lists


# -- reading files --------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    """``safetensors.numpy.load_file``; bf16 tensors come back as ``ml_dtypes.bfloat16`` arrays
    (numpy knows the type once ``ml_dtypes`` is imported) and are widened to float32."""
    import ml_dtypes
    import safetensors.numpy

    try:
        tensors = safetensors.numpy.load_file(str(path))
    except Exception as error:  # noqa: BLE001 - SafetensorError (truncated / corrupt file), OSError, dtype
        raise ValueError(f"cannot read safetensors file {str(path)!r}: {error}") from error
    return {name: array.astype(np.float32) if array.dtype == ml_dtypes.bfloat16 else array
            for name, array in tensors.items()}


def load_torch_object(path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; torch is imported lazily."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"reading {str(path)!r} needs PyTorch (pip install torch); .safetensors files load without it") from error
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - corrupt / truncated / unsafe pickle
        raise ValueError(f"cannot read PyTorch checkpoint {str(path)!r}: {error}") from error


def _tensor_to_numpy(value, key):
    if isinstance(value, np.ndarray):
        return value
    try:
        import torch
    except ImportError:  # pragma: no cover - torch objects cannot exist without torch
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes, Mapping)):
        return np.asarray(value)
    raise ValueError(f"state dict entry {key!r} is not a tensor (got {type(value).__name__})")


def to_numpy_state_dict(obj: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """A flat ``{name: tensor}`` mapping (torch tensors or numpy arrays) as numpy arrays."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"state dict key {key!r} is not a string")
        out[key] = _tensor_to_numpy(value, key)
    return out


def load_state_dict(path) -> Dict[str, np.ndarray]:
    """Read a ``.safetensors`` (no torch) or ``.bin/.pt/.pth/.ckpt`` (torch) file as ``{name: ndarray}``.

    A ``*.index.json`` file of a sharded checkpoint is followed to its shards.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    name = path.name
    if name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"cannot read shard index {str(path)!r}: {error}") from error
        merged: Dict[str, np.ndarray] = {}
        for shard in shards:
            merged.update(load_state_dict(path.parent / shard))
        return merged
    if name.endswith(SAFETENSORS_SUFFIXES):
        return _read_safetensors(path)
    if name.endswith(TORCH_SUFFIXES):
        return to_numpy_state_dict(load_torch_object(path))
    raise ValueError(f"weights file {str(path)!r} has an unknown suffix; expected .safetensors, .bin, .pt, .pth or .ckpt")


# -- Flax <-> PyTorch names -------------------------------------------------------------------------

_LIST_NAME = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|to_out)_(\d+)$")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def flax_path_to_torch_key(path: Sequence[str]) -> str:
    """``("down_blocks_0", "resnets_1", "conv1", "kernel")`` -> ``"down_blocks.0.resnets.1.conv1.weight"``."""
    *modules, leaf = path
    parts = [_LIST_NAME.sub(r"\1.\2", name) for name in modules]
    return ".".join(parts + [_LEAF_NAMES.get(leaf, leaf)])


def _convert_leaf(leaf_name: str, array: np.ndarray, target_shape: Tuple[int, ...]):
    """Source (PyTorch layout) array -> Flax layout, or ``None`` if the shapes cannot match."""
    if leaf_name == "kernel" and len(target_shape) == 4:
        if array.ndim != 4:
            return None
        array = np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
    elif leaf_name == "kernel" and len(target_shape) == 2:
        if array.ndim == 4 and array.shape[2:] == (1, 1):  # 1x1 convolution used as a linear layer
            array = array[:, :, 0, 0]
        if array.ndim != 2:
            return None
        array = array.T  # (out, in) -> (in, out)
    if tuple(array.shape) != tuple(target_shape):
        return None
    return array


def _torch_layout_shape(leaf_name: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    if leaf_name == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf_name == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _format_list(title: str, items: List[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"\n  {title} ({len(items)}): {shown}{more}"


def fill_params(abstract_params: Mapping, state_dict: Mapping[str, np.ndarray],
                candidates: Callable[[str], Iterable[str]] = lambda key: (key,),
                dtype=np.float32, source: str = "checkpoint") -> dict:
    """Fill an abstract Flax parameter tree from a PyTorch-layout state dict, strictly.

    Args:
      abstract_params: tree of arrays / ``ShapeDtypeStruct`` (the ``"params"`` collection).
      state_dict: ``{source name: ndarray}`` in PyTorch layout.
      candidates: maps the diffusers-style torch key of a leaf to the source names to try, in
        order (e.g. the legacy ``query`` name after ``to_q``, or the original DDPM name).
      dtype: dtype of the returned parameters.
      source: what ``state_dict`` came from (used in the error message).

    Returns:
      A nested dict of numpy arrays with the structure of ``abstract_params``.

    Raises:
      ValueError: listing (the first few of, and the counts of) missing source keys, unexpected
        source keys and shape mismatches, unless all keys are consumed and all leaves filled.
    """
    flat = traverse_util.flatten_dict(dict(abstract_params))
    filled = {}
    used = set()
    missing: List[str] = []
    mismatched: List[str] = []
    for path, leaf in flat.items():
        key = flax_path_to_torch_key(path)
        names = list(candidates(key))
        found = next((name for name in names if name in state_dict), None)
        if found is None:
            missing.append(names[0])
            continue
        used.add(found)
        array = np.asarray(state_dict[found])
        converted = _convert_leaf(path[-1], array, tuple(leaf.shape))
        if converted is None:
            mismatched.append(f"{found}: {source} {tuple(array.shape)} vs expected "
                              f"{_torch_layout_shape(path[-1], tuple(leaf.shape))}")
            continue
        if not jnp.issubdtype(converted.dtype, jnp.floating):  # ml_dtypes bf16 included
            mismatched.append(f"{found}: {source} dtype {converted.dtype} is not floating point")
            continue
        filled[path] = np.ascontiguousarray(converted, dtype=dtype)
    unexpected = sorted(set(state_dict) - used)
    if missing or unexpected or mismatched:
        message = (f"{source} does not match the model config: {len(missing)} missing keys, "
                   f"{len(unexpected)} unexpected keys, {len(mismatched)} shape mismatches")
        if missing:
            message += _format_list("missing", missing)
        if unexpected:
            message += _format_list("unexpected", unexpected)
        if mismatched:
            message += _format_list("shape mismatches", mismatched)
        raise ValueError(message)
    return traverse_util.unflatten_dict(filled)
