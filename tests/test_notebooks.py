"""The Colab notebooks (colab/*.ipynb) run top to bottom in smoke mode, headless, on CPU.

Each notebook is executed with nbclient in a fresh ``python3`` kernel of this interpreter
(jupyter_client starts a kernelspec whose argv is ``python`` with ``sys.executable``) with
``SCIRE_JAX_SMOKE=1`` (and XLA's quick CPU compilation); its last cell asserts on the results.  ``pretrained_tpu`` runs on two
simulated CPU devices so that the batch really is sharded.  The fast tests check that the committed
notebooks are small, valid and jupytext's conversions of their py:percent sources ``colab/NAME.py``,
which are lint-clean Python.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = ("quickstart", "pretrained_tpu", "accuracy_study", "stable_diffusion_tpu", "imagenet_guided",
             "edm_cifar10_fid")
# Smoke runs check behaviour, not speed: XLA's CPU backend optimisation level 0 cuts compile times
# (random initialisation of the stand-in UNets compiles ~4x faster on a busy 2-core machine).
XLA_FLAGS = ["--xla_backend_optimization_level=0"]
EXTRA_XLA_FLAGS = {"pretrained_tpu": ["--xla_force_host_platform_device_count=2"],
                   "stable_diffusion_tpu": ["--xla_force_host_platform_device_count=2"],
                   "imagenet_guided": ["--xla_force_host_platform_device_count=2"]}
# level 0 makes the classifier gradient of guided sampling ~20x slower: those notebooks keep XLA's default
FULL_OPTIMISATION = ("imagenet_guided",)
MAX_BYTES = 300 * 1024


# what the last cell prints: pretrained_tpu never downloads in smoke mode, so it says it fell back
FINAL_LINE = {"quickstart": "all checks passed", "accuracy_study": "all checks passed",
              "pretrained_tpu": "checks passed, but on the FALLBACK model: RANDOM weights, not google/ddpm-cifar10-32",
              "stable_diffusion_tpu": "checks passed, but on RANDOM smoke weights",
              "imagenet_guided": "checks passed, but on the FIXTURE weights",
              "edm_cifar10_fid": "checks passed in SMOKE mode: the fixture network and RANDOM Inception weights"}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_small_and_the_conversion_of_its_source(name):
    nbformat = pytest.importorskip("nbformat")
    jupytext = pytest.importorskip("jupytext")
    path = COLAB / f"{name}.ipynb"
    assert path.stat().st_size < MAX_BYTES
    notebook = nbformat.read(str(path), as_version=4)
    nbformat.validate(notebook)
    converted = jupytext.read(str(COLAB / f"{name}.py"))
    cells = [(cell.cell_type, cell.source) for cell in notebook.cells]
    assert cells == [(cell.cell_type, cell.source) for cell in converted.cells], (
        f"regenerate with: jupytext --to ipynb --update colab/{name}.py")
    for key in ("kernelspec", "accelerator", "colab"):
        assert notebook.metadata.get(key) == converted.metadata.get(key), key
    assert f"colab/{name}.ipynb" in cells[0][1]  # the Open in Colab badge
    assert "def find_checkout(" in cells[1][1] and 'pip_install("scire-jax")' in cells[1][1]  # the install cell
    for cell in notebook.cells:  # outputs stripped except figures
        for output in cell.get("outputs", []):
            assert set(output.get("data", {})) <= {"image/png", "text/plain"}, output.get("output_type")


def test_notebook_sources_are_lint_clean_python():
    sources = [str(COLAB / f"{name}.py") for name in NOTEBOOKS]
    for source in sources:
        compile(pathlib.Path(source).read_text(), source, "exec")
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).parent / "ruff")
    if not os.path.exists(ruff):
        pytest.skip("ruff is not installed")
    result = subprocess.run([ruff, "check", *sources], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_cell_uses_the_checkout_else_the_published_package(monkeypatch, tmp_path):
    import importlib.util

    source = compile((COLAB / "quickstart.py").read_text().split("# %%")[2], "install cell", "exec")
    pip_calls, pip_codes = [], []

    class Finished:
        def __init__(self, returncode):
            self.returncode = returncode

    def fake_run(command, *args, **kwargs):
        pip_calls.append(command[3:])  # [sys.executable, "-m", "pip", "install", ...]
        return Finished(pip_codes.pop(0) if pip_codes else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    # opened inside a checkout of scire-jax that is not the importable one: pip install -e of the checkout
    checkout = (tmp_path / "clone").resolve()
    (checkout / "colab").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "scire-jax"\nversion = "0.1.0"\n')
    monkeypatch.chdir(checkout / "colab")
    monkeypatch.setattr(sys, "path", list(sys.path))
    namespace = {}
    exec(source, namespace)
    assert namespace["CHECKOUT"] == checkout
    assert pip_calls == [["install", "-q", "-e", str(checkout)]] and sys.path[0] == str(checkout)
    # no checkout, scire_jax importable: nothing is installed
    pip_calls.clear()
    monkeypatch.chdir(tmp_path)
    exec(source, {})
    assert pip_calls == []
    # no checkout, scire_jax not importable, pip fails: a clear error in the first cell
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "scire_jax" else real_find_spec(name, *args))
    pip_codes.append(1)
    with pytest.raises(RuntimeError, match="not inside a scire-jax checkout .* `pip install scire-jax` failed"):
        exec(source, {})
    assert pip_calls == [["install", "-q", "scire-jax"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("SCIRE_JAX_SMOKE", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    flags = ([os.environ.get("XLA_FLAGS", "")] + ([] if name in FULL_OPTIMISATION else XLA_FLAGS)
             + EXTRA_XLA_FLAGS.get(name, []))
    monkeypatch.setenv("XLA_FLAGS", " ".join(filter(None, flags)))
    notebook = nbformat.read(str(COLAB / f"{name}.ipynb"), as_version=4)
    # Guard: the kernel must be this interpreter (else the install cell would try the network).
    notebook.cells.insert(0, nbformat.v4.new_code_cell(
        f"import sys\nassert sys.prefix == {sys.prefix!r}, (sys.prefix, sys.executable)"))
    client = nbclient.NotebookClient(notebook, timeout=600, startup_timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = notebook.cells[-1].outputs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert FINAL_LINE[name] in text, json.dumps(outputs)[:2000]
    if name in ("pretrained_tpu", "stable_diffusion_tpu", "imagenet_guided", "edm_cifar10_fid"):
        assert "all checks passed" not in text
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
