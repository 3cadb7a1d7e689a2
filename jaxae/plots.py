"""Figures as PNG files: charts through matplotlib, labelled image grids through Pillow.

- `line_chart`: lines with markers against categorical x values, optionally on a log y axis
  (the PAE paper's Figure 5: TPR/FPR at a 5% false-negative rate against the latent size K).
- `roc_curves`: ROC curves of outlier scores (PAE paper, Sec. 4.2 and Table 2), each with its
  AUROC and bootstrap interval in the legend (`jaxae.metrics`).
- `training_curves`: a run's logged loss and held-out metrics against epoch, for every stage
  (``<run>/metrics.jsonl``, ``<run>/stage2/metrics.jsonl``...), with the early-stopping epoch.
- `image_grid`: rows of images with row and column labels, a title and per-image captions.
- `latent_pairs`: a pair plot of latent codes coloured by class label, a reference (the prior)
  in grey (the GMM-DAE appendix's Figure 3); `latent_panels`: a grid of 2-D ones (its ablation).

matplotlib is imported inside the chart functions: it takes most of a second, and jaxae modules
that only draw image grids import this one. Charts use its object-oriented API (a `Figure` on
an Agg canvas, never pyplot), so no global figure registry fills up and nothing needs closing.
Image grids stay on Pillow: 100 tiles in a few milliseconds, pixel-exact.

Command line (training curves of a run folder, default output ``<RUN>/curves.png``)::

    python -m jaxae.plots RUN [--out PNG]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DPI = 100  # chart sizes are given in pixels; figsize = size / DPI
STYLE = {  # matplotlib rcParams for every chart: readable at 100 dpi
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
}
MARKERS = "osD^vPX*<>"


# ----------------------------------------------------------------------------------------------
# Chart plumbing


def _figure(size):
    """A constrained-layout `Figure` of ``size = (width, height)`` pixels, inside STYLE."""
    from matplotlib.figure import Figure

    return Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")


def _save(fig, path) -> Path:
    """Render `fig` on an Agg canvas and write an RGB PNG of exactly its pixel size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    path = Path(path)
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(path)  # RGB: no alpha
    fig.clear()  # drops the artists now rather than at garbage collection
    return path


def _style():
    import matplotlib

    return matplotlib.rc_context(STYLE)


def _plain_log_ticks(axis) -> None:
    """Log axis ticks at 1, 2, 5 x 10^n written as plain numbers (0.5, 2, 20), not 10^n."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


# ----------------------------------------------------------------------------------------------
# Line chart


def line_chart(
    series: dict,
    path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    log_y: bool = False,
    size=(520, 360),
    styles: dict | None = None,
) -> Path:
    """A line chart as PNG: ``series[name] = (xs, ys)``, one line with markers each.

    The x axis is categorical: the union of the xs, sorted and evenly spaced, labelled with the
    values themselves (e.g. K = 4, 8, 16, 32, 64). Non-finite y values (and, with `log_y`,
    values <= 0) are left out of their line.

    Args:
      series: ``{name: (xs [n], ys [n])}``; the names go into the legend.
      path: output PNG file.
      title, xlabel, ylabel: text of the chart.
      log_y: a logarithmic y axis, ticks written as plain numbers.
      size: ``(width, height)`` of the PNG in pixels.
      styles: optional ``{name: matplotlib line kwargs}`` (color, linestyle, marker...) to
        group series, e.g. one colour per outlier set and one line style per score.

    Returns:
      The path of the RGB PNG, ``size`` pixels.
    """
    for name, (sx, sy) in series.items():
        if len(sx) != len(sy):
            raise ValueError(f"line_chart: series {name!r} has {len(sx)} xs and {len(sy)} ys")
    xs = sorted({x for xs_, _ in series.values() for x in xs_})
    at = {x: i for i, x in enumerate(xs)}

    def drawn(y) -> bool:
        return bool(np.isfinite(y)) and (y > 0 or not log_y)

    if not any(drawn(y) for _, ys in series.values() for y in ys):
        raise ValueError(
            "line_chart: no finite points to draw" + (" (log_y needs y > 0)" if log_y else "")
        )
    with _style():
        fig = _figure(size)
        ax = fig.add_subplot()
        for n, (name, (sx, sy)) in enumerate(series.items()):
            pts = [(at[x], y) for x, y in zip(sx, sy, strict=True) if drawn(y)]
            style = {"marker": MARKERS[n % len(MARKERS)], **(styles or {}).get(name, {})}
            ax.plot(*zip(*pts, strict=True) if pts else ([], []), label=str(name), **style)
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_xlim(-0.4, len(xs) - 0.6)
        if log_y:
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        # many series: the legend beside the axes, where it hides no line
        outside = len(series) > 4
        ax.legend(**({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if outside else {}))
        return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# ROC curves


def roc_curves(
    curves: dict,
    path,
    *,
    title: str = "",
    n_boot: int = 1000,
    size=None,
    styles: dict | None = None,
) -> Path:
    """ROC curves of outlier scores as PNG, each AUROC with its 95% bootstrap interval.

    Scores follow `jaxae.metrics.auroc`: higher means "more of an outlier"; the outliers are
    the positives. A curve's value may carry its interval as a third item, e.g. the
    ``metrics.auroc_ci`` a table already printed; otherwise it is computed here
    (``auroc_ci(n_boot=n_boot, seed=0)``).

    Args:
      curves: one panel ``{label: (inlier_scores [n_in], outlier_scores [n_out][, (auc, lo,
        hi)])}``, or several ``{panel title: {label: ...}}`` drawn two per row.
      path: output PNG file.
      title: figure title (the panels have their own).
      n_boot: bootstrap replicates for intervals that are not given.
      size: ``(width, height)`` pixels; default 440 x 400 per panel.
      styles: optional ``{label: matplotlib line kwargs}``, the same in every panel.

    Returns:
      The path of the RGB PNG.
    """
    from jaxae import metrics

    if curves and all(isinstance(v, dict) for v in curves.values()):
        panels = curves
    else:
        panels = {"": curves}
    if not panels or not all(panels.values()):
        raise ValueError("roc_curves: nothing to draw (an empty panel or no curves)")
    ncols = 1 if len(panels) == 1 else 2
    nrows = -(-len(panels) // ncols)
    size = size or (440 * ncols, 400 * nrows + (24 if title else 0))
    with _style():
        fig = _figure(size)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (panel, panel_curves) in zip(axes, panels.items(), strict=False):
            for label, (inl, outl, *ci) in panel_curves.items():
                fpr, tpr = metrics.roc_curve(inl, outl)
                auc, lo, hi = ci[0] if ci else metrics.auroc_ci(inl, outl, n_boot=n_boot)
                ax.plot(
                    fpr,
                    tpr,
                    label=f"{label}: AUROC {auc:.3f} [{lo:.3f}, {hi:.3f}]",
                    **(styles or {}).get(label, {}),
                )
            ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
            ax.set(
                xlim=(0, 1),
                ylim=(0, 1.01),
                title=panel,
                aspect="equal",
                xlabel="false-positive rate (inliers flagged)",
                ylabel="true-positive rate (outliers flagged)",
            )
            ax.legend(loc="lower right")
        for ax in axes[len(panels) :]:
            ax.remove()
        if title:
            fig.suptitle(title)
        return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Training curves

_NOT_CURVES = {"step", "epoch", "examples_per_s", "seconds", "best_epoch"}


def _read_log(path: Path) -> list[dict]:
    """The lines of a ``metrics.jsonl`` (one JSON object with an "epoch" per line)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no metrics log; it is written by the trainer (jaxae.train.fit) from the "
            "first logged step on: pass a run folder that has trained"
        )
    lines = []
    for i, text in enumerate(path.read_text().splitlines(), 1):
        where = f"{path}, line {i}"
        if not text.strip():
            raise ValueError(
                f"{where}: empty line; each line should be one JSON object (remove the line)"
            )
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{where}: not JSON ({e.msg}); a run killed while writing leaves "
                "a cut last line: remove it"
            ) from None
        if not isinstance(line, dict) or not isinstance(line.get("epoch"), int | float):
            raise ValueError(f"{where}: expected a JSON object with a numeric 'epoch'")
        lines.append(line)
    if not lines:
        raise ValueError(f"{path}: empty log (no lines yet); the stage has not logged a step")
    return lines


def _stages(run: Path) -> list[Path]:
    """`checkpoint.stage_dirs`, plus later stages that log but have no checkpoint yet."""
    from jaxae import checkpoint

    stages = checkpoint.stage_dirs(run)
    logging = [p.parent for p in run.glob("stage[0-9]*/metrics.jsonl")]
    later = {p for p in stages[1:] + logging if p.name[5:].isdigit()}
    return [run] + sorted(later, key=lambda p: int(p.name[5:]))


def _train_value(line: dict, metric: str):
    """The train value of `metric` in a log line: its own key, or the one parameter group's
    ``<group>/<metric>`` (`jaxae.train.grouped` logs the flow's nll as ``flow/nll``); None
    where several groups log it (a critic's loss is not the model's)."""
    if metric in line:
        return line[metric]
    found = [v for k, v in line.items() if k.endswith(f"/{metric}") and not k.startswith("eval_")]
    return found[0] if len(found) == 1 else None


def _group_losses(lines: list[dict]) -> list[str]:
    """The parameter groups' losses ``<group>/loss`` of a log, in logged order."""
    names = []
    for line in lines:
        for k in line:
            if k.endswith("/loss") and not k.startswith("eval_") and k not in names:
                names.append(k)
    return names


def _curve_panels(lines: list[dict]) -> list[tuple[str, str]]:
    """(panel title, metric) for the training loss and every eval_* metric, in logged order.

    The loss is "loss", or for a run trained in parameter groups (`jaxae.train.grouped`, which
    logs no total) one panel per group's ``<group>/loss`` (one group's is the run's "loss"). A
    metric whose train and eval values are the loss's (the flow's nll) takes the loss's panel.
    """
    groups = _group_losses(lines)
    if any("loss" in x for x in lines) or len(groups) == 1:
        names = ["loss"]
    else:
        names = list(groups)
    for line in lines:
        for k in line:
            if k.startswith("eval_") and k[5:] not in names and k[5:] not in _NOT_CURVES:
                names.append(k[5:])
    if not names:
        raise ValueError("no 'loss' and no 'eval_*' values in the log: nothing to draw")
    same, panels = [], []
    for m in names:
        if (
            m != "loss"
            and "loss" in names
            and all(
                _train_value(x, m) == _train_value(x, "loss")
                and x.get(f"eval_{m}") == x.get("eval_loss")
                for x in lines
            )
        ):
            same.append(m)
        else:
            panels.append(m)
    # the flow's objective is its nll: name the curves so, with the loss in the title
    return [(f"{same[0]} (= loss)", same[0]) if m == "loss" and same else (m, m) for m in panels]


def _stage_title(i: int, stage: Path) -> str:
    summary = stage / "summary.json"
    kind = ""
    if i > 1 and summary.is_file():  # the flow stage says {"stage": "flow"}
        try:
            kind = str(json.loads(summary.read_text()).get("stage", ""))
        except (json.JSONDecodeError, AttributeError):
            kind = ""
    return f"stage {i} ({stage.name}{', ' + kind if kind else ''})"


def _draw_curves(ax, lines: list[dict], metric: str, title: str) -> None:
    train = [(x["epoch"], v) for x in lines if (v := _train_value(x, metric)) is not None]
    held = [(x["epoch"], x[f"eval_{metric}"]) for x in lines if f"eval_{metric}" in x]
    if train:
        few = len(train) < 30  # a short run's points would be invisible as a bare line
        ax.plot(
            *zip(*train, strict=True),
            linewidth=1,
            alpha=0.8,
            marker="." if few else None,
            label=f"train {metric}",
        )
    if held:
        ax.plot(*zip(*held, strict=True), marker="o", markersize=3, label=f"held-out {metric}")
    best = [x["best_epoch"] for x in lines if "best_epoch" in x]
    if best:
        ax.axvline(
            best[-1],
            color="0.3",
            linestyle="--",
            linewidth=1,
            label=f"best epoch {best[-1]}: the model kept",
        )
    values = np.array([v for _, v in train + held], np.float64)
    values = values[np.isfinite(values)]
    # a loss that falls by orders of magnitude is read on a log axis; NLLs (< 0) stay linear
    if values.size and values.min() > 0 and values.max() > 20 * values.min():
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.set(title=title, xlabel="epoch", ylabel=metric)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no 1.5 ticks on short runs
    ax.legend()


def training_curves(run_dir, path=None) -> Path:
    """One PNG of a run's training curves, one row of panels per stage.

    Reads ``metrics.jsonl`` of every stage (`jaxae.checkpoint.stage_dirs`: the run folder,
    then ``stage2/``...: the PAE's autoencoder, then its flow) and draws against epoch the
    training loss (every logged line; a run trained in parameter groups: each group's loss,
    one panel each) and each held-out ``eval_*`` metric (every epoch), one panel per metric,
    with the train value of the same name when it is logged. The early-stopping best epoch
    (``best_epoch``) is a dashed line.

    Args:
      run_dir: the run folder (``experiments/train.py``'s workdir).
      path: output PNG; default ``<run_dir>/curves.png``.

    Returns:
      The path of the RGB PNG.

    Raises:
      FileNotFoundError: no such folder, or a stage without a ``metrics.jsonl``.
      ValueError: an empty log, or an empty or unreadable line (named by file and line).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(
            f"{run}: no such run folder (expected the folder a training "
            "run wrote, with metrics.jsonl in it)"
        )
    stages = _stages(run)
    logs = [_read_log(s / "metrics.jsonl") for s in stages]
    panels = []
    for s, lines in zip(stages, logs, strict=True):
        try:
            panels.append(_curve_panels(lines))
        except ValueError as e:
            raise ValueError(f"{s / 'metrics.jsonl'}: {e}") from None
    ncols = max(len(p) for p in panels)
    with _style():
        fig = _figure((400 * ncols, 300 * len(stages) + 30))
        axes = fig.subplots(len(stages), ncols, squeeze=False)
        for i, (stage, lines, stage_panels) in enumerate(zip(stages, logs, panels, strict=True)):
            for j, (title, metric) in enumerate(stage_panels):
                _draw_curves(axes[i, j], lines, metric, f"{_stage_title(i + 1, stage)}: {title}")
            for ax in axes[i, len(stage_panels) :]:
                ax.remove()
        fig.suptitle(f"training curves of {run.resolve().name}")
        return _save(fig, run / "curves.png" if path is None else path)


# ----------------------------------------------------------------------------------------------
# Image grids


@functools.cache
def _font(size: int):
    """DejaVu Sans (matplotlib's font, found without importing matplotlib) at `size` px."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        ttf = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if ttf.is_file():
            return ImageFont.truetype(str(ttf), size)
    try:
        return ImageFont.load_default(size)  # Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def _text_size(text: str, font) -> tuple[int, int]:
    box = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox((0, 0), text, font=font)
    return box[2], box[3]


def _as_images(row, r: int) -> np.ndarray:
    """Row r as [N, H, W] (grayscale) or [N, H, W, 3] (RGB) floats in [0, 1]."""
    a = np.asarray(row, np.float32)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] != 3):
        raise ValueError(
            f"image_grid: row {r} has shape {a.shape}; expected [N, H, W], "
            "[N, H, W, 1] or [N, H, W, 3] images"
        )
    return np.clip(np.nan_to_num(a), 0.0, 1.0)


def _check_labels(labels, n: int, name: str, what: str) -> None:
    if labels is not None and len(labels) > n:
        raise ValueError(f"image_grid: {len(labels)} {name} for {n} {what}; give at most one each")


def image_grid(
    rows,
    path,
    *,
    scale: int = 2,
    gap: int = 2,
    captions=None,
    row_labels=None,
    col_labels=None,
    title: str | None = None,
) -> Path:
    """Write rows of images side by side: ``rows[r][i]`` lands at row r, column i.

    Labels make the figure readable without its text: ``row_labels`` to the left of each row
    (e.g. the model or the corruption), ``col_labels`` above each column (MAP, mean, sample),
    a ``title`` on top, ``captions`` under single images. A column is widened to fit its label
    or captions. Text is DejaVu Sans, as in the charts.

    Args:
      rows: sequence of arrays [N, H, W], [N, H, W, 1] (grayscale) or [N, H, W, 3] (RGB), values
        in [0, 1] (clipped); rows may have different lengths, all images one size. With any
        RGB row the PNG is RGB, otherwise grayscale.
      path: output PNG file.
      scale: integer upscaling per pixel, for readability.
      gap: pixels of white between images (before `scale`).
      captions: optional ``captions[r][i]`` strings written under each image ("" for none).
      row_labels: optional one string per row ("\\n" breaks lines).
      col_labels: optional one string per column.
      title: optional line above the grid.

    Returns:
      The path of the PNG.
    """
    rows = [_as_images(r, i) for i, r in enumerate(rows)]
    if not rows or not all(len(r) for r in rows):
        raise ValueError("image_grid: no images (an empty list of rows or an empty row)")
    h, w = rows[0].shape[1:3]
    if any(r.shape[1:3] != (h, w) for r in rows):
        raise ValueError(
            f"image_grid: every image needs the size {(h, w)}, got {[r.shape for r in rows]}"
        )
    n = max(len(r) for r in rows)
    _check_labels(row_labels, len(rows), "row labels", "rows")
    _check_labels(col_labels, n, "column labels", "columns")
    if captions is not None and (
        len(captions) != len(rows)
        or any(len(c) > len(r) for c, r in zip(captions, rows, strict=True))
    ):
        raise ValueError(
            "image_grid: captions[r][i] needs one list per row, at most one string per image"
        )
    font, small = _font(13), _font(11)
    g, tw, th = gap * scale, w * scale, h * scale
    col_w = [tw] * n
    for i, label in enumerate(col_labels or []):
        col_w[i] = max(col_w[i], _text_size(str(label), font)[0] + 6)
    for caps in captions or []:
        for i, c in enumerate(caps):
            col_w[i] = max(col_w[i], _text_size(str(c), small)[0] + 2)
    cap_h = _text_size("0g", small)[1] + 2 if captions else 0
    left = max((_text_size(str(s), font)[0] for s in row_labels or []), default=-8) + 8
    title_h = _text_size(title, font)[1] + 6 if title else 0
    head_h = max((_text_size(str(s), font)[1] for s in col_labels or []), default=-4) + 4
    top = title_h + head_h
    xs = np.cumsum([left + g] + [cw + g for cw in col_w])  # left edge of each column
    rgb = any(r.ndim == 4 for r in rows)
    title_w = left + g + _text_size(title, font)[0] + 8 if title else 0  # a long title widens
    size = (max(int(xs[-1]), title_w), top + g + len(rows) * (th + cap_h + g))
    canvas = Image.new("RGB" if rgb else "L", size, "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((left + g, 2), title, fill="black", font=font)
    for i, label in enumerate(col_labels or []):
        draw.text((xs[i] + col_w[i] / 2, top - 2), str(label), fill="black", font=font, anchor="md")
    for r, row in enumerate(rows):
        y = top + g + r * (th + cap_h + g)
        if row_labels is not None and r < len(row_labels):
            draw.multiline_text(
                (left - 4, y + th / 2),
                str(row_labels[r]),
                fill="black",
                font=font,
                anchor="rm",
                align="right",
            )
        for i, img in enumerate(row):
            tile = Image.fromarray(np.round(img * 255).astype(np.uint8))
            tile = tile.resize((tw, th), Image.NEAREST).convert(canvas.mode)
            x = int(xs[i] + (col_w[i] - tw) // 2)
            canvas.paste(tile, (x, y))
            if captions and i < len(captions[r]) and captions[r][i]:
                draw.text(
                    (xs[i] + col_w[i] / 2, y + th),
                    str(captions[r][i]),
                    fill="black",
                    font=small,
                    anchor="ma",
                )
    path = Path(path)
    canvas.save(path)
    return path


# ----------------------------------------------------------------------------------------------
# Latent spaces

LABEL_COLORS = (  # matplotlib's tab10, one colour per class label (0-9), then tab10 again
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
REFERENCE_COLOR = "0.75"  # prior samples: light grey, under the coloured codes


def _finite_codes(codes, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Codes [N, d] and labels [N] as arrays, rows with a non-finite code dropped (a diverged
    model's codes must not break its figure); a ValueError for mismatched shapes."""
    z = np.asarray(codes, np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or y.shape != (len(z),):
        raise ValueError(
            f"{name}: codes must be [N, d] and labels [N], got {z.shape} and {y.shape}"
        )
    keep = np.isfinite(z).all(axis=1)
    return z[keep], y[keep]


def _class_names(labels: np.ndarray, class_names) -> dict:
    """{label: legend text} for the sorted distinct labels."""
    names = {}
    for v in np.unique(labels):
        given = class_names is not None and int(v) < len(class_names)
        names[v] = str(class_names[int(v)]) if given else str(v)
    return names


def _scatter_classes(ax, x, y, labels, names: dict) -> None:
    for i, (v, name) in enumerate(names.items()):
        pick = labels == v
        ax.scatter(x[pick], y[pick], s=3, alpha=0.6, color=LABEL_COLORS[i % 10], label=name,
                   linewidths=0, rasterized=True)  # fmt: skip


def latent_pairs(
    codes,
    labels,
    path,
    *,
    dims=None,
    reference=None,
    reference_label: str = "prior samples",
    class_names=None,
    title: str = "",
    panel: int = 170,
) -> Path:
    """A pair plot of latent codes coloured by their class label, as PNG (the GMM-DAE
    appendix's Figure 3 style, Saseendran et al. 2021): below the diagonal, a scatter plot of
    every pair of the chosen dimensions; on the diagonal, each class's histogram of that
    dimension. `reference` (e.g. samples of the model's prior) is drawn in grey under the codes,
    so that how well the codes fill the prior can be seen.

    Args:
      codes: [N, d] codes (rows with a non-finite value are left out).
      labels: [N] integer class labels, one colour each (tab10).
      path: output PNG file.
      dims: indices of the dimensions to plot (default: the first min(d, 4)).
      reference: optional [M, d] points drawn in grey (the same dimensions are plotted).
      reference_label: the legend's name for `reference`.
      class_names: optional names indexed by label (e.g. Fashion-MNIST's classes).
      title: figure title.
      panel: pixels per panel.

    Returns:
      The path of the RGB PNG, ``len(dims) * panel`` pixels square plus the title.
    """
    z, y = _finite_codes(codes, labels, "latent_pairs")
    d = np.asarray(codes).shape[1]
    dims = list(range(min(d, 4)) if dims is None else dims)
    if not dims or any(not 0 <= int(i) < d for i in dims):
        raise ValueError(f"latent_pairs: dims must be indices in [0, {d}), got {dims}")
    if not len(z):
        raise ValueError("latent_pairs: no code with finite values to draw")
    ref = None
    if reference is not None:
        ref = np.asarray(reference, np.float64)
        if ref.ndim != 2 or ref.shape[1] != d:
            raise ValueError(f"latent_pairs: reference must be [M, {d}], got {ref.shape}")
        ref = ref[np.isfinite(ref).all(axis=1)]
    names = _class_names(y, class_names)
    k = len(dims)
    with _style():
        fig = _figure((k * panel + 20, k * panel + (24 if title else 0) + 20))
        axes = fig.subplots(k, k, squeeze=False)
        for r, i in enumerate(dims):
            for c, j in enumerate(dims):
                ax = axes[r, c]
                if c > r:
                    ax.axis("off")
                    continue
                if r == c:  # each class's marginal of dimension i
                    edges = np.histogram_bin_edges(
                        np.concatenate([z[:, i]] + ([ref[:, i]] if ref is not None else [])), 30
                    )
                    if ref is not None:
                        ax.hist(ref[:, i], edges, color=REFERENCE_COLOR, density=True)
                    for n, v in enumerate(names):
                        ax.hist(z[y == v, i], edges, histtype="step", density=True,
                                color=LABEL_COLORS[n % 10])  # fmt: skip
                    ax.set_yticks([])
                else:
                    if ref is not None:
                        ax.scatter(ref[:, j], ref[:, i], s=2, color=REFERENCE_COLOR,
                                   linewidths=0, rasterized=True)  # fmt: skip
                    _scatter_classes(ax, z[:, j], z[:, i], y, names)
                ax.tick_params(labelsize=7)
                if r == k - 1:
                    ax.set_xlabel(f"z{j}")
                if c == 0 and r > 0:
                    ax.set_ylabel(f"z{i}")
        # the legend in the empty upper triangle (or beside a single panel)
        handles = [_legend_dot(LABEL_COLORS[n % 10], name) for n, name in enumerate(names.values())]
        if ref is not None:
            handles.append(_legend_dot(REFERENCE_COLOR, reference_label))
        anchor = axes[0, k - 1] if k > 1 else axes[0, 0]
        anchor.legend(handles=handles, loc="upper right", fontsize=7, frameon=False,
                      **({} if k > 1 else {"bbox_to_anchor": (1.0, 1.0)}))  # fmt: skip
        if title:
            fig.suptitle(title)
        return _save(fig, path)


def _legend_dot(color, label: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="o", linestyle="", markersize=5, color=color, label=label)


def latent_panels(
    panels: dict,
    path,
    *,
    reference=None,
    reference_label: str = "prior samples",
    class_names=None,
    title: str = "",
    panel: int = 260,
) -> Path:
    """A grid of 2-D latent scatter plots coloured by class label, as PNG: the GMM-DAE
    appendix's Figure 3 ablation (one row per loss, one column per training time). The column
    labels head the top row, the row labels name the left column's y axes, and the legend
    runs under the panels.

    Args:
      panels: ``{row label: {column label: (codes [N, 2], labels [N])}}``; rows may have
        different columns (the union is laid out, in first-seen order).
      path: output PNG file.
      reference: optional [M, 2] points drawn in grey under every panel's codes (the prior).
      reference_label: the legend's name for `reference`.
      class_names: optional names indexed by label.
      title: figure title.
      panel: pixels per panel.

    Returns:
      The path of the RGB PNG: ``columns * panel + 40`` by ``rows * panel + 50`` pixels
      (and 24 more with a title).
    """
    if not panels or not all(panels.values()):
        raise ValueError("latent_panels: nothing to draw (no rows, or a row without panels)")
    cols = list(dict.fromkeys(c for row in panels.values() for c in row))
    ref = None
    if reference is not None:
        ref = np.asarray(reference, np.float64)
        if ref.ndim != 2 or ref.shape[1] != 2:
            raise ValueError(f"latent_panels: reference must be [M, 2], got {ref.shape}")
        ref = ref[np.isfinite(ref).all(axis=1)]
    all_labels = []
    data = {}
    for r, row in panels.items():
        for c, (codes, labels) in row.items():
            z, y = _finite_codes(codes, labels, f"latent_panels[{r!r}][{c!r}]")
            if z.shape[1] != 2:
                raise ValueError(
                    f"latent_panels[{r!r}][{c!r}]: codes must be 2-D ([N, 2]), got {z.shape}; "
                    "project them first (or use latent_pairs)"
                )
            data[r, c] = (z, y)
            all_labels.append(y)
    names = _class_names(np.concatenate(all_labels), class_names)
    nrows, ncols = len(panels), len(cols)
    with _style():
        fig = _figure((ncols * panel + 40, nrows * panel + 50 + (24 if title else 0)))
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for a, r in enumerate(panels):
            for b, c in enumerate(cols):
                ax = axes[a, b]
                if (r, c) not in data:
                    ax.axis("off")
                    continue
                z, y = data[r, c]
                if ref is not None:
                    ax.scatter(ref[:, 0], ref[:, 1], s=2, color=REFERENCE_COLOR, linewidths=0,
                               rasterized=True)  # fmt: skip
                order = {v: i for i, v in enumerate(names)}
                for v in np.unique(y):
                    pick = y == v
                    ax.scatter(z[pick, 0], z[pick, 1], s=3, alpha=0.6, linewidths=0,
                               color=LABEL_COLORS[order[v] % 10], rasterized=True)  # fmt: skip
                if a == 0:
                    ax.set_title(str(c))
                ax.set(xlabel="z0", ylabel=f"{r}\nz1" if b == 0 else "")
        handles = [_legend_dot(LABEL_COLORS[n % 10], name) for n, name in enumerate(names.values())]
        if ref is not None:
            handles.append(_legend_dot(REFERENCE_COLOR, reference_label))
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
        if title:
            fig.suptitle(title)
        return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv=None) -> int:
    """``python -m jaxae.plots RUN [--out PNG]``: draw `training_curves`, print the PNG's path.

    Returns:
      0, or 2 after one line on stderr when RUN is not a readable run folder.
    """
    p = argparse.ArgumentParser(
        prog="python -m jaxae.plots",
        description="Draw a run's training curves (every stage's metrics.jsonl) into one PNG.",
    )
    p.add_argument("run", help="run folder (the workdir of experiments/train.py)")
    p.add_argument("--out", default=None, help="output PNG (default: RUN/curves.png)")
    args = p.parse_args(argv)
    try:
        path = training_curves(args.run, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
