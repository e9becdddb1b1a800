"""The README's commands are the ones CI runs, and the install files agree with each other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bash_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(),
                                          flags=re.S)]


def _block(word: str) -> str:
    return next(b for b in _bash_blocks() if word in b)


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(requirements: list[str]) -> dict[str, str]:
    """name -> version of the ``name==version`` requirements (markers dropped)."""
    out = {}
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9_.\-\[\]]+)==([^;\s]+)", req)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_ci_runs_the_readme_test_command():
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _block("run_tests.py") in ci


def test_ci_installs_chromium_before_the_tests():
    """The docs tests need headless Chromium; a fresh CI machine has none."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install -y -q chromium" in ci
    assert ci.index("apt-get install") < ci.index(_block("run_tests.py"))


def test_one_tensorflow_in_the_test_install():
    """The test extra brings tensorflow-cpu only; tf-keras, which requires the `tensorflow`
    package (a second, GPU-capable TensorFlow), comes without its dependencies, in the
    version of that TensorFlow."""
    test = _pins(_project()["optional-dependencies"]["test"])
    assert "tensorflow-cpu" in test and "tensorflow" not in test and "tf-keras" not in test
    m = re.search(r'pip install --no-deps "tf-keras==([^"]+)"', _block("run_tests.py"))
    assert m, "the README's test command installs tf-keras with --no-deps"
    assert m.group(1).split(".")[:2] == test["tensorflow-cpu"].split(".")[:2]
    assert test["torch"] in _block("download.pytorch.org/whl/cpu")  # the CPU build, same pin


def test_the_docs_install_files_agree():
    """requirements-docs.txt, the docs extra, Read the Docs and the README's docs command."""
    yaml = pytest.importorskip("yaml")
    lines = (ROOT / "requirements-docs.txt").read_text().splitlines()
    requirements = _pins([ln for ln in lines if ln.strip() and not ln.startswith("#")])
    project = _project()
    assert requirements == _pins(project["optional-dependencies"]["docs"])
    assert "sphinx-mathjax-offline" in requirements  # the math renders offline
    rtd = yaml.safe_load((ROOT / ".readthedocs.yaml").read_text())
    assert {"requirements": "requirements-docs.txt"} in rtd["python"]["install"]
    assert rtd["sphinx"] == {"configuration": "docs/conf.py", "fail_on_warning": True}
    torch = _pins(project["optional-dependencies"]["test"])["torch"]
    assert any(f'"torch=={torch}" --index-url https://download.pytorch.org/whl/cpu' in job
               for job in rtd["build"]["jobs"]["pre_install"])
    docs = _block("sphinx")
    assert "pip install -r requirements-docs.txt" in docs
    assert "-m sphinx -b html docs docs/_build/html" in docs and "index.html" in docs
