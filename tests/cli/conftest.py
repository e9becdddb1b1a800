"""Shared by the command-line tests."""

from __future__ import annotations

import pytest

# a current folder that holds a directory named gpreg, as files to create there
SHADOWS = {
    # the folder that holds a clone: a directory named gpreg without __init__.py (a namespace
    # package ahead of an editable install, which Python finds last)
    "clone-folder": {"gpreg/README.md": "a clone's top folder\n"},
    # a package of that name, which would win over any other gpreg on the path
    "same-name-package": {"gpreg/__init__.py":
                          "raise ImportError('the gpreg folder in the current folder')\n"},
}


@pytest.fixture
def launcher(tmp_path):
    """A script that starts the gpreg command line as the installed ``gpreg`` script does: its
    own folder, not the current one, leads ``sys.path``."""
    path = tmp_path / "bin" / "gpreg-launcher.py"
    path.parent.mkdir()
    path.write_text("import sys\n\nfrom gpreg.tools.cli import main\n\n"
                    "if __name__ == '__main__':\n    sys.exit(main())\n")
    return path


@pytest.fixture(params=[("clone-folder", "script"), ("clone-folder", "python -m"),
                        ("same-name-package", "script")],  # python -m would import it itself
                ids=lambda p: f"{p[0]}, {p[1]}")
def shadowed_folder(request, tmp_path, launcher):
    """``(folder, start)``: a current folder holding a directory named gpreg, and the arguments
    of ``python`` that start the gpreg command line there: ``-m gpreg`` or the launcher."""
    kind, how = request.param
    work = tmp_path / "work"
    for name, text in SHADOWS[kind].items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    if how == "python -m":
        return work, ["-m", "gpreg"]
    return work, [str(launcher)]
