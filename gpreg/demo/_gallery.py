"""The ``gpreg demo`` gallery: one PNG, one column per penalty (matplotlib, Agg backend)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gpreg.demo._common import Run
from gpreg.demo._data import Dataset, quality


def check_writable(out: str) -> Path:
    """The absolute ``--out`` path, after proving that a file can be created next to it;
    raises ``ValueError`` with what to do otherwise (called before any training)."""
    path = Path(out).expanduser().absolute()
    if path.is_dir():
        raise ValueError(f"--out {out!r} is a directory; give a file path such as "
                         f"{os.path.join(out, 'gpreg-demo.png')!r}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out {out!r}: the gallery is a PNG image; give a path ending "
                         f"in .png")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {out!r}: {str(folder)!r} is not a folder; choose another "
                         f"path")
    if not folder.is_dir():
        raise ValueError(f"--out {out!r}: the folder {str(folder)!r} does not exist; "
                         f"create it or choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".gpreg-demo-", suffix=".tmp"):
            pass
    except OSError as exc:
        raise ValueError(f"--out {out!r}: cannot write to {str(folder)!r} "
                         f"({exc.strerror or exc}); choose a writable folder") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"--out {out!r} exists and is not writable; choose another path")
    return path


def _figure(runs: list[Run], data: Dataset, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    cols = len(runs)
    fig = Figure(figsize=(2.7 * cols, 8.4), layout="constrained")
    axes = fig.subplots(3, cols, squeeze=False)
    ext = data.extent
    lim = (-ext, ext)
    # one logarithmic range for every histogram, so the columns compare at a glance
    finite = [r.interp_norms[np.isfinite(r.interp_norms) & (r.interp_norms > 0)] for r in runs]
    pooled = np.concatenate([f for f in finite if f.size] or [np.ones(1)])
    lo = min(10 ** np.floor(np.log10(np.percentile(pooled, 0.5))), 0.1)
    hi = max(10 ** np.ceil(np.log10(np.percentile(pooled, 99.5))), 10.0)
    bins = np.logspace(np.log10(lo), np.log10(hi), 50)
    for j, run in enumerate(runs):
        q = quality(run.samples, data)
        ax = axes[0, j]
        ax.scatter(run.real[:, 0], run.real[:, 1], s=2, c="0.75", lw=0, label="data")
        pts = np.clip(run.samples, -ext, ext)  # points outside are pinned to the border
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:red", alpha=0.5, lw=0, label="generated")
        ax.set(xlim=lim, ylim=lim, aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"{run.penalty} ({run.loss} loss)\nmodes {q.modes_covered}/{q.modes}, "
                     f"high-quality {100 * q.high_quality:.0f}%", fontsize=9)
        ax = axes[1, j]
        land = run.landscape
        ok = np.isfinite(land)
        vmin, vmax = (np.percentile(land[ok], [1, 99]) if ok.any() else (0.0, 1.0))
        if vmax <= vmin:
            vmax = vmin + 1.0
        ax.imshow(np.clip(land, vmin, vmax), origin="lower", extent=(-ext, ext, -ext, ext),
                  cmap="viridis", vmin=vmin, vmax=vmax)
        if ok.all():
            ax.contour(np.linspace(-ext, ext, land.shape[1]), np.linspace(-ext, ext,
                       land.shape[0]), land, levels=10, colors="white", linewidths=0.4,
                       alpha=0.6)
        ax.scatter(data.centres[:, 0], data.centres[:, 1], s=8, c="red", marker="x", lw=0.8)
        ax.set(xlim=lim, ylim=lim, aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"critic D(x), range {vmin:.3g} … {vmax:.3g}", fontsize=8)
        ax = axes[2, j]
        norms = finite[j]
        ax.hist(np.clip(norms, lo, hi), bins=bins, color="tab:blue")
        ax.axvline(1.0, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_yticks([])
        mean = float(np.mean(run.interp_norms)) if run.interp_norms.size else float("nan")
        ax.set_title(f"‖∇D‖ at interpolates, mean {mean:.3g}", fontsize=8)
    axes[0, 0].set_ylabel("generated (red) over data (grey)", fontsize=8)
    axes[1, 0].set_ylabel("critic landscape (× mode centres)", fontsize=8)
    axes[2, 0].set_ylabel("histogram (log x; dashed: 1)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def write_gallery(runs: list[Run], data: Dataset, path: Path, title: str) -> None:
    """Render the gallery and move it into place atomically: the image appears complete or
    not at all (a Ctrl-C while drawing leaves at most nothing behind)."""
    fig = _figure(runs, data, title)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gpreg-demo-", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a usual file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
