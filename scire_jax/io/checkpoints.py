"""Orbax checkpoints of parameters with their model config stored beside them.

Layout of a checkpoint directory ``path``::

    path/scire_checkpoint.json   {"format": "scire_jax.checkpoint", "version": 1}
    path/config.json             the model config (e.g. ``UNet2D.to_config()``)
    path/extra.json              free-form JSON (e.g. schedule betas and prediction type)
    path/params/                 orbax ``StandardCheckpointer`` directory

:func:`save` writes everything into a temporary directory next to ``path`` and renames it into
place, so ``path`` either holds a complete checkpoint or is left as it was.  :func:`restore` needs
nothing but the directory: the parameter tree structure comes from the orbax metadata.

Example:
    >>> import numpy as np, tempfile, os
    >>> folder = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> save(folder, {"w": np.ones(3, np.float32)}, {"kind": "toy"}, {"note": 1})
    >>> params, config, extra = restore(folder)
    >>> float(params["w"].sum()), config, extra
    (3.0, {'kind': 'toy'}, {'note': 1})
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import jax
import numpy as np

__all__ = ["save", "restore", "is_checkpoint", "MARKER"]

MARKER = "scire_checkpoint.json"
FORMAT = {"format": "scire_jax.checkpoint", "version": 1}


def _write_json(path: Path, value: Any, what: str) -> None:
    try:
        text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be JSON-serialisable: {error}") from error
    path.write_text(text + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {str(path)!r}: {error}") from error


def is_checkpoint(path) -> bool:
    """Whether ``path`` is a checkpoint directory written by :func:`save`."""
    return (Path(path) / MARKER).is_file()


def _save_params(directory: Path, params) -> None:
    import orbax.checkpoint as ocp

    params = jax.tree_util.tree_map(lambda leaf: jax.numpy.asarray(leaf), params)
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(str(directory.absolute()), params)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()


def save(path, params, config: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None,
         overwrite: bool = False) -> None:
    """Save ``params`` (a pytree of arrays) with ``config`` and ``extra`` (JSON dicts) at ``path``, atomically.

    Raises:
      FileExistsError: ``path`` exists and is not an empty directory, unless ``overwrite=True``.
      ValueError: ``config`` / ``extra`` are not JSON-serialisable dicts.
    """
    path = Path(path).absolute()
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    if extra is not None and not isinstance(extra, Mapping):
        raise ValueError(f"extra must be a dict or None, got {type(extra).__name__}")
    if path.exists() and not (path.is_dir() and not any(path.iterdir())) and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists and is not empty; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        _write_json(tmp / "config.json", dict(config), "config")
        _write_json(tmp / "extra.json", dict(extra or {}), "extra")
        _save_params(tmp / "params", params)
        _write_json(tmp / MARKER, FORMAT, "marker")
        _move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    if not path.exists() and not path.is_symlink():
        os.rename(tmp, path)
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        os.rmdir(path)
        os.rename(tmp, path)
        return
    if not overwrite:  # appeared while saving
        raise FileExistsError(f"{str(path)!r} exists and is not empty; pass overwrite=True to replace it")
    trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(path, trash)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(trash, path)
        raise
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink()


def _abstract_target(directory: Path):
    import orbax.checkpoint as ocp

    metadata = ocp.StandardCheckpointer().metadata(str(directory))
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def leaf(meta):
        return jax.ShapeDtypeStruct(tuple(meta.shape), np.dtype(meta.dtype), sharding=sharding)

    return jax.tree_util.tree_map(leaf, tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def restore(path) -> Tuple[Any, dict, dict]:
    """``(params, config, extra)`` of a checkpoint written by :func:`save` (params as jax arrays)."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a checkpoint directory")
    if not is_checkpoint(path):
        raise ValueError(f"{str(path)!r} is not a scire_jax checkpoint (no {MARKER})")
    marker = _read_json(path / MARKER)
    if not isinstance(marker, dict) or marker.get("format") != FORMAT["format"] or marker.get("version", 0) > FORMAT["version"]:
        raise ValueError(f"{str(path / MARKER)!r} describes an unsupported checkpoint format: {marker!r}")
    config = _read_json(path / "config.json")
    extra = _read_json(path / "extra.json") if (path / "extra.json").is_file() else {}
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(str(path / "params"), _abstract_target(path / "params"))
    finally:
        checkpointer.close()
    return params, config, extra
