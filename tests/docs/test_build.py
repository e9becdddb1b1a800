"""The Sphinx site builds offline with warnings as errors, documents every public name, and
its formulas render in a browser with no network.

Needs the packages of requirements-docs.txt (Sphinx, furo, myst-parser, the bundled MathJax).
Without Sphinx the tests skip, unless GPREG_DOCS_STRICT=1 says the run must build the docs
(then they fail). The build runs once per session, into a temporary directory, in its own
process:

    python -m sphinx -W --keep-going -b html docs <tmp>/html

The math test opens built pages in headless Chromium (``chromium`` on the PATH, or the binary
that GPREG_CHROMIUM names; Debian and Ubuntu: ``apt-get install -y chromium``); without it the
test fails and says how to install it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGES = ("gpreg", "gpreg_torch", "gpreg_keras")
BUILD_TIMEOUT_S = 900


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("GPREG_DOCS_STRICT") == "1":
            pytest.fail(f"{module} is not installed (pip install -r requirements-docs.txt)")
        pytest.skip(f"{module} is not installed (pip install -r requirements-docs.txt)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("sphinx", "furo", "myst_parser"):
        _require(module)
    out = tmp_path_factory.mktemp("docs") / "html"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("GPREG_DOCS_INTERSPHINX", None)  # the build under test is the offline one
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOCS), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"the docs build failed (exit {proc.returncode}); warnings count as errors:\n"
        f"{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}"
    )
    return out


def test_build_succeeds_with_warnings_as_errors(site: Path) -> None:
    assert (site / "index.html").exists()


def _inventory(site: Path) -> set[str]:
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as f:
        inv = InventoryFile.load(f, "", lambda base, uri: uri)
    names: set[str] = set()
    for role, entries in inv.items():
        if role.startswith("py:"):
            names.update(entries)
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_api_reference_documents_every_public_name(site: Path, package: str) -> None:
    documented = _inventory(site)
    # a re-export of a core object (LazyRegularization) is indexed once, under gpreg
    missing = sorted(n for n in _public_names(package)
                     if f"{package}.{n}" not in documented and f"gpreg.{n}" not in documented)
    assert not missing, f"{package}: names in __all__ without an API entry: {missing}"


def _public_names(package: str) -> list[str]:
    """``__all__`` read from the source: the check needs no framework installed."""
    source = (ROOT / package / "__init__.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{package}/__init__.py has no literal __all__")


def test_constants_have_descriptions(site: Path) -> None:
    html = (site / "api" / "generated" / "gpreg.html").read_text(encoding="utf-8")
    assert "UNDOCUMENTED CONSTANT" not in html, (
        "a constant in gpreg.__all__ has no sentence in docs/conf.py's data_docs"
    )


def test_cost_page_shows_the_measurements_or_says_they_are_missing(site: Path) -> None:
    html = (site / "cost.html").read_text(encoding="utf-8")
    if (DOCS / "_bench_notes.md").exists():
        assert "_bench_notes.md" in html and "Placeholder: measured numbers" not in html
    else:
        assert "Placeholder: measured numbers" in html


# -- math, rendered offline ------------------------------------------------------------------
# a Markdown page (dollar math, inline and displayed) and an API page (the docstrings' math)
MATH_PAGES = ("penalties/wgan_gp.html", "api/generated/gpreg_torch.html")
BROWSER_TIMEOUT_S = 180


def _chromium() -> str:
    found = os.environ.get("GPREG_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if not found:
        pytest.fail("the docs' math test renders pages in headless Chromium, which is not "
                    "installed: on Debian or Ubuntu run apt-get install -y chromium (as root), "
                    "or set GPREG_CHROMIUM to a Chromium or Chrome binary")
    return found


def _rendered(page: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with the network cut off
    (every http(s) request goes to a proxy on a closed local port): only what the site ships
    can load."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--proxy-server=http://127.0.0.1:9",
           "--virtual-time-budget=30000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert proc.returncode == 0 and "</html>" in proc.stdout, (
        f"headless Chromium failed on {page.name} (exit {proc.returncode}):\n"
        f"{proc.stderr[-3000:]}")
    return proc.stdout


def _text(html: str) -> str:
    """What a reader sees as text: no scripts, styles or tags."""
    html = re.sub(r"<(script|style)\b.*?</\1>", "", html, flags=re.S | re.I)
    return re.sub(r"<[^>]+>", "", html)


@pytest.mark.parametrize("name", MATH_PAGES)
def test_math_renders_offline_in_a_browser(site: Path, tmp_path: Path, name: str) -> None:
    """Every formula of the page is typeset by the MathJax the site ships (no CDN): as many
    MathJax containers as math elements, each with glyphs, no TeX error, and no raw TeX
    delimiters left in the text."""
    page = site / name
    formulas = page.read_text(encoding="utf-8").count('class="math notranslate nohighlight"')
    assert formulas > 0, f"{name} has no math to check"
    dom = _rendered(page, tmp_path / "profile")
    containers = re.findall(r"<mjx-container\b.*?</mjx-container>", dom, flags=re.S)
    assert len(containers) == formulas, (
        f"{name}: {len(containers)} of {formulas} formulas typeset (MathJax did not load or "
        f"run?)")
    assert all("<mjx-c " in c or "<mjx-c>" in c for c in containers), "a formula without glyphs"
    assert "<mjx-merror" not in dom, f"{name}: MathJax reports a TeX error"
    text = _text(re.sub(r"<mjx-container\b.*?</mjx-container>", "", dom, flags=re.S))
    for raw in ("\\(", "\\)", "\\[", "\\]"):
        assert raw not in text, f"{name}: raw TeX left in the page ({raw!r})"


def test_no_page_loads_scripts_from_the_network(site: Path) -> None:
    """The built pages load every script from the site itself."""
    remote = sorted({(p.relative_to(site).as_posix(), src)
                     for p in site.rglob("*.html")
                     for src in re.findall(r'<script[^>]*\bsrc="((?:https?:)?//[^"]+)"',
                                           p.read_text(encoding="utf-8"))})
    assert not remote, f"pages that load scripts from the network: {remote}"
