"""Write the shared docstrings into the adapters' source files, or check that they are there.

The specification of every templated public function (the penalties, ``gradient_penalty``,
``grad_norm``, ``check_critic``, ``cost``) is written once, in ``gpreg/_docs.py`` and
``gpreg/_doc_inputs.py``. This script renders it for each adapter and puts the text into the
function's source as a raw docstring, so that what an editor's hover or a static tool reads in
the source is the specification. Usage::

    python tools/docstrings.py           # check: exit 1 and list the stale functions
    python tools/docstrings.py --write   # rewrite the stale docstrings in place
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpreg._docs import generated  # noqa: E402


def _literal(text: str) -> str:
    """``text`` as a raw triple-quoted string literal (refused if it cannot be one)."""
    if '"""' in text or text.endswith("\\"):
        raise ValueError(f"cannot write a raw docstring holding {text[:60]!r}...")
    return f'r"""{text}"""'


def _function(tree: ast.Module, name: str, path: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"{path}: no module-level function {name!r}")


def stale(write: bool = False) -> list[str]:
    """``"file: function"`` for every docstring that differs from the templates (rewritten in
    place with ``write``)."""
    by_file: dict[str, dict[str, str]] = {}
    for (path, name), text in generated().items():
        by_file.setdefault(path, {})[name] = text
    out = []
    for path, wanted in by_file.items():
        file = ROOT / path
        source = file.read_text()
        tree = ast.parse(source)
        lines = source.splitlines(keepends=True)
        edits = []
        for name, text in wanted.items():
            fn = _function(tree, name, path)
            if ast.get_docstring(fn, clean=False) == text:
                continue
            out.append(f"{path}: {name}")
            first = fn.body[0]
            indent = " " * first.col_offset
            new = f"{indent}{_literal(text)}\n"
            has_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                       and isinstance(first.value.value, str))
            if has_doc:
                edits.append((first.lineno - 1, first.end_lineno, new))
            else:
                edits.append((first.lineno - 1, first.lineno - 1, new))
        if write and edits:
            for start, end, new in sorted(edits, reverse=True):
                lines[start:end] = [new]
            file.write_text("".join(lines))
    return out


def main(argv: list[str]) -> int:
    write = "--write" in argv
    found = stale(write)
    if found and not write:
        print("stale docstrings (run python tools/docstrings.py --write):\n  "
              + "\n  ".join(found))
        return 1
    if found:
        print("rewrote:\n  " + "\n  ".join(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
