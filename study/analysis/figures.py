"""The figures of a study report, drawn on matplotlib's Agg canvas (headless), each written twice:
`<stem>.png` (for report.md and report.html) and `<stem>.svg` (vector, for a paper).

Each function draws one figure and returns the PNG's path; `FigureSkipped` says there is
nothing to draw yet (no finished trial, no stored weights, no Optuna study), which the report
notes. Work is linear in trials and epochs, and the number of artists is bounded whatever the
number of trials: the epochs are indexed by trial once (`EpochIndex`), curves beyond the first
`MAX_ROWS` rows and early-stopped trials are drawn as one line collection each, and a search's
scatter draws one artist per (variant, state).
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from study.analysis.epochs import EpochIndex, class_ious
from study.analysis.predictions import MAX_ROWS, Predictions
from trainables.data.classes import IGNORE_INDEX

# Learning-curve figures: train and val of one metric on the same axes, so the gap can be read.
PAIRS = {"loss": ("train_loss", "val_loss", "loss"), "miou": ("train_miou", "val_miou", "mIoU")}
PAIR_TITLES = {"loss": "Loss", "miou": "mIoU"}
GREY = "0.6"
MARKERS = ("o", "s", "^", "D", "v", "P", "*", "h", "<", ">")
STOPPED_MARKER = "X"
FORMATS = ("png", "svg")


class FigureSkipped(Exception):
    """Nothing to draw yet; the message says why."""




# -- learning curves ------------------------------------------------------------------
def learning_curves(rows, epochs: EpochIndex, title: str, pair: str, path) -> Path:
    """Train (dashed) and val (solid) of one metric pair per row, mean over the row's finished seeds with a
    min-max band; early-stopped trials drawn each to its last epoch and marked there.

    `rows`: objects with `label`, `trial_ids` (finished) and `stopped_ids` (early stopped).
    """
    train, val, ylabel = PAIRS[pair]
    rows = list(rows)
    figure, ax = _axes_with_legend(9.5, 4.8)
    handles, drawn = [], False
    grey = {train: [], val: []}
    stopped = {train: ([], []), val: ([], [])}  # column -> (segments, colours)
    stopped_ends = ([], [], [])  # x, y, colour
    for column in (train, val):
        means = epochs.grouped([row.trial_ids for row in rows], column)
        for number, stats in means.items():
            drawn = True
            if number >= MAX_ROWS:
                grey[column].append(np.column_stack([stats.index, stats["mean"]]))
                continue
            colour = f"C{number % 10}"
            ax.plot(stats.index, stats["mean"], color=colour, linestyle="--" if column == train else "-",
                    marker="o" if column == val else None, markersize=3, linewidth=1.6)
            if len(rows[number].trial_ids) > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.15, linewidth=0)
        flat = [(number, trial_id) for number, row in enumerate(rows) for trial_id in row.stopped_ids]
        curves = epochs.grouped([(trial_id,) for _, trial_id in flat], column)
        for index, stats in curves.items():
            number = flat[index][0]
            colour = f"C{number % 10}" if number < MAX_ROWS else GREY
            segments, colours = stopped[column]
            segments.append(np.column_stack([stats.index, stats["mean"]]))
            colours.append(colour)
            stopped_ends[0].append(stats.index[-1])
            stopped_ends[1].append(stats["mean"].iloc[-1])
            stopped_ends[2].append(colour)
            drawn = True
    if not drawn:
        raise FigureSkipped("no trial of this table has reported an epoch yet")
    for column, style in ((train, "--"), (val, "-")):
        if grey[column]:
            ax.add_collection(LineCollection(grey[column], colors=GREY, linestyles=style, linewidths=0.8, alpha=0.6))
        segments, colours = stopped[column]
        if segments:
            ax.add_collection(LineCollection(segments, colors=colours, linestyles=style, linewidths=1.0, alpha=0.7))
    if stopped_ends[0]:
        ax.scatter(stopped_ends[0], stopped_ends[1], c=stopped_ends[2], marker=STOPPED_MARKER, s=36, zorder=3)
    ax.autoscale_view()
    for number, row in enumerate(rows[:MAX_ROWS]):
        handles.append(Line2D([], [], color=f"C{number % 10}", linewidth=2, label=_wrap(row.label)))
    handles += [Line2D([], [], color="black", linestyle="--", label="train"),
                Line2D([], [], color="black", marker="o", markersize=3, label="val (validated epochs)")]
    if len(rows) > MAX_ROWS:
        handles.append(Line2D([], [], color=GREY, label=f"{len(rows) - MAX_ROWS} more rows"))
    if stopped_ends[0]:
        handles.append(Line2D([], [], color="black", marker=STOPPED_MARKER, linestyle="none",
                              label="stopped early (scheduler):\ndrawn to its last epoch"))
    _legend(figure, handles)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _set_title(ax, f"{title}\n{PAIR_TITLES[pair]}: mean over finished seeds, band = min to max")
    return save(figure, path)


# -- per-class IoU ------------------------------------------------------------------------
def class_iou_bars(rows, epochs: EpochIndex, title: str, class_names, path) -> Path:
    """Per-class val IoU of each row at its trials' last validated epoch, mean over seeds (error bar: std),
    each bar labelled with its value (an IoU of 0 is a bar of height 0 with "0.00" above it).

    `class_names(dataset, count)`: the names of a dataset's classes (the plan's declaration)."""
    bars = []
    for row in list(rows)[:MAX_ROWS]:
        mean, std = class_ious(epochs, row.trial_ids)
        if not mean.empty:
            bars.append((row, mean, std.fillna(0.0)))
    if not bars:
        raise FigureSkipped("no finished trial with a validated epoch in this table yet")
    count = max(int(index) for _, mean, _ in bars for index in mean.index) + 1
    names = class_names(next((row.dataset for row, _, _ in bars if row.dataset), None), count)
    figure, ax = _axes_with_legend(max(8.5, 0.45 * count * len(bars) + 3.5), 4.8,
                                   bottom=1.25 if count > 6 else 0.55)
    width = 0.8 / len(bars)
    for index, (row, mean, std) in enumerate(bars):
        classes = np.array([int(index) for index in mean.index])
        container = ax.bar(classes + (index - (len(bars) - 1) / 2) * width, mean.to_numpy(), width,
                           yerr=std.to_numpy(), capsize=2, label=_wrap(row.label), color=f"C{index % 10}")
        crowded = count * len(bars) > 12
        ax.bar_label(container, fmt="%.2f", fontsize=6 if crowded else 7, rotation=90 if crowded else 0, padding=2)
    ax.set_xticks(np.arange(count), names, rotation=45 if count > 6 else 0, ha="right" if count > 6 else "center")
    ax.set_ylabel("val IoU (last validated epoch)")
    ax.set_ylim(0, 1.12)  # room for the value labels above a bar of 1.0
    ax.grid(axis="y", alpha=0.3)
    left_out = len(list(rows)) - MAX_ROWS
    _legend(figure, ax.get_legend_handles_labels()[0])
    suffix = f" (first {MAX_ROWS} rows of {MAX_ROWS + left_out})" if left_out > 0 else ""
    _set_title(ax, f"{title}\nper-class IoU, mean over finished seeds, error bar = std{suffix}")
    return save(figure, path)


# -- predicted masks ------------------------------------------------------------------------
def image_iou(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """One image's mIoU over the classes present in its ground truth or prediction (255 ignored)."""
    valid = truth != IGNORE_INDEX
    counts = np.bincount(truth[valid].astype(np.int64) * num_classes + prediction[valid],
                         minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    true_positive = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - true_positive
    present = union > 0
    return float((true_positive[present] / union[present]).mean()) if present.any() else float("nan")


def predicted_masks(columns, predictions: Predictions, title: str, classes, path) -> Path:
    """Input, ground truth, then one column per (label, trial record row): the same validation images for
    every column, each prediction titled by its column's label and captioned with that image's IoU.
    `classes` names and colours a dataset's classes: its `class_names(dataset, count)` and `palette(dataset,
    count)` (the plan's declarations).

    Drawn as one mosaic image on one axes (not an axes per image): a grid of many small axes costs
    seconds in matplotlib's layout and text handling, the mosaic a few milliseconds.
    """
    columns = [(label, trial) for label, trial in columns if trial is not None][:MAX_ROWS]
    if not columns:
        raise FigureSkipped("no row of this table has a finished trial with stored weights yet")
    predicted = [(label, predictions.predict(trial)) for label, trial in columns]
    first = predicted[0][1]
    # Input and ground truth are the first column's; a column of another dataset has other images.
    left_out = [label for label, p in predicted if p.config.dataset != first.config.dataset]
    predicted = [(label, p) for label, p in predicted if p.config.dataset == first.config.dataset]
    names = classes.class_names(first.config.dataset, first.config.classes)
    colours = np.zeros((256, 3), dtype=np.uint8)  # ignored pixels stay black
    colours[: len(names)] = np.array(classes.palette(first.config.dataset, len(names)), dtype=np.uint8)
    height, width = _tile_size(first.images.shape[1:3])
    labels = ["input", "ground truth"] + [label for label, _ in predicted]
    count, across = min(len(p.images) for _, p in predicted), len(labels)
    band = 16  # under each tile: that image's IoU
    step_x, step_y = width + TILE_GAP, height + band
    mosaic = np.full((count * step_y, across * step_x - TILE_GAP, 3), 255, dtype=np.uint8)
    scores = []
    for index in range(count):
        tiles = [first.images[index], colours[first.truth[index]]]
        for _, p in predicted:  # each model at its own working resolution, against its own ground truth
            tiles.append(colours[p.masks[index]])
            scores.append((len(tiles) - 1, index, image_iou(p.masks[index], p.truth[index], p.config.classes)))
        for column, tile in enumerate(tiles):
            mosaic[index * step_y:index * step_y + height, column * step_x:column * step_x + width] = \
                _fit(tile, height, width)
    if left_out:
        title += f" (left out, another dataset: {', '.join(left_out)})"
    wrapped = [_wrap(label, max(8, width // 6)) for label in labels]
    legend_columns = max(1, min(len(names) + 1, 6, (mosaic.shape[1] + 20) // 120))
    legend_rows = -(-(len(names) + 1) // legend_columns)
    footer = 18 * legend_rows + 10
    mosaic_width = mosaic.shape[1] + 20
    heading = _wrap(title, max(40, mosaic_width // 7))
    # line heights at 100 dpi: a 10 pt title about 17 px, 8 pt labels about 14 px
    title_height = 17 * (heading.count("\n") + 1) + 8
    labels_height = 14 * max(text.count("\n") + 1 for text in wrapped) + 8
    top = title_height + labels_height
    figure = Figure(figsize=(mosaic_width / 100, (top + mosaic.shape[0] + footer) / 100))
    total_width, total_height = figure.get_size_inches() * 100
    ax = figure.add_axes((10 / total_width, footer / total_height, mosaic.shape[1] / total_width,
                          mosaic.shape[0] / total_height))
    ax.imshow(mosaic, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for column, text in enumerate(wrapped):
        ax.text(column * step_x + width / 2, -4, text, ha="center", va="bottom", fontsize=8)
    for column, index, score in scores:
        ax.text(column * step_x + width / 2, index * step_y + height + 2, f"IoU {score:.2f}", ha="center",
                va="top", fontsize=7)
    legend = [Patch(color=colours[i] / 255, label=name) for i, name in enumerate(names)]
    legend.append(Patch(color="black", label=f"ignored ({IGNORE_INDEX})"))
    figure.legend(handles=legend, loc="lower center", ncol=legend_columns, fontsize="small", frameon=False,
                  bbox_to_anchor=(0.5, 0.0))
    figure.suptitle(heading, fontsize="medium", y=1 - 4 / total_height, va="top")
    return save(figure, path)


TILE = 112  # pixels of a mask tile's longer side: small images are enlarged (nearest), large ones shrunk
TILE_GAP = 6


def _tile_size(shape) -> tuple[int, int]:
    height, width = shape
    scale = TILE / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _fit(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize (masks keep their class colours)."""
    rows = np.arange(height) * picture.shape[0] // height
    columns = np.arange(width) * picture.shape[1] // width
    return picture[rows][:, columns]


# -- search studies ----------------------------------------------------------------------------
def search_scatter(trials: pd.DataFrame, dimensions, path) -> Path:
    """Best val mIoU against lr (log scale) of every main trial: one colour and marker per combination of the
    categorical dimensions (each named in the legend), hollow markers for trials stopped early."""
    if trials.empty:
        raise FigureSkipped("no main trial has started yet")
    main = trials[trials["stage"] == "main"].copy()
    main["lr"] = pd.to_numeric(main["lr"], errors="coerce")
    main["best_val_miou"] = pd.to_numeric(main["best_val_miou"], errors="coerce")
    main = main.dropna(subset=["lr", "best_val_miou"])
    if main.empty:
        raise FigureSkipped("no main trial has a validated epoch yet")
    dimensions = [d for d in dimensions if d in main]
    varying = [d for d in dimensions if main[d].astype(str).nunique() > 1]
    fixed = [f"{d} {main[d].astype(str).iloc[0]}" for d in dimensions if d not in varying]
    key = main[varying].astype(str).agg(", ".join, axis=1) if varying else pd.Series("all trials", index=main.index)
    variants = sorted(key.unique())
    figure, ax = _axes_with_legend(10, 5.2)
    handles = []
    stopped_any = other_any = False
    for number, variant in enumerate(variants):
        colour, marker = _variant_style(number)
        group = main[key == variant]
        first = group.iloc[0]
        label = ", ".join(f"{d}={first[d]}" for d in varying) if varying else variant
        handles.append(Line2D([], [], color=colour, marker=marker, linestyle="none", label=_wrap(label)))
        for status, part in group.groupby("status", sort=False):
            if status == "finished":
                ax.scatter(part["lr"], part["best_val_miou"], color=colour, marker=marker, s=40, zorder=3)
            elif status == "early_stopped":
                stopped_any = True
                ax.scatter(part["lr"], part["best_val_miou"], facecolors="none", edgecolors=colour, marker=marker,
                           s=40, linewidths=1.3, zorder=3)
            else:
                other_any = True
                ax.scatter(part["lr"], part["best_val_miou"], color=colour, marker="x", s=40, zorder=3)
    handles.append(Line2D([], [], color="black", marker="o", linestyle="none", label="finished"))
    if stopped_any:
        handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="none",
                              label="stopped early (scheduler):\nbest val mIoU before the stop"))
    if other_any:
        handles.append(Line2D([], [], color="black", marker="x", linestyle="none",
                              label="errored, diverged or running"))
    _legend(figure, handles)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best val mIoU")
    ax.grid(alpha=0.3)
    _set_title(ax, "Search: best val mIoU of each main trial" + (f" ({', '.join(fixed)} throughout)" if fixed else ""))
    return save(figure, path)


def optuna_study(url: str | None, name: str):
    """The study's Optuna study, read from its storage; FigureSkipped when there is none or it is empty."""
    if url is None:
        raise FigureSkipped("the Optuna study was kept in memory (an object-store study without "
                            "`searcher.storage`), so nothing of it was stored")
    if url.startswith("sqlite:///"):
        file = Path(url[len("sqlite:///"):])
        if not file.is_file():  # connecting would create an empty database
            raise FigureSkipped(f"no Optuna storage at {file}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        raise FigureSkipped(f"the Optuna storage {url} holds no study named {name!r}") from None
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise FigureSkipped("the Optuna study holds no completed trial yet")
    return study


def optimization_history(load_study, target: str, path) -> Path:
    """Optuna's optimisation history of the study (optuna.visualization.matplotlib)."""
    study = load_study()
    from optuna.visualization.matplotlib import plot_optimization_history

    with _optuna_plotting():
        ax = plot_optimization_history(study, target_name=target)
        return _save_pyplot(ax.figure, path, "Search: optimisation history (Optuna)")


def parameter_importances(load_study, target: str, path) -> Path:
    """Optuna's parameter importances over the study's completed trials, for whatever parameters it holds."""
    study = load_study()
    from optuna.visualization.matplotlib import plot_param_importances

    with _optuna_plotting():
        try:
            ax = plot_param_importances(study, target_name=target)
        except (ValueError, RuntimeError) as error:  # e.g. too few trials, or one value per parameter
            raise FigureSkipped(f"Optuna cannot rank the parameters yet ({error})") from None
        return _save_pyplot(ax.figure, path, "Search: parameter importances (Optuna)")


class _optuna_plotting:
    """Optuna draws with pyplot and sets its own style (ggplot) globally: headless unless pyplot is already in
    use, the style undone afterwards (or every later figure of the report is grey), its warnings silenced."""

    def __enter__(self):
        if "matplotlib.pyplot" not in sys.modules:
            import matplotlib

            matplotlib.use("Agg")
        self._style = rc_context()
        self._style.__enter__()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        self._style.__exit__(*exc)
        return False


def _save_pyplot(figure, path, title: str) -> Path:
    import matplotlib.pyplot as plt

    try:
        figure.set_size_inches(8, 4.8)
        for where in ("left", "right"):  # Optuna's own title, replaced by the report's
            figure.axes[0].set_title("", loc=where)
        figure.axes[0].set_title(title, fontsize="medium")
        figure.tight_layout()
        return save(figure, path)
    finally:
        plt.close(figure)


# -- helpers --------------------------------------------------------------------------------------
LEGEND_INCHES = 2.7  # right of the axes: the legend, never over the data


def _axes_with_legend(width: float, height: float, bottom: float = 0.55) -> tuple[Figure, object]:
    """One axes with fixed margins (in inches) and room for a legend on its right.

    Fixed margins, not constrained layout: the layout engine measures every text several times per
    save, which made it most of a report's drawing time.
    """
    figure = Figure(figsize=(width, height))
    ax = figure.subplots()
    figure.subplots_adjust(left=0.75 / width, right=1 - LEGEND_INCHES / width, bottom=bottom / height,
                           top=1 - 0.6 / height)
    return figure, ax


def _legend(figure: Figure, handles) -> None:
    width = figure.get_size_inches()[0]
    figure.legend(handles=handles, loc="upper left", bbox_to_anchor=(1 - (LEGEND_INCHES - 0.1) / width, 1 - 0.6 /
                  figure.get_size_inches()[1]), fontsize="small", frameon=False, borderaxespad=0)


def save(figure, path) -> Path:
    """`<path>.png` and `<path>.svg` (the name as given: a table name may hold dots); the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = {}
    # SVG: text as text (smaller, editable, and much faster than glyph outlines), no date and fixed
    # element ids, so that a regenerated figure differs only where the drawing does.
    with rc_context({"svg.hashsalt": "segstudy", "svg.fonttype": "none"}):
        for kind in FORMATS:
            written[kind] = path.parent / f"{path.name}.{kind}"
            options = {"metadata": {"Date": None}} if kind == "svg" else {"pil_kwargs": {"compress_level": 3}}
            figure.savefig(written[kind], dpi=100, **options)
    return written.get("png")


def _variant_style(number: int) -> tuple[str, str]:
    """A distinct (colour, marker) pair per variant: ten colours, the marker changing each round."""
    return f"C{number % 10}", MARKERS[(number + number // 10) % len(MARKERS)]


def _set_title(ax, text: str) -> None:
    """The title wrapped to the axes' width (about 14 characters per inch at medium size), the top margin
    grown to its lines; the legend beside the axes moves down with it."""
    figure = ax.figure
    width, height = figure.get_size_inches()
    lines = _wrap(text, max(30, int(ax.get_position().width * width * 14)))
    top = 1 - (0.2 + 0.2 * (lines.count("\n") + 1)) / height
    figure.subplots_adjust(top=top)
    for legend in figure.legends:
        legend.set_bbox_to_anchor((1 - (LEGEND_INCHES - 0.1) / width, top), transform=figure.transFigure)
    ax.set_title(lines, fontsize="medium")


def _wrap(text: str, width: int = 30) -> str:
    """Lines of at most `width` characters, broken after spaces, slashes, commas, underscores and hyphens (a
    variant label such as freeze=none/pretrain=none/segformer_stem=paper has no spaces), words longer than
    a line cut; the text's own line breaks kept."""
    lines = []
    for paragraph in str(text).split("\n"):
        line = ""
        for token in re.findall(r"[^ /,_-]*[ /,_-]*", paragraph):
            while len(token) > width:
                if line:
                    lines.append(line.rstrip())
                    line = ""
                lines.append(token[:width])
                token = token[width:]
            if line and len(line) + len(token.rstrip()) > width:
                lines.append(line.rstrip())
                line = ""
            line += token
        if line.strip():
            lines.append(line.rstrip())
    return "\n".join(lines) or str(text)
