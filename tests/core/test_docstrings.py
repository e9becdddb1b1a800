"""The public functions' docstrings are real in the source files (editors and static tools
read them there) and equal the shared templates (gpreg/_docs.py, gpreg/_doc_inputs.py)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from gpreg import _docs

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("docstrings_tool", ROOT / "tools" /
                                                  "docstrings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_source_docstrings_are_the_rendered_templates():
    stale = _tool().stale(write=False)
    assert not stale, ("stale docstrings; run python tools/docstrings.py --write:\n"
                       + "\n".join(stale))


def test_every_templated_function_is_covered_in_both_adapters():
    done = set(_docs.generated())
    for adapter in ("gpreg_torch", "gpreg_keras"):
        for name in _docs.TEMPLATES:
            assert (f"{adapter}/_penalties.py", name) in done
        assert (f"{adapter}/_penalties.py", "check_critic") in done
        assert (f"{adapter}/_cost.py", "cost") in done


def test_no_adapter_sets_a_docstring_at_run_time():
    """A ``fn.__doc__ = ...`` would make the running docstring differ from the source's."""
    for path in list((ROOT / "gpreg_torch").glob("*.py")) + list((ROOT / "gpreg_keras").glob(
            "*.py")):
        assert not re.search(r"\.__doc__\s*=", path.read_text()), path.name


def test_generated_docstrings_fit_the_line_length():
    """No trailing spaces, no prose line over the project's line length (examples are the
    adapters' own lines, kept as written)."""
    for (path, name), text in _docs.generated().items():
        for line in text.splitlines()[:-1]:
            assert line == line.rstrip(), (path, name, line)
            if not line.lstrip().startswith((">>>", "...")):
                assert len(line) <= _docs.WIDTH, (path, name, line)


def test_fit_splits_a_long_names_entry_and_wraps_prose():
    names = ", ".join(f"option_{i}" for i in range(14))
    doc = (f"Summary.\n\n    Args:\n        {names}: as in :func:`wgan_gp`.\n        other: "
           + "a long description " * 8 + "\n    ")
    out = _docs._fit(doc)
    lines = out.splitlines()
    assert all(len(line) <= _docs.WIDTH for line in lines)
    entries = [ln for ln in lines if ln.endswith(": as in :func:`wgan_gp`.")]
    assert len(entries) > 1 and ", ".join(e.strip().split(":")[0] for e in entries) == names
    assert out.endswith("\n    ")  # the closing quotes keep their indentation
