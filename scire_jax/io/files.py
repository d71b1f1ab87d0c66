"""Atomic file writes: a temporary file in the target's folder, then a rename (no partial files)."""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Sequence, Tuple

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_all", "check_output_file"]


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


def check_output_file(path: str, what: str = "output") -> str:
    """Validate a file that is about to be written, before any expensive work; return its absolute path.

    Raises ``ValueError`` (one line) if ``path`` names an existing directory or a symbolic link to
    one, or if its folder does not exist or is not writable.  An existing regular file is fine (it
    is replaced atomically).
    """
    absolute = os.path.abspath(path)
    if os.path.isdir(absolute):
        raise ValueError(f"{what} {path!r} is an existing directory: give a file name")
    directory = os.path.dirname(absolute)
    if not os.path.isdir(directory):
        raise ValueError(f"{what} {path!r} is not writable: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path!r} is not writable: directory {directory!r} is read-only")
    if os.path.lexists(absolute) and not os.path.isfile(absolute):
        raise ValueError(f"{what} {path!r} exists and is not a regular file")
    return absolute


def atomic_write_all(writes: Sequence[Tuple[str, Callable[[str], None]]]) -> None:
    """Write several files all or none: every ``write(temporary_path)`` first, then the renames.

    If any ``write`` fails, no target is touched and every temporary file is removed.  The renames
    come last, after everything was written; should one of them fail (a folder removed meanwhile),
    the files already renamed are removed again, so no partial set is left behind.
    """
    umask = os.umask(0)
    os.umask(umask)
    temporaries = []
    try:
        for path, write in writes:
            directory = os.path.dirname(os.path.abspath(path))
            handle, temporary = tempfile.mkstemp(dir=directory, prefix=".scire-jax-",
                                                 suffix=os.path.splitext(path)[1])
            os.close(handle)
            temporaries.append(temporary)
            write(temporary)
            os.chmod(temporary, 0o666 & ~umask)
        done = []
        try:
            for (path, _), temporary in zip(writes, temporaries):
                os.replace(temporary, path)
                done.append(path)
        except BaseException:
            for path in done:
                if os.path.isfile(path):
                    os.remove(path)
            raise
    finally:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)
