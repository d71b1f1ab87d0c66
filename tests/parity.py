"""The one parity assertion of the suite: reference outputs within each case's tolerance, via chex.

``assert_parity(ours, reference, rtol, atol)`` checks, elementwise,
``|ours - reference| <= atol + rtol * |reference|`` with ``chex.assert_trees_all_close``; with
``scale="max"`` the relative part uses ``max |reference|`` instead (the "relative to the largest
entry" tolerances of the official fixtures: ``max |ours - ref| <= rtol * max |ref|``).
Non-finite entries must sit in the same places.
"""

from __future__ import annotations

import chex
import numpy as np


def assert_parity(ours, reference, rtol: float, atol: float = 0.0, *, scale: str = "elementwise",
                  what: str = "") -> None:
    """Assert ``ours`` matches ``reference`` (trees of arrays) within ``rtol`` / ``atol``."""
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape} != reference {reference.shape}"
    finite = np.isfinite(reference)
    np.testing.assert_array_equal(np.isfinite(ours), finite, err_msg=f"{what}: non-finite entries differ")
    if scale == "max":
        atol = atol + rtol * float(np.max(np.abs(reference[finite]), initial=0.0))
        rtol = 0.0
    elif scale != "elementwise":
        raise ValueError(f"scale={scale!r}; allowed: 'elementwise', 'max'")
    try:
        chex.assert_trees_all_close(np.where(finite, ours, 0.0), np.where(finite, reference, 0.0), rtol=rtol, atol=atol)
    except AssertionError as error:
        raise AssertionError(f"{what}: {error}") from None
