"""No training code in the README, the docs or the examples draws a frozen alpha: a penalty
call there never gets an int literal as ``seed=`` (an int is a fixed draw, the same numbers on
every call; issue 14.5). Text only: no framework is imported."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "docs" / "penalties").glob("*.md")),
         *sorted((ROOT / "examples").glob("*.py"))]
CALL = re.compile(r"\bgp\.(\w+)\(")


def calls(text: str) -> list[tuple[str, str]]:
    """``(name, argument text)`` of every ``gp.name(...)`` call, nested parentheses included."""
    out = []
    for match in CALL.finditer(text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        out.append((match.group(1), text[match.end():i - 1]))
    return out


def test_no_penalty_call_in_docs_or_examples_uses_an_int_seed():
    offenders = []
    for path in FILES:
        for name, args in calls(path.read_text(encoding="utf-8")):
            if re.search(r"\bseed\s*=\s*\d", args):
                offenders.append(f"{path.relative_to(ROOT)}: gp.{name}({args.strip()[:60]}...)")
    assert not offenders, "int seeds (a fixed alpha every step) in:\n" + "\n".join(offenders)


def test_the_scan_finds_what_it_looks_for():
    found = calls("x = gp.wgan_gp(D, real, fake,\n    seed=0, kwargs=dict(a=(1, 2)))")
    assert found and re.search(r"\bseed\s*=\s*\d", found[0][1])
