"""Every ```python block in the Markdown pages of docs/ runs, in the framework it is written for.

How a page marks its blocks (the line right before the opening fence, blank lines allowed):

    <!-- test: torch -->              run in this process (PyTorch, gpreg_torch)
    <!-- test: keras-tensorflow -->   run in a subprocess with KERAS_BACKEND=tensorflow
    <!-- test: keras-jax -->          ... KERAS_BACKEND=jax
    <!-- test: keras-torch -->        ... KERAS_BACKEND=torch
    <!-- test: skip REASON -->        deliberately not run; the reason is required

Hidden set-up code that a reader does not need to see goes in a comment of its own; it runs
before the next blocks of that runner on the page:

    <!-- test-setup: torch
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    -->

The blocks of one page and one runner share a namespace and run in page order, like a reader
going down the page; each page starts from a fresh namespace and fixed seeds. An unmarked
python block fails the suite, so nothing is skipped by accident.

A Keras backend whose packages are not installed is skipped, unless the environment variable
GPREG_DOCS_STRICT=1 says the run asked for every backend (then it fails).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXCLUDED = ("_build", "api/generated", "_templates")
EXCLUDED_FILES = ("_bench_notes.md",)  # the benchmarks' notes, not written for these tests

KERAS_RUNNERS = {"keras-tensorflow": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}
RUNNERS = ("torch", *KERAS_RUNNERS)
SUBPROCESS_TIMEOUT_S = 900
MAX_LINE = 88  # characters of a code line that fit the content column

MARKER = re.compile(r"^<!--\s*test:\s*(?P<runner>[\w-]+)(?P<rest>.*?)\s*-->\s*$")
SETUP = re.compile(r"^<!--\s*test-setup:\s*(?P<runner>[\w-]+)\s*$")
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    page: str  # path relative to docs/
    line: int  # 1-based line of the first code line
    runner: str  # a RUNNERS entry, or "skip", or "" when unmarked
    code: str
    hidden: bool = False  # a test-setup comment
    note: str = ""

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def pages() -> list[Path]:
    found = []
    for path in sorted(DOCS.rglob("*.md")):
        rel = path.relative_to(DOCS).as_posix()
        if rel in EXCLUDED_FILES or any(rel.startswith(e) for e in EXCLUDED):
            continue
        found.append(path)
    return found


def _is_python(info: str) -> bool:
    info = info.strip()
    return info in ("python", "py", "python3") or bool(
        re.match(r"^\{code-block\}\s+(python|py|python3)\b", info)
    )


def parse(path: Path) -> list[Block]:
    """The python blocks (and hidden set-up code) of one page, in page order."""
    rel = path.relative_to(DOCS).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    marker: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        setup = SETUP.match(line)
        if setup:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->"), None)
            if end is None:
                raise ValueError(f"docs/{rel}:{i + 1}: test-setup comment is never closed")
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            blocks.append(Block(rel, i + 2, setup["runner"], code, hidden=True))
            i = end + 1
            continue
        m = MARKER.match(line)
        if m:
            marker = (m["runner"], m["rest"].strip())
            i += 1
            continue
        fence = FENCE.match(line)
        if fence:
            close = fence["fence"]
            end = next(
                (j for j in range(i + 1, len(lines))
                 if lines[j].startswith(close[0] * len(close)) and not lines[j].strip(close[0])),
                len(lines),
            )
            info = fence["info"].strip()
            if _is_python(info):
                body = [ln for ln in lines[i + 1 : end] if not ln.startswith(":")]  # myst options
                runner, note = marker if marker else ("", "")
                blocks.append(Block(rel, i + 2, runner, "\n".join(body), note=note))
            elif info.startswith("{") and not re.match(r"^\{(code-block|code|sourcecode)\}", info):
                marker = None  # a directive (admonition, tab...): look for blocks inside it
                i += 1
                continue
            marker = None
            i = end + 1
            continue
        if line.strip():
            marker = None  # a marker only applies to the block right after it
        i += 1
    return blocks


ALL_BLOCKS = [b for p in pages() for b in parse(p)]


def _cases() -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for b in ALL_BLOCKS:
        if b.runner in RUNNERS and not b.hidden:
            seen[(b.page, b.runner)] = None
    return list(seen)


def _program(page: str, runner: str) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.page == page and b.runner == runner]


# --- the marks themselves ----------------------------------------------------------------

def test_pages_have_python_blocks():
    assert ALL_BLOCKS, "no ```python blocks found under docs/; is the parser broken?"


def test_every_python_block_is_marked():
    unmarked = [b.where for b in ALL_BLOCKS if not b.runner]
    assert not unmarked, (
        "python blocks without a '<!-- test: RUNNER -->' line before them (runners: "
        f"{', '.join(RUNNERS)}, or 'skip REASON'): {', '.join(unmarked)}"
    )


def test_markers_name_known_runners():
    bad = [f"{b.where} ({b.runner})" for b in ALL_BLOCKS
           if b.runner and b.runner not in RUNNERS and b.runner != "skip"]
    assert not bad, f"unknown runners {bad}; known: {', '.join(RUNNERS)}, skip"
    bad_setup = [b.where for b in ALL_BLOCKS if b.hidden and b.runner not in RUNNERS]
    assert not bad_setup, f"test-setup comments need a runner of {RUNNERS}: {bad_setup}"


def test_skipped_blocks_say_why():
    silent = [b.where for b in ALL_BLOCKS if b.runner == "skip" and not b.note]
    assert not silent, f"'<!-- test: skip -->' needs a reason: {', '.join(silent)}"


def test_code_lines_fit_the_page():
    """Wider lines scroll sideways in the theme's content column; keep examples readable."""
    long = [f"{b.where} (+{i}: {len(line)} characters)" for b in ALL_BLOCKS if not b.hidden
            for i, line in enumerate(b.code.splitlines()) if len(line) > MAX_LINE]
    assert not long, f"code lines longer than {MAX_LINE} characters: {', '.join(long)}"


def test_blocks_compile():
    for b in ALL_BLOCKS:
        if b.runner:
            compile(b.code, b.where, "exec")


# --- running them ------------------------------------------------------------------------

def _run_torch(page: str) -> None:
    pytest.importorskip("torch")
    import torch

    from gpreg import _specs

    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    registry = dict(_specs._registry)  # pages may register example penalties: undo that after
    try:
        for b in _program(page, "torch"):
            try:
                exec(compile(b.code, b.where, "exec"), namespace)
            except Exception:
                pytest.fail(f"the block at {b.where} failed:\n{traceback.format_exc()}")
    finally:
        _specs._registry.clear()
        _specs._registry.update(registry)


DRIVER = r"""
import json, sys, traceback
programs = json.load(open(sys.argv[1]))
results = {}
from gpreg import _specs
registry = dict(_specs._registry)
for page, blocks in programs.items():
    import keras
    keras.utils.set_random_seed(0)  # seeds Python, NumPy and the backend
    _specs._registry.clear()
    _specs._registry.update(registry)
    namespace = {"__name__": "__docs__"}
    results[page] = None
    for where, code in blocks:
        try:
            exec(compile(code, where, "exec"), namespace)
        except BaseException:
            results[page] = f"the block at {where} failed:\n" + traceback.format_exc()
            break
json.dump(results, open(sys.argv[2], "w"))
"""

class _KerasRun:
    """One subprocess per Keras backend runs every page written for it (Keras reads
    KERAS_BACKEND once per process); each page still gets a fresh namespace. The first Keras
    test starts the processes of every installed backend at once, so they run side by side."""

    def __init__(self, runner: str, tmp: Path) -> None:
        self.runner = runner
        programs = {
            p: [(b.where, b.code) for b in _program(p, runner)]
            for p, r in _cases() if r == runner
        }
        src, self.out = tmp / f"{runner}.json", tmp / f"{runner}.results.json"
        src.write_text(json.dumps(programs))
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "KERAS_BACKEND": KERAS_RUNNERS[runner],
               "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(src), str(self.out)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.results: dict[str, str | None] | None = None

    def result(self, page: str) -> str | None:
        if self.results is None:
            try:
                stdout, stderr = self.proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                stdout, stderr = self.proc.communicate()
            if self.proc.returncode != 0 or not self.out.exists():
                self.results = {}
                pytest.fail(f"{self.runner}: the block runner crashed (exit "
                            f"{self.proc.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
            self.results = json.loads(self.out.read_text())
        if page not in self.results:
            return f"{page} was not run: the block runner crashed (see the first failure)"
        return self.results[page]


_keras_runs: dict[str, _KerasRun] = {}


def _backend_missing(backend: str) -> str | None:
    for pkg in ("keras", backend):
        if importlib.util.find_spec(pkg) is None:
            return pkg
    return None


def _run_keras(page: str, runner: str, tmp: Path) -> None:
    missing = _backend_missing(KERAS_RUNNERS[runner])
    if missing:
        if os.environ.get("GPREG_DOCS_STRICT") == "1":
            pytest.fail(f"{runner}: {missing} is not installed, and GPREG_DOCS_STRICT=1")
        pytest.skip(f"{runner}: {missing} is not installed")
    if not _keras_runs:
        for other in {r for _, r in _cases() if r in KERAS_RUNNERS}:
            if not _backend_missing(KERAS_RUNNERS[other]):
                _keras_runs[other] = _KerasRun(other, tmp)
    failure = _keras_runs[runner].result(page)
    if failure:
        pytest.fail(f"{runner}: {failure}")


@pytest.fixture(scope="module")
def keras_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("doc_blocks")


@pytest.mark.parametrize(("page", "runner"), _cases(), ids=[f"{p}-{r}" for p, r in _cases()])
def test_page_blocks_run(page: str, runner: str, keras_tmp: Path) -> None:
    if runner == "torch":
        _run_torch(page)
    else:
        _run_keras(page, runner, keras_tmp)
