"""Plain-text helpers of the command line (NumPy-free, framework-free)."""

from __future__ import annotations

from collections.abc import Sequence


def render_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A left-aligned text table: the header, a rule of dashes, one line per row."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*row) for row in body]
    return "\n".join(line.rstrip() for line in lines)


def name_list(text: str | None, what: str, known: Sequence[str]) -> list[str]:
    """The names of a comma-separated option, stripped and without repeats, in order; all of
    ``known`` when the option was not given. ``ValueError`` (listing the valid names) for an
    empty list or an unknown name."""
    if text is None:
        return list(known)
    names = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not names:
        raise ValueError(f"no {what} given in {text!r}; choose from {', '.join(known)}")
    bad = [x for x in names if x not in known]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(known)}")
    return names
