"""Atomic file writes: a temporary file in the target's folder, then a rename (no partial files)."""

from __future__ import annotations

import os
import tempfile
from typing import Callable

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, then rename the result to ``path``; on error nothing is left.

    The file gets the permissions of a newly created file (``0o666`` less the umask), not
    ``mkstemp``'s ``0o600``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".scire-jax-", suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""

    def write(temporary):
        with open(temporary, "w") as handle:
            handle.write(text)

    atomic_write(path, write)
