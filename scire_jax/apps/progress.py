"""The one progress display of the applications: a ``tqdm`` bar on stderr.

Sampling in chunks, ``scire-jax compare`` (the long reference solve included) and training show
their progress through :func:`progress`.  The bar is shown when its stream is a terminal and hidden
otherwise (logs, pipes, CI), unless forced: ``disable=False``, or the environment variable
``SCIRE_JAX_PROGRESS=1`` (``0`` hides every bar).

Example:
    >>> import io
    >>> stream = io.StringIO()
    >>> with progress(3, "demo", "chunk", disable=False, file=stream) as bar:
    ...     for _ in range(3):
    ...         bar.update(1)
    >>> "3/3" in stream.getvalue()
    True
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

from tqdm import tqdm

__all__ = ["ENVIRONMENT_VARIABLE", "progress", "step_callback"]

#: ``1`` forces every bar on (also when stderr is not a terminal), ``0`` hides every bar
ENVIRONMENT_VARIABLE = "SCIRE_JAX_PROGRESS"


def _disabled(disable: Optional[bool], stream) -> bool:
    if disable is not None:
        return bool(disable)
    forced = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return False
    if forced in ("0", "false", "no", "off"):
        return True
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def progress(total: Optional[int], desc: Optional[str] = None, unit: str = "it", disable: Optional[bool] = None, *,
             initial: int = 0, file=None, **kwargs) -> tqdm:
    """A ``tqdm`` progress bar writing to ``file`` (default ``sys.stderr``).

    Args:
      total: expected number of units (``None``: unknown).
      desc: label in front of the bar.
      unit: what is counted (``"sample"``, ``"step"``, ...).
      disable: ``True`` hides the bar, ``False`` forces it; ``None`` (default) shows it only when
        ``file`` is a terminal, unless :data:`ENVIRONMENT_VARIABLE` says otherwise.
      initial: the count the bar starts at (e.g. the step a training run resumes from).
      file: the stream (default stderr).
      **kwargs: passed on to ``tqdm`` (e.g. ``leave=False``).

    Returns:
      The bar: ``bar.update(n)``, ``bar.set_postfix(...)``, ``bar.close()`` (or use it in ``with``).
    """
    stream = sys.stderr if file is None else file
    options = {"dynamic_ncols": True, "smoothing": 0.1}
    options.update(kwargs)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, disable=_disabled(disable, stream),
                **options)


def step_callback(bar: tqdm) -> Callable:
    """``callback(step, t)`` for :func:`scire_jax.make_sampler` that advances ``bar`` by one per solver step.

    The sampler calls it on the host once per step (``jax.debug.callback``); the bar's postfix shows
    the time ``t`` of the step just taken.
    """

    def callback(step, t):
        bar.update(1)
        bar.set_postfix(t=f"{float(t):.4f}", refresh=False)

    return callback
