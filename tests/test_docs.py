"""The README example and the docstring examples run and give the documented numbers."""

import doctest
import importlib
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_example_reproduces_the_spec_golden_values():
    code = re.search(r"## Example\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    # SPEC.md §10 (independent float64 implementation of the official method), x64 is on in the suite
    np.testing.assert_allclose(np.asarray(namespace["x0"])[0], [-0.01486551, 0.65223198, 1.37064466], atol=2e-8)
    assert namespace["samples"].shape == (16, 3)


MODULES = ["scire_jax.core.schedules", "scire_jax.core.timesteps", "scire_jax.core.wrapping", "scire_jax.core.sampling",
           "scire_jax.core.solvers.scire", "scire_jax.core.solvers.dpm", "scire_jax.core.solvers.unipc", "scire_jax.apps.comparison",
           "scire_jax.apps.images"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
