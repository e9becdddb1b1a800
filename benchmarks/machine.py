"""Describe the machine and software a result was measured on (no framework is imported)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from gpreg.tools.timing import usable_cores

ROOT = Path(__file__).resolve().parents[1]

#: distributions whose versions are recorded (first one installed of each tuple)
PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "jax": ("jax",),
    "jaxlib": ("jaxlib",),
    "numpy": ("numpy",),
    "array-api-compat": ("array-api-compat",),
    "gpreg": ("gpreg",),
}


def _version(dists: tuple[str, ...]) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Total physical memory in GiB from /proc/meminfo, if readable."""
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), flags=re.M)
    except OSError:
        return None
    return round(int(m.group(1)) / 2**20, 1) if m else None


def git_revision() -> str | None:
    """``git describe``-like revision of the repository, with ``-dirty`` when modified."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    if not dirty.stdout.strip():
        return rev.stdout.strip()
    # Uncommitted changes to the library: identify them by a hash of the diff.
    diff = subprocess.run(["git", "diff", "HEAD", "--", "gpreg", "gpreg_torch", "gpreg_keras"],
                          cwd=ROOT, capture_output=True, timeout=10).stdout
    return f"{rev.stdout.strip()}-dirty (library diff sha1 {hashlib.sha1(diff).hexdigest()[:10]})"


def describe(device: str, gpu_name: str | None = None) -> dict[str, Any]:
    """The machine record stored at the top of every result file."""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
        "gpu": gpu_name,
        "versions": {k: _version(v) for k, v in PACKAGES.items()},
        "git": git_revision(),
    }


def host_kind(device: str, gpu_name: str | None = None) -> str:
    """A short file-name-safe label: ``cpu-2core`` or ``cuda-nvidia-h100-80gb-hbm3``."""
    if device == "cpu":
        return f"cpu-{usable_cores()}core"
    name = (gpu_name or "gpu").lower()
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")
