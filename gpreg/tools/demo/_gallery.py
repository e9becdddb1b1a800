"""The ``gpreg demo`` gallery: one PNG, one column per penalty (matplotlib, Agg backend)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gpreg.tools.demo._common import Run
from gpreg.tools.demo._data import Dataset, quality


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


#: penalties per band of the gallery: four columns stay readable at a documentation page's
#: width (about 700 px, where the text still is about 11 px high)
COLUMNS = 4
#: inches per column and per panel row; font sizes in points
PANEL_IN, TITLE_PT, LABEL_PT, TICK_PT = 2.6, 12, 11, 10
#: the histograms' height, relative to the square panels above them
HIST_HEIGHT = 0.6
DPI = 110


def norm_bins(runs: list[Run]) -> np.ndarray:
    """The logarithmic bin edges shared by every histogram (so the columns compare at a
    glance): whole decades around every positive, finite norm of every run, at least 0.1 to
    10, eight bins a decade. No value falls outside: nothing is clipped into the edge bins."""
    finite = [r.interp_norms[np.isfinite(r.interp_norms) & (r.interp_norms > 0)] for r in runs]
    pooled = np.concatenate([f for f in finite if f.size] or [np.ones(1)])
    lo = min(np.floor(np.log10(pooled.min())), -1.0)
    hi = max(np.ceil(np.log10(pooled.max())), 1.0)
    return np.logspace(lo, hi, int(8 * (hi - lo)) + 1)


def _not_shown(norms: np.ndarray) -> str:
    """What a logarithmic histogram cannot show: exact zeros and NaN/Inf."""
    zeros, bad = int(np.sum(norms == 0)), int(np.sum(~np.isfinite(norms)))
    parts = [f"{zeros} zero" if zeros else "", f"{bad} NaN/Inf" if bad else ""]
    return ", ".join(p for p in parts if p)


def _figure(runs: list[Run], data: Dataset, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    cols = min(len(runs), COLUMNS)
    bands = -(-len(runs) // cols)  # rows of penalties, three panels high each
    heights = [1.0, 1.0, HIST_HEIGHT] * bands
    fig = Figure(figsize=(PANEL_IN * cols + 0.5,
                          (PANEL_IN + 0.45) * sum(heights) + 0.7), layout="constrained")
    axes = fig.subplots(3 * bands, cols, squeeze=False, height_ratios=heights)
    ext = data.extent
    lim = (-ext, ext)
    bins = norm_bins(runs)
    for j in range(len(runs), bands * cols):  # the slots after the last run, in its band
        band, col = divmod(j, cols)
        for k in range(3):
            axes[3 * band + k, col].set_visible(False)
    for j, run in enumerate(runs):
        band, col = divmod(j, cols)
        top, mid, low = (axes[3 * band + k, col] for k in range(3))
        q = quality(run.samples, data)
        top.scatter(run.real[:, 0], run.real[:, 1], s=2, c="0.75", lw=0, label="data")
        pts = np.clip(run.samples, -ext, ext)  # points outside are pinned to the border
        top.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:red", alpha=0.5, lw=0, label="generated")
        top.set(xlim=lim, ylim=lim, aspect="equal", xticks=[], yticks=[])
        top.set_title(f"{run.penalty} · {run.loss} loss\n{q.modes_covered}/{q.modes} modes, "
                      f"{100 * q.high_quality:.0f}% high-quality", fontsize=TITLE_PT)
        land = run.landscape
        ok = np.isfinite(land)
        vmin, vmax = (np.percentile(land[ok], [1, 99]) if ok.any() else (0.0, 1.0))
        if vmax <= vmin:
            vmax = vmin + 1.0
        mid.imshow(np.clip(land, vmin, vmax), origin="lower", extent=(-ext, ext, -ext, ext),
                   cmap="viridis", vmin=vmin, vmax=vmax)
        if ok.all():
            mid.contour(np.linspace(-ext, ext, land.shape[1]), np.linspace(-ext, ext,
                        land.shape[0]), land, levels=10, colors="white", linewidths=0.4,
                        alpha=0.6)
        mid.scatter(data.centres[:, 0], data.centres[:, 1], s=10, c="red", marker="x", lw=0.9)
        mid.set(xlim=lim, ylim=lim, aspect="equal", xticks=[], yticks=[])
        mid.set_title(f"D(x): {vmin:.3g} … {vmax:.3g}", fontsize=LABEL_PT)
        norms = run.interp_norms
        low.hist(norms[np.isfinite(norms) & (norms > 0)], bins=bins, color="tab:blue")
        low.axvline(1.0, color="k", ls="--", lw=0.8)
        low.set_xscale("log")
        low.set_xlim(bins[0], bins[-1])
        low.set_yticks([])
        low.tick_params(labelsize=TICK_PT)
        mean = float(np.mean(norms)) if norms.size else float("nan")
        missing = _not_shown(norms)
        low.set_title(f"mean ‖∇D‖ {mean:.3g}" + (f"\n({missing} not shown)" if missing else ""),
                      fontsize=LABEL_PT)
        if col == 0:
            top.set_ylabel("generated (red)\nover data (grey)", fontsize=LABEL_PT)
            mid.set_ylabel("critic landscape\n(×: mode centres)", fontsize=LABEL_PT)
            low.set_ylabel("‖∇D‖ at interpolates\n(log x; dashed: 1)", fontsize=LABEL_PT)
    fig.suptitle(title, fontsize=TITLE_PT + 1)
    return fig


def write_gallery(runs: list[Run], data: Dataset, path: Path, title: str) -> None:
    """Render the gallery and move it into place atomically: the image appears complete or
    not at all (a Ctrl-C while drawing leaves at most nothing behind)."""
    fig = _figure(runs, data, title)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gpreg-demo-", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a usual file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
