"""`gpreg --version`, and the files a clone should not track."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_version(launcher):
    """``gpreg --version`` and ``python -m gpreg --version`` name the version the project
    declares and where the running gpreg lies."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    import gpreg

    assert gpreg.__version__ == declared
    for start in (["-m", "gpreg"], [str(launcher)]):
        proc = subprocess.run([sys.executable, *start, "--version"], capture_output=True,
                              text=True, cwd=launcher.parent)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"gpreg {declared} from {Path(gpreg.__file__).parent} ")


def test_version_from_a_folder_holding_a_directory_named_gpreg(shadowed_folder):
    work, start = shadowed_folder
    proc = subprocess.run([sys.executable, *start, "--version"], capture_output=True,
                          text=True, cwd=work)
    assert proc.returncode == 0 and proc.stdout.startswith("gpreg "), proc.stderr[-2000:]


def test_the_demo_gallery_is_ignored_by_git():
    """``gpreg demo`` run in a clone writes gpreg-demo.png there: git ignores it."""
    from gpreg.tools.demo import DEFAULT_OUT

    assert DEFAULT_OUT in (ROOT / ".gitignore").read_text().splitlines()
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "check-ignore", "-q", DEFAULT_OUT], cwd=ROOT)
    assert proc.returncode == 0, f"git does not ignore {DEFAULT_OUT}"
