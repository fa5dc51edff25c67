"""Figures from records: transfer heatmaps, robustness curves, distilled-image grids, metric bars,
and the clean-vs-robust scatter with the random trend (effective robustness).

Every figure is derived from records (and, for the image grids, from distilled sets), written
as PNG and PDF. Matplotlib is used through its object API (``matplotlib.figure.Figure``), which
needs no display and leaves the global pyplot backend alone, so plotting works on headless
machines and inside notebooks alike. The numbers behind each figure come from a plain function
(:func:`transfer_matrix`, :func:`robustness_curves`) so tests check them without reading pixels.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from rome_bench.core.catalog import SWEEP
from rome_bench.core.records import Record
from rome_bench.core.registry import RomeBenchError
from rome_bench.core.storage import atomic_write
from rome_bench.reporting.layout import split_groups
from rome_bench.reporting.metrics import METRICS, compute
from rome_bench.reporting.naming import display_dataset, display_method, method_order
from rome_bench.reporting.robust import BASELINE_METHOD, RobustRow, Trend, robust_rows
from rome_bench.reporting.table1 import has_attacks, table1_rows
from rome_bench.reporting.uncertainty import Bootstrap

FIGURE_FORMATS = ("png", "pdf")


class PlotError(RomeBenchError):
    """A figure that cannot be drawn from the given inputs."""


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _save(fig, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FIGURE_FORMATS:
        path = folder / f"{stem}.{ext}"
        # atomic like every other write: a killed run or a full disk leaves no half-drawn figure, and an
        # interrupted one's temporary file is recognised and removed by the next run
        atomic_write(path, lambda f, ext=ext: fig.savefig(f, format=ext, bbox_inches="tight"))
        paths.append(path)
    return paths


# -- transfer heatmap ---------------------------------------------------------------------
@dataclass
class TransferMatrix:
    """``values[i, j]``: surrogate ``sources[i]`` attacking victim ``victims[j]`` (NaN if unmeasured)."""

    sources: list[str]
    victims: list[str]
    values: np.ndarray
    value: str
    mode: str
    attack: str | None


def transfer_matrix(records: list[Record], *, mode: str, value: str = "I-RR",
                    attack: str | None = None, ipc: int | None = None,
                    alpha: float = 0.5) -> TransferMatrix:
    """The numbers of a transfer heatmap.

    ``value='accuracy'``: the victim's accuracy (%) on the surrogate's adversarial examples,
    averaged over attacks (or only ``attack``) and repeats. ``value='I-RR'``: the victim's I-RR
    from those accuracies and its clean accuracy, per repeat, then averaged. The diagonal is the
    white-box number of the same attack on the same images.

    >>> def rec(method, src, mode, acc):
    ...     return Record("r", method, "cifar10", 50, 0, 0, "convnet", "paper", "standard",
    ...                   "transfer" if src else "white-box", src, mode, "PGD" if src else "clean",
    ...                   None, acc, 1.0, 10)
    >>> m = transfer_matrix([rec("A", None, "clean", 50.0), rec("A", "A", "untargeted", 10.0),
    ...                      rec("A", "B", "untargeted", 40.0)], mode="untargeted",
    ...                     value="accuracy")
    >>> m.sources, m.victims, m.values.tolist()
    (['A', 'B'], ['A'], [[10.0], [40.0]])
    """
    if value not in ("I-RR", "accuracy"):
        raise PlotError(f"Unknown heatmap value '{value}'. Available: I-RR, accuracy")
    rows = [r for r in records if (ipc is None or r.ipc == ipc)]
    attacked = [r for r in rows if r.setting == "transfer" and r.mode == mode
                and (attack is None or r.attack == attack)]
    if not attacked:
        raise PlotError(f"no transfer records in mode '{mode}'"
                        + (f" for attack {attack}" if attack else ""))
    sources = sorted({r.source_model or "" for r in attacked}, key=method_order)
    victims = sorted({r.method for r in attacked}, key=method_order)
    clean: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r.mode == "clean":
            clean[(r.method, r.repeat)].append(r.accuracy)
    cells: dict[tuple[str, str, int], list[Record]] = defaultdict(list)
    for r in attacked:
        cells[(r.source_model or "", r.method, r.repeat)].append(r)
    values = np.full((len(sources), len(victims)), np.nan)
    for i, s in enumerate(sources):
        for j, v in enumerate(victims):
            per_repeat = []
            for (cs, cv, rep), rs in cells.items():
                if (cs, cv) != (s, v):
                    continue
                if value == "accuracy":
                    per_repeat.append(statistics.fmean(r.accuracy for r in rs))
                elif clean.get((v, rep)):
                    m = compute([statistics.fmean(clean[(v, rep)])], [0.0],
                                [r.accuracy for r in rs], [r.seconds for r in rs], alpha)
                    if m.I_RR is not None:
                        per_repeat.append(m.I_RR)
            if per_repeat:
                values[i, j] = statistics.fmean(per_repeat)
    return TransferMatrix(sources, victims, values, value, mode, attack)


def _draw_matrix(ax, m: TransferMatrix, vmin: float, vmax: float):
    im = ax.imshow(m.values, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(m.victims)), [display_method(v) for v in m.victims], rotation=45,
                  ha="right")
    ax.set_yticks(range(len(m.sources)), [display_method(s) for s in m.sources])
    ax.set_xlabel("victim")
    ax.set_ylabel("surrogate")
    mid = (vmin + vmax) / 2
    for i in range(len(m.sources)):
        for j in range(len(m.victims)):
            v = m.values[i, j]
            if not math.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="black" if v > mid else "white")
    return im


def plot_transfer_heatmap(m: TransferMatrix, folder: Path, stem: str, title: str) -> list[Path]:
    """One annotated heatmap (rows = surrogates, columns = victims)."""
    n = max(len(m.sources), len(m.victims))
    fig = _figure(2.0 + 0.75 * n, 1.6 + 0.65 * n)
    ax = fig.add_subplot()
    finite = m.values[~np.isnan(m.values)]
    vmin, vmax = (0.0, 100.0) if m.value == "accuracy" else (
        min(0.0, float(finite.min())) if finite.size else 0.0, 100.0)
    im = _draw_matrix(ax, m, vmin, vmax)
    fig.colorbar(im, ax=ax, label="accuracy (%)" if m.value == "accuracy" else "I-RR (%)")
    ax.set_title(title, fontsize=9)
    return _save(fig, folder, stem)


def plot_transfer_accuracy_per_attack(records: list[Record], mode: str, ipc: int, folder: Path,
                                      stem: str, title: str) -> list[Path]:
    """One accuracy heatmap per attack, side by side (the diagonal is the white-box accuracy)."""
    attacks = sorted({r.attack for r in records if r.setting == "transfer" and r.mode == mode
                      and r.ipc == ipc})
    mats = [transfer_matrix(records, mode=mode, value="accuracy", attack=a, ipc=ipc)
            for a in attacks]
    n = max(len(mats[0].sources), len(mats[0].victims))
    fig = _figure(1.0 + (0.6 * n + 1.0) * len(mats), 1.8 + 0.6 * n)
    axes = fig.subplots(1, len(mats), squeeze=False)[0]
    im = None
    for ax, a, m in zip(axes, attacks, mats):
        im = _draw_matrix(ax, m, 0.0, 100.0)
        ax.set_title(a, fontsize=9)
    fig.colorbar(im, ax=list(axes), label="victim accuracy (%)")
    fig.suptitle(title, fontsize=9)
    return _save(fig, folder, stem)


# -- robustness curves --------------------------------------------------------------------
def robustness_curves(records: list[Record]) -> dict[tuple[str, int, str], list[tuple[float, float]]]:
    """``(method, ipc, mode) -> [(eps*255, accuracy)]`` from the PGD sweep (eps 0 = clean).

    Accuracies are averaged over repeats. Only white-box sweep records count.
    """
    acc: dict[tuple[str, int, str, float], list[float]] = defaultdict(list)
    clean: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in records:
        if r.mode == "clean":
            clean[(r.method, r.ipc)].append(r.accuracy)
        elif r.setting == "white-box" and r.attack in SWEEP and r.eps is not None:
            acc[(r.method, r.ipc, r.mode, round(r.eps * 255, 3))].append(r.accuracy)
    curves: dict[tuple[str, int, str], list[tuple[float, float]]] = defaultdict(list)
    for (method, ipc, mode, eps), xs in acc.items():
        curves[(method, ipc, mode)].append((eps, statistics.fmean(xs)))
    for key, pts in curves.items():
        c = clean.get(key[:2])
        if c:
            pts.append((0.0, statistics.fmean(c)))
        pts.sort()
    return dict(curves)


def plot_robustness_curves(records: list[Record], folder: Path, stem: str, title: str
                           ) -> list[Path]:
    curves = robustness_curves(records)
    if not curves:
        raise PlotError("no PGD sweep records (run with --attacks sweep)")
    modes = [m for m in ("untargeted", "targeted") if any(k[2] == m for k in curves)]
    fig = _figure(4.2 * len(modes), 3.4)
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        for (method, ipc, m), pts in sorted(curves.items(), key=lambda kv: (
                method_order(kv[0][0]), kv[0][1])):
            if m != mode:
                continue
            xs, ys = zip(*pts)
            ipc_txt = "full" if ipc == 0 else f"IPC {ipc}"
            ax.plot(xs, ys, marker="o", label=f"{display_method(method)} {ipc_txt}")
        ax.set_xlabel("PGD eps (x/255)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(mode, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, folder, stem)


# -- Table-1 bars ------------------------------------------------------------------------
def plot_table1_bars(records: list[Record], folder: Path, stem: str, title: str,
                     alpha: float = 0.5) -> list[Path]:
    """RR, CREI, I-RR, I-CREI per method as grouped bars, one panel per mode."""
    rows = table1_rows(records, alpha)
    if not rows:
        raise PlotError("no white-box attack records")
    fig = _figure(max(6.0, 1.6 * len(METRICS) + 0.4 * len(rows)), 3.6)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    width = 0.8 / len(rows)
    for ax, mode in zip(axes, ("targeted", "untargeted")):
        for k, r in enumerate(rows):
            vals = [r.cells.get(f"{mode}_{m}", (None, None))[0] for m in METRICS]
            xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(METRICS))]
            label = display_method(r.method)
            if len({x.dataset for x in rows}) > 1:
                label = f"{display_dataset(r.dataset)} {label}"
            ax.bar(xs, [math.nan if v is None else v for v in vals], width, label=label)
        ax.set_xticks(range(len(METRICS)), list(METRICS))
        ax.set_title(mode, fontsize=9)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    return _save(fig, folder, stem)


# -- clean vs robust scatter ---------------------------------------------------------------
def robust_scatter_figure(rows: list[RobustRow], trends: dict[str, Trend | None], title: str):
    """Clean (x) against AutoAttack accuracy (y), one point per (method, IPC) with its 95%
    intervals, and each dataset's random trend (a line in logit space, curved on these axes).

    Returns the matplotlib ``Figure`` (the leaderboard embeds it), or raises ``PlotError`` when
    no row has both accuracies.
    """
    points = [r for r in rows if r.clean.value is not None and r.autoattack.value is not None]
    if not points:
        raise PlotError("no rows with clean and AutoAttack accuracy")
    fig = _figure(6.4, 4.6)
    ax = fig.add_subplot()
    datasets = sorted({r.dataset for r in points})
    methods = sorted({r.method for r in points}, key=method_order)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    markers = "osD^v<>pP*X"
    for r in points:
        err = None
        if r.clean.low is not None and r.autoattack.low is not None:
            err = ([[r.clean.value - r.clean.low], [r.clean.high - r.clean.value]],
                   [[r.autoattack.value - r.autoattack.low],
                    [r.autoattack.high - r.autoattack.value]])
        kw = dict(color=colors[r.method], marker=markers[datasets.index(r.dataset) % len(markers)],
                  markersize=6 if r.method != BASELINE_METHOD else 7,
                  markerfacecolor="none" if r.method == BASELINE_METHOD else colors[r.method])
        if err:
            ax.errorbar(r.clean.value, r.autoattack.value, xerr=err[0], yerr=err[1], capsize=2,
                        elinewidth=0.8, linestyle="none", **kw)
        else:
            ax.plot(r.clean.value, r.autoattack.value, linestyle="none", **kw)
        ipc = "full" if r.ipc == 0 else str(r.ipc)
        ax.annotate(ipc, (r.clean.value, r.autoattack.value), textcoords="offset points",
                    xytext=(4, 3), fontsize=6, color=colors[r.method])
    for m in methods:
        ax.plot([], [], color=colors[m], marker="o", linestyle="none",
                markerfacecolor="none" if m == BASELINE_METHOD else colors[m],
                label=display_method(m))
    xs_all = [r.clean.value for r in points]
    lo, hi = max(0.1, min(xs_all) - 5), min(99.9, max(xs_all) + 5)
    for ds, trend in sorted(trends.items()):
        if trend is None:
            continue
        xs = np.linspace(lo, hi, 200)
        label = f"random trend (IPC {', '.join(map(str, trend.ipcs))})"
        if len(datasets) > 1:
            label = f"{display_dataset(ds)} {label}"
        ax.plot(xs, trend.predict(xs), color="0.3", linestyle="--", linewidth=1, label=label)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    # beside the axes: inside, it hides points (a method's high-robustness point sits top left)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title(title + ("" if any(trends.values()) else
                          "\nno random trend: method random at two IPCs or more is needed"),
                 fontsize=9)
    return fig


def plot_robust_scatter(records: list[Record], folder: Path, stem: str, title: str,
                        boot: Bootstrap | None = None) -> list[Path]:
    """The clean-vs-robust scatter of one (threat model, preset) group, PNG and PDF."""
    rows, trends = robust_rows(records, boot)
    return _save(robust_scatter_figure(rows, trends, title), folder, stem)


def has_robust_points(records: list[Record]) -> bool:
    """Whether the records hold clean and untargeted AutoAttack accuracies (the scatter)."""
    return any(r.mode == "clean" for r in records) and any(
        r.attack == "AutoAttack" and r.mode == "untargeted" and r.setting == "white-box"
        for r in records)


# -- distilled-image grids ---------------------------------------------------------------
@dataclass
class ImageGrid:
    """What a distilled-image grid draws: images (N,C,H,W) in pixel units, clamped to [0,1]
    only for drawing, their hard labels, a title and the class names (reporting reads no
    distilled-set files itself; the caller converts them, see
    ``rome_bench.pipeline.runner.image_grids``)."""

    images: torch.Tensor
    labels: torch.Tensor
    title: str
    class_names: tuple[str, ...] = ()


def image_grid(images: torch.Tensor, labels: torch.Tensor, per_class: int = 10, pad: int = 1
               ) -> np.ndarray:
    """An (H, W, C) array with one class per row and up to ``per_class`` images per row."""
    images = images.detach().float().clamp(0, 1)
    if images.dim() != 4 or len(images) == 0:
        raise PlotError("a distilled set needs images of shape (N,C,H,W)")
    classes = sorted(int(c) for c in torch.unique(labels))
    n, c, h, w = images.shape
    cols = min(per_class, max(int((labels == k).sum()) for k in classes))
    grid = np.ones(((h + pad) * len(classes) + pad, (w + pad) * cols + pad, c), dtype=np.float32)
    for row, k in enumerate(classes):
        for col, img in enumerate(images[labels == k][:cols]):
            y, x = pad + row * (h + pad), pad + col * (w + pad)
            grid[y:y + h, x:x + w] = img.permute(1, 2, 0).numpy()
    return grid[..., 0] if c == 1 else grid


def plot_distilled_grid(source: ImageGrid, folder: Path, stem: str) -> list[Path]:
    grid = image_grid(source.images, source.labels)
    fig = _figure(max(3.0, grid.shape[1] / 40) + 0.8, max(3.0, grid.shape[0] / 40) + 0.4)
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    classes = sorted(int(c) for c in torch.unique(source.labels))
    names = source.class_names
    row = (grid.shape[0] - 1) / len(classes)
    ax.set_yticks([row * (i + 0.5) for i in range(len(classes))],
                  [names[c] if c < len(names) else str(c) for c in classes], fontsize=7)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(source.title, fontsize=9)
    return _save(fig, folder, stem)


# -- everything a run supports --------------------------------------------------------------
def write_figures(records: list[Record], folder: str | Path, *,
                  distilled: dict[str, ImageGrid] | None = None, alpha: float = 0.5,
                  echo: Callable[[str], None] = print) -> list[Path]:
    """Write every figure the records support into ``folder/figures``; say what was skipped."""
    out = Path(folder) / "figures"
    written: list[Path] = []
    skipped: list[str] = []
    for g in split_groups(records):
        stem = g.stem
        title = g.title
        transfer = [r for r in g.records if r.setting == "transfer"]
        if transfer:
            for ipc in sorted({r.ipc for r in transfer}):
                for mode in ("targeted", "untargeted"):
                    if not any(r.mode == mode and r.ipc == ipc for r in transfer):
                        continue
                    m = transfer_matrix(g.records, mode=mode, value="I-RR", ipc=ipc, alpha=alpha)
                    written += plot_transfer_heatmap(
                        m, out, f"transfer_irr_{mode}_ipc{ipc}_{stem}",
                        f"transfer I-RR, {mode}, IPC {ipc}\n{title}")
                    written += plot_transfer_accuracy_per_attack(
                        g.records, mode, ipc, out, f"transfer_accuracy_{mode}_ipc{ipc}_{stem}",
                        f"victim accuracy under transfer, {mode}, IPC {ipc}\n{title}")
        else:
            skipped.append(f"transfer heatmap ({stem}): no transfer records (--setting transfer)")
        # (the records support it, how to draw it, file stem, title, what is skipped otherwise)
        per_group = [
            (bool(robustness_curves(g.records)), plot_robustness_curves, "robustness_curves",
             "accuracy vs PGD eps", "robustness curves", "no PGD sweep records (--attacks sweep)"),
            (has_attacks(g.records), partial(plot_table1_bars, alpha=alpha), "table1_bars",
             "Table-1 metrics", "metric bars", "no white-box attack records"),
            (has_robust_points(g.records), plot_robust_scatter, "robust_scatter",
             "clean vs AutoAttack accuracy", "clean-vs-robust scatter",
             "no untargeted AutoAttack records"),
        ]
        for supported, draw, name, what, label, reason in per_group:
            if supported:
                written += draw(g.records, out, f"{name}_{stem}", f"{what}\n{title}")
            else:
                skipped.append(f"{label} ({stem}): {reason}")
    if distilled:
        for name, grid in sorted(distilled.items()):
            written += plot_distilled_grid(grid, out, f"distilled_{name}")
    else:
        skipped.append("distilled-image grids: no distilled sets (run writes them; for "
                       "`plot`, pass --distilled PATH)")
    pngs = [p for p in written if p.suffix == ".png"]
    echo(f"figures: {len(pngs)} written to {out} (PNG + PDF)" if pngs else "figures: none written")
    for s in skipped:
        echo(f"  skipped {s}")
    return written
