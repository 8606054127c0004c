"""The figures of a study report, as PNG files drawn on matplotlib's Agg canvas (headless).

Each function draws one figure to `path` and returns it; `FigureSkipped` says there is
nothing to draw yet (no finished trial, no checkpoint), which the report notes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from trainables.data.classes import class_names

CURVES = (("train_loss", "train loss"), ("val_loss", "val loss"), ("train_miou", "train mIoU"),
          ("val_miou", "val mIoU"))
IOU_PREFIX = "val_iou_"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# tab20's strong colours first, then its light ones: neighbouring classes never share a hue.
PALETTE = np.array(colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2])


class FigureSkipped(Exception):
    """Nothing to draw yet; the message says why."""


def learning_curves(table, epochs: pd.DataFrame, path) -> Path:
    """Train and val loss and mIoU against epoch, one line per table row (mean over seeds, min-max band)."""
    rows = [(row, _row_epochs(epochs, row)) for row in table.rows]
    rows = [(row, data) for row, data in rows if not data.empty]
    if not rows:
        raise FigureSkipped("no finished trial in this table yet")
    figure = Figure(figsize=(11, 8), layout="constrained")
    axes = figure.subplots(2, 2)
    for (metric, label), ax in zip(CURVES, axes.flat):
        for index, (row, data) in enumerate(rows):
            if metric not in data:
                continue
            values = pd.DataFrame({"epoch": data["epoch"],
                                   metric: pd.to_numeric(data[metric], errors="coerce")}).dropna()
            stats = values.groupby("epoch")[metric].agg(["mean", "min", "max"])
            color = f"C{index % 10}"
            # Validation happens every few epochs: markers show where its points are.
            ax.plot(stats.index, stats["mean"], color=color, label=row.label,
                    marker="o" if metric.startswith("val") else None,
                    markersize=3)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2, linewidth=0)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    figure.suptitle(f"{table.title}: mean over seeds, band = min to max")
    return _save(figure, path)


def class_iou_bars(table, epochs: pd.DataFrame, path) -> Path:
    """Per-class val IoU of each row at its trials' last validated epoch, mean over seeds (error bar: std)."""
    bars = []
    for row in table.rows:
        last = _last_validated(_row_epochs(epochs, row))
        if last.empty:
            continue
        ious = last[_iou_columns(last)].apply(pd.to_numeric, errors="coerce").dropna(axis=1, how="all")
        if not ious.empty:
            bars.append((row, ious.mean(), ious.std().fillna(0.0)))
    if not bars:
        raise FigureSkipped("no finished trial with a validated epoch in this table yet")
    count = max(_class_index(column) for _, mean, _ in bars for column in mean.index) + 1
    names = class_names(next((row.dataset for row, _, _ in bars if row.dataset), None), count)
    figure = Figure(figsize=(max(6.0, 0.5 * count * len(bars) + 2), 4.5), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(bars)
    positions = np.arange(count)
    for index, (row, mean, std) in enumerate(bars):
        classes = np.array([_class_index(column) for column in mean.index])
        ax.bar(classes + (index - (len(bars) - 1) / 2) * width, mean.to_numpy(), width,
               yerr=std.to_numpy(), capsize=2, label=row.label, color=f"C{index % 10}")
    ax.set_xticks(positions, names, rotation=45 if count > 6 else 0, ha="right" if count > 6 else "center")
    ax.set_ylabel("val IoU (last validated epoch)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"{table.title}: per-class IoU")
    return _save(figure, path)


def search_scatter(trials: pd.DataFrame, path) -> Path:
    """Best val mIoU against lr (log scale), colour by arch, marker by pretrain/freeze."""
    if trials.empty:
        raise FigureSkipped("no main trial has started yet")
    main = trials[trials["stage"] == "main"].copy()
    main["lr"] = pd.to_numeric(main["lr"], errors="coerce")
    main["best_val_miou"] = pd.to_numeric(main["best_val_miou"], errors="coerce")
    main = main.dropna(subset=["lr", "best_val_miou"])
    if main.empty:
        raise FigureSkipped("no main trial has a validated epoch yet")
    archs = sorted(main["arch"].astype(str).unique())
    setups = sorted({(str(p), str(f)) for p, f in zip(main["pretrain"], main["freeze"])})
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    for (arch, pretrain, freeze), group in main.groupby([main["arch"].astype(str), main["pretrain"].astype(str),
                                                          main["freeze"].astype(str)]):
        ax.scatter(group["lr"], group["best_val_miou"], color=f"C{archs.index(arch) % 10}",
                   marker=MARKERS[setups.index((pretrain, freeze)) % len(MARKERS)],
                   label=f"{arch}, pretrain {pretrain}, freeze {freeze}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best val mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Search: best val mIoU of each main trial")
    return _save(figure, path)


def best_checkpoint_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The main trial with the highest best val mIoU among those with stored best weights."""
    if trials.empty:
        return None
    scores = pd.to_numeric(trials["best_val_miou"], errors="coerce")
    candidates = trials[(trials["stage"] == "main") & trials["weights_best"].notna() & scores.notna()]
    if candidates.empty:
        return None
    return candidates.loc[scores[candidates.index].idxmax()]


def predicted_masks(trials: pd.DataFrame, path, count: int = 6) -> Path:
    """Input, ground truth and prediction of the study's best model (its best epoch's weights)."""
    best = best_checkpoint_trial(trials)
    if best is None:
        raise FigureSkipped("no main-stage trial has stored weights yet")

    import torch

    from study.models import load_trial_model
    from trainables.data import IGNORE_INDEX, SPLITS, load_split
    from trainables.data.device import DeviceSplit

    model, config = load_trial_model(best.to_dict(), "best")
    arrays = load_split(config.dataset, config.data_root, SPLITS[config.dataset][1], config.image_size,
                        config.cache_dir, max_samples=count, progress=False)
    split = DeviceSplit(arrays.images, arrays.masks, torch.device("cpu"))
    with torch.no_grad():
        prediction = model(split.normalize(split.images)).argmax(1).numpy()
    images, masks = split.images.numpy(), split.masks.numpy()

    names = class_names(config.dataset, config.num_classes)
    colours = np.zeros((256, 3))  # ignored pixels stay black
    colours[: len(names)] = PALETTE[np.arange(len(names)) % len(PALETTE)]
    figure = Figure(figsize=(7.5, 2.5 * len(images) + 1), layout="constrained")
    axes = figure.subplots(len(images), 3, squeeze=False)
    for index in range(len(images)):
        for column, (title, picture) in enumerate((("input", images[index]), ("ground truth", colours[masks[index]]),
                                                   ("prediction", colours[prediction[index]]))):
            ax = axes[index, column]
            ax.imshow(picture, interpolation="nearest")
            ax.set_axis_off()
            if index == 0:
                ax.set_title(title)
    legend = [Patch(color=colours[i], label=name) for i, name in enumerate(names)]
    legend.append(Patch(color="black", label=f"ignored ({IGNORE_INDEX})"))
    figure.legend(handles=legend, loc="outside lower center", ncol=min(len(legend), 5), fontsize="small")
    figure.suptitle(f"{best['trial_key']}: weights of its best epoch ({int(best['best_epoch'])})")
    return _save(figure, path)


def _row_epochs(epochs: pd.DataFrame, row) -> pd.DataFrame:
    if epochs.empty or "trial_id" not in epochs:
        return epochs
    return epochs[epochs["trial_id"].isin(row.trial_ids)]


def _last_validated(epochs: pd.DataFrame) -> pd.DataFrame:
    if epochs.empty or "val_miou" not in epochs:
        return epochs.iloc[0:0]
    validated = epochs[pd.to_numeric(epochs["val_miou"], errors="coerce").notna()]
    return validated.sort_values("epoch").groupby("trial_id").tail(1)


def _iou_columns(frame: pd.DataFrame) -> list[str]:
    columns = [c for c in frame.columns if c.startswith(IOU_PREFIX) and c[len(IOU_PREFIX):].isdigit()]
    return sorted(columns, key=_class_index)


def _class_index(column: str) -> int:
    return int(column[len(IOU_PREFIX):])


def _save(figure: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
