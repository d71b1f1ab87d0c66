"""The README example and the docstring examples run and give the documented numbers."""

import doctest
import importlib
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_example_reproduces_the_official_values(x64):
    code = re.search(r"## Example\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    # the official method's float64 output for this example (tests/data/reference)
    np.testing.assert_allclose(np.asarray(namespace["x0"])[0], [-0.01486551, 0.65223198, 1.37064466], atol=2e-8)
    assert namespace["samples"].shape == (16, 3)


MODULES = ["scire_jax.core.schedules", "scire_jax.core.timesteps", "scire_jax.core.wrapping",
           "scire_jax.core.sampling", "scire_jax.core.solvers.scire", "scire_jax.core.solvers.dpm",
           "scire_jax.core.solvers.unipc", "scire_jax.core.solvers.deis", "scire_jax.core.solvers.registry",
           "scire_jax.core.diffusers_grid", "scire_jax.io.pretrained", "scire_jax.apps.comparison"]
ROOT = README.parent
# a path-looking reference: a word with a slash or a known top-level file, ending in a file suffix
REFERENCE = re.compile(r"(?<![\w/.:-])((?:scire_jax|tests|docs|benchmarks|colab|\.ci)/[\w./-]*\w|[\w-]+\.(?:md))\b")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _text_files():
    yield from [README, *ROOT.joinpath("docs").glob("*.md"), *ROOT.joinpath("scire_jax").rglob("*.py"),
                 *ROOT.joinpath("benchmarks").glob("*.py"), *ROOT.joinpath("benchmarks").glob("*.md"),
                 *ROOT.joinpath("colab").glob("*.py"), *ROOT.joinpath("colab").glob("*.md")]


def test_every_referenced_file_exists_in_the_repository():
    missing = []
    for path in _text_files():
        for match in REFERENCE.finditer(path.read_text()):
            reference = match.group(1).rstrip(".")
            if "/" not in reference and path.parent.name not in ("docs", ROOT.name):
                continue  # a bare file name in code or a script is an output name, not a reference
            candidates = [ROOT / reference, path.parent / reference]
            if "*" in reference or "{" in reference or "<" in reference:
                continue
            if not any(c.exists() for c in candidates):
                missing.append(f"{path.relative_to(ROOT)}: {reference}")
    assert not missing, "references to files that are not in the repository:\n" + "\n".join(missing)


def test_readme_solver_table_lists_every_registered_solver():
    from scire_jax.core.solvers import registry

    text = README.read_text()
    table = re.search(r"<!-- solvers -->(.*?)<!-- /solvers -->", text, re.S)
    assert table, "README needs the solver table between <!-- solvers --> markers"
    expected = registry.markdown_table()
    assert table.group(1).strip() == expected.strip(), "README solver table is stale: paste registry.markdown_table()"
