"""Orbax checkpoints of parameters with their model config stored beside them.

Layout of a checkpoint directory ``path``::

    path/scire_checkpoint.json   {"format": "scire_jax.checkpoint", "version": 1,
                                  "digest": {"algorithm": "sha256", "arrays": N, "value": "<hex>"}}
    path/config.json             the model config (e.g. ``UNet2D.to_config()``)
    path/extra.json              free-form JSON (e.g. schedule betas and prediction type)
    path/params/                 orbax ``StandardCheckpointer`` directory

:func:`save` writes everything into a temporary directory next to ``path`` and renames it into
place, so ``path`` either holds a complete checkpoint or is left as it was.  With
``overwrite=True`` it replaces only a directory that is itself a checkpoint (its marker file and
nothing but the four entries above); any other non-empty directory or file is refused, so no
unrelated data can be lost.  :func:`check_destination` runs the same test up front (the CLI calls
it before converting anything).

The marker records a SHA-256 :func:`digest` of the arrays (each array's path, dtype, shape and
bytes, in path order).  :func:`restore` needs nothing but the directory (the tree structure comes
from the orbax metadata) and verifies the digest; a damaged, truncated or incomplete checkpoint is
one ``ValueError`` naming the checkpoint and what is wrong.  Checkpoints written before digests
existed (no ``digest`` in the marker) still load, unverified.

Example:
    >>> import numpy as np, tempfile, os
    >>> folder = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> save(folder, {"w": np.ones(3, np.float32)}, {"kind": "toy"}, {"note": 1})
    >>> params, config, extra = restore(folder)
    >>> float(params["w"].sum()), config, extra
    (3.0, {'kind': 'toy'}, {'note': 1})
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

import jax
import numpy as np

__all__ = ["save", "restore", "is_checkpoint", "check_destination", "digest", "nonfinite_leaves",
           "check_finite_params", "MARKER"]

MARKER = "scire_checkpoint.json"
FORMAT = {"format": "scire_jax.checkpoint", "version": 1}
#: the entries of a checkpoint directory; a directory holding anything else is never replaced
ENTRIES = frozenset({MARKER, "config.json", "extra.json", "params"})


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
    """Whether ``path`` is a checkpoint directory written by :func:`save` (it holds the marker file)."""
    return (Path(path) / MARKER).is_file()


# -- digests and finiteness --------------------------------------------------------------------------


def _key_name(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _named_leaves(params) -> List[Tuple[str, np.ndarray]]:
    """``[(path, host array)]`` sorted by path (``"params/conv_in/kernel"``), whatever the container types."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    named = [("/".join(_key_name(entry) for entry in path), np.asarray(leaf)) for path, leaf in leaves]
    return sorted(named, key=lambda item: item[0])


def digest(params) -> dict:
    """SHA-256 of a parameter tree: ``{"algorithm": "sha256", "arrays": N, "value": hex}``.

    Every array contributes its path (``/``-joined names, so dicts, lists and named tuples that
    orbax restores as dicts hash alike), dtype name, shape and C-order bytes, in path order.

    Example:
        >>> import numpy as np
        >>> digest({"w": np.zeros(2, np.float32)})["value"][:12]
        '2d3c4d38442d'
    """
    hasher = hashlib.sha256()
    named = _named_leaves(params)
    for name, array in named:
        array = np.ascontiguousarray(array)
        hasher.update(f"{name}\0{array.dtype.name}\0{array.shape}\0".encode())
        hasher.update(array.tobytes())
    return {"algorithm": "sha256", "arrays": len(named), "value": hasher.hexdigest()}


def nonfinite_leaves(params) -> List[Tuple[str, int, int]]:
    """``[(path, non-finite count, size)]`` of the floating-point arrays of ``params`` holding NaN or inf."""
    bad = []
    for name, array in _named_leaves(params):
        if jax.numpy.issubdtype(array.dtype, jax.numpy.inexact):  # bfloat16 included
            count = int(array.size - np.count_nonzero(np.isfinite(array)))
            if count:
                bad.append((name, count, int(array.size)))
    return bad


def check_finite_params(params, source: str, allow_nonfinite: bool = False):
    """Return ``params``, or raise a one-line ``ValueError`` if any weight is NaN or infinite.

    ``allow_nonfinite=True`` (CLI ``--allow-nonfinite``) skips the check: for experts who know the
    non-finite entries are never used.
    """
    if allow_nonfinite:
        return params
    bad = nonfinite_leaves(params)
    if bad:
        total = len(_named_leaves(params))
        shown = ", ".join(f"{name} ({count} of {size})" for name, count, size in bad[:3])
        more = f", ... ({len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ValueError(f"{source} has non-finite weights (NaN or inf) in {len(bad)} of {total} arrays: {shown}{more}; "
                         "pass allow_nonfinite=True (CLI --allow-nonfinite) to use them anyway")
    return params


# -- saving ------------------------------------------------------------------------------------------


def _save_params(directory: Path, params) -> None:
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(str(directory.absolute()), params)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()


def _replaceable(path: Path) -> Optional[str]:
    """Why the existing ``path`` must not be replaced, or None if it is a checkpoint and nothing else."""
    if path.is_symlink():
        return "is a symbolic link"
    if not path.is_dir():
        return "is a file, not a checkpoint directory"
    if not is_checkpoint(path):
        return f"is a non-empty directory that is not a scire-jax checkpoint (no {MARKER})"
    foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f", ... ({len(foreign) - 3} more)" if len(foreign) > 3 else "")
        return f"is a checkpoint that also holds other files ({shown})"
    return None


def check_destination(path, overwrite: bool = False) -> Path:
    """Validate a checkpoint destination before any expensive work; return it as an absolute path.

    Allowed: a path that does not exist (under a writable existing ancestor), an empty directory,
    and, with ``overwrite=True``, a checkpoint directory written by :func:`save` (marker file and
    nothing but ``config.json``, ``extra.json``, ``params/``).

    Raises:
      FileExistsError: ``path`` exists and is not replaceable (a file, a symbolic link, a
        non-empty directory that is not a checkpoint or that holds other files: refused even
        with ``overwrite``), or is a checkpoint and ``overwrite`` is false.
      ValueError: ``path`` cannot be created (no writable ancestor folder).
    """
    path = Path(os.path.abspath(path))
    if path.exists() or path.is_symlink():
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            return path
        reason = _replaceable(path)
        if reason is not None:
            raise FileExistsError(f"{str(path)!r} {reason}; refusing to replace it (even with overwrite): choose a new "
                                  "or empty directory")
        if not overwrite:
            raise FileExistsError(f"{str(path)!r} is an existing checkpoint; pass overwrite=True (--overwrite) to "
                                  "replace it")
        writable = path.parent
    else:
        writable = path.parent
        while not writable.exists():
            writable = writable.parent
        if not writable.is_dir():
            raise ValueError(f"{str(path)!r} cannot be created: {str(writable)!r} is not a directory")
    if not os.access(writable, os.W_OK | os.X_OK):
        raise ValueError(f"{str(path)!r} cannot be written: directory {str(writable)!r} is read-only")
    return path


def save(path, params, config: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None,
         overwrite: bool = False) -> None:
    """Save ``params`` (a pytree of arrays) with ``config`` and ``extra`` (JSON dicts) at ``path``, atomically.

    The marker records the :func:`digest` of the arrays as stored, which :func:`restore` verifies.

    Raises:
      FileExistsError: see :func:`check_destination` (``overwrite=True`` replaces a checkpoint
        directory, never any other data).
      ValueError: ``config`` / ``extra`` are not JSON-serialisable dicts.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    if extra is not None and not isinstance(extra, Mapping):
        raise ValueError(f"extra must be a dict or None, got {type(extra).__name__}")
    path = check_destination(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        _write_json(tmp / "config.json", dict(config), "config")
        _write_json(tmp / "extra.json", dict(extra or {}), "extra")
        params = jax.tree_util.tree_map(lambda leaf: jax.numpy.asarray(leaf), params)
        _save_params(tmp / "params", params)
        _write_json(tmp / MARKER, dict(FORMAT, digest=digest(params)), "marker")
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
    check_destination(path, overwrite)  # again: the directory may have changed while saving
    trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(path, trash)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(trash, path)
        raise
    shutil.rmtree(trash, ignore_errors=True)


# -- restoring ---------------------------------------------------------------------------------------


def _abstract_target(directory: Path):
    import orbax.checkpoint as ocp

    metadata = ocp.StandardCheckpointer().metadata(str(directory))
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def leaf(meta):
        return jax.ShapeDtypeStruct(tuple(meta.shape), np.dtype(meta.dtype), sharding=sharding)

    return jax.tree_util.tree_map(leaf, tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def _short(error: BaseException) -> str:
    """The first line of an orbax / tensorstore error, without its (kilobyte-long) spec dump."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for cut in (" See full TensorStore details", " [tensorstore_spec=", " [source locations="):
        text = text.split(cut)[0]
    return text[:200].rstrip(" .:;,") + ("..." if len(text) > 200 else "")


def _drain_quietly(seconds: float = 0.3) -> None:
    """Let orbax's abandoned concurrent reads finish with stderr silenced, then collect them.

    When one array of a damaged checkpoint fails, orbax closes its event loop while the reads of
    the other arrays are still in flight; those then print "Exception ignored" / "Event loop is
    closed" tracebacks from other threads.  This runs only on that failure path.
    """
    import gc
    import sys
    import time

    hook, stream = sys.unraisablehook, sys.stderr
    sys.unraisablehook = lambda unraisable: None
    saved = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            sys.stderr = null
            time.sleep(seconds)
            gc.collect()
    except OSError:  # no file descriptor 2: nothing to silence
        gc.collect()
    finally:
        sys.stderr = stream
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        sys.unraisablehook = hook


def _check_files(path: Path) -> None:
    params = path / "params"
    where = f"checkpoint {str(path)!r}"
    if not params.is_dir():
        raise ValueError(f"{where} is incomplete: its params/ directory is missing")
    required = ["_METADATA"]
    if any(entry.name.startswith("ocdbt.process_") for entry in params.iterdir()):
        required.append("manifest.ocdbt")
    for name in required:
        file = params / name
        if not file.is_file():
            raise ValueError(f"{where} is incomplete: params/{name} is missing")
        if file.stat().st_size == 0:
            raise ValueError(f"{where} is damaged: params/{name} is empty")


def restore(path, verify: bool = True) -> Tuple[Any, dict, dict]:
    """``(params, config, extra)`` of a checkpoint written by :func:`save` (params as jax arrays).

    Args:
      path: the checkpoint directory.
      verify: check the arrays against the digest recorded in the marker (if it has one).

    Raises:
      ValueError: one line naming the checkpoint and what is wrong: not a checkpoint, a missing
        file, unreadable (truncated, zero-filled, deleted) array data, or arrays whose digest does
        not match the marker's.
    """
    import orbax.checkpoint as ocp

    path = Path(os.path.abspath(path))
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a checkpoint directory")
    if not is_checkpoint(path):
        raise ValueError(f"{str(path)!r} is not a scire_jax checkpoint (no {MARKER})")
    marker = _read_json(path / MARKER)
    if not isinstance(marker, dict) or marker.get("format") != FORMAT["format"] or marker.get("version", 0) > FORMAT["version"]:
        raise ValueError(f"{str(path / MARKER)!r} describes an unsupported checkpoint format: {marker!r}")
    recorded = marker.get("digest")
    if recorded is not None and not (isinstance(recorded, dict) and recorded.get("algorithm") == "sha256"
                                     and isinstance(recorded.get("value"), str)):
        raise ValueError(f"checkpoint {str(path)!r} is damaged: {MARKER} holds an invalid digest entry {recorded!r}")
    config = _read_json(path / "config.json")
    extra = _read_json(path / "extra.json") if (path / "extra.json").is_file() else {}
    _check_files(path)
    checkpointer = ocp.StandardCheckpointer()
    failure = None
    try:
        params = checkpointer.restore(str(path / "params"), _abstract_target(path / "params"))
    except Exception as error:  # noqa: BLE001 - orbax / tensorstore raise bare Exceptions with kilobytes of spec
        failure = _short(error)
    finally:
        checkpointer.close()
    if failure is not None:  # outside the except block, so that the failed reads can be collected
        _drain_quietly()
        raise ValueError(f"checkpoint {str(path)!r} is damaged: its arrays cannot be read ({failure}); "
                         "a file under params/ is truncated, zero-filled or missing")
    if verify and recorded is not None:
        actual = digest(params)
        if actual["value"] != recorded["value"]:
            raise ValueError(f"checkpoint {str(path)!r} is damaged: its arrays do not match the sha256 digest "
                             f"recorded in {MARKER} ({actual['arrays']} arrays read, {recorded.get('arrays')} "
                             "recorded); a file under params/ was changed or corrupted")
    return params, config, extra
