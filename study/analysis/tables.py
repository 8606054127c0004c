"""The report's tables: each declared row's main trials aggregated over seeds (mean ± std), with the
trials left out of the means named, and each row's final val mIoU tested against the first row's."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from study.analysis.significance import ALPHA, format_p, welch_t_test
from study.planning.record import Stage, TrialState, matching_mask
from study.planning.spec import TableSpec
from study.planning.tables import report_tables
from study.reading.results import StudyResults

# Declared column -> the trial column holding its value (see results.py for how each is taken).
METRIC_SOURCES = {
    "train_loss": "final_train_loss",
    "train_miou": "final_train_miou",
    "val_loss": "final_val_loss",
    "val_miou": "final_val_miou",
    "best_val_miou": "best_val_miou",
}


METRIC_LABELS = {
    "train_loss": "train loss (final epoch)",
    "train_miou": "train mIoU (final epoch)",
    "val_loss": "val loss (final epoch)",
    "val_miou": "val mIoU (final epoch)",
    "best_val_miou": "best val mIoU (epoch)",
}


SIGNIFICANCE_METRIC = "val_miou"


INCLUDED_STATUS = TrialState.FINISHED.value


FINISHED_MARK = "†"


TABLE_NOTE = (
    "Cells are mean ± sample std over seeds (n = finished trials). *(final epoch)* columns hold the "
    "train values of the last epoch and the val values of the last validated epoch; *best val mIoU (epoch)* "
    "is the highest val mIoU over all validated epochs, then the epoch where the seeds reached it (the median "
    "and range over seeds; each seed's epoch is in the CSV). "
    f"*differs from first row?* compares each row's final val mIoU with the first row's by Welch's two-sided t-test "
    f"over seeds (unequal variances), significant at p < {ALPHA}."
)


# -- table declarations --------------------------------------------------------
def declared_tables(results: StudyResults) -> list[TableSpec]:
    """The tables the report shows: the study file's (from the plan), or its defaults (study/planning/tables.py)."""
    return report_tables(results.plan, main_trials(results))


# -- aggregation ---------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """One metric of one row over seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.n else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else math.nan


@dataclass(frozen=True)
class TableRow:
    label: str
    summaries: dict  # metric -> Summary, for every metric in METRIC_SOURCES
    best_epochs: tuple[int, ...]
    trial_ids: tuple[str, ...]  # the finished trials in the means (for figures)
    finished: int
    total: int
    excluded: tuple[str, ...]  # one line per trial left out of the means
    dataset: str | None
    p_value: float | None = None  # final val mIoU vs the first row; None when not testable or first row
    stopped_ids: tuple[str, ...] = ()  # trials the scheduler stopped early: drawn to where they stopped

    @property
    def partial(self) -> bool:
        return self.finished < self.total


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    columns: tuple[str, ...]  # declared metrics, best val mIoU always last
    rows: tuple[TableRow, ...]
    notes: tuple[str, ...]
    compared: bool = True  # rows tested against the first (not for pretraining jobs, which are not alternatives)


class TrialFinder:
    """The trials that a row's `match` selects, by matching_mask's rules.

    A row matching one text column (the default tables: a trial key or a configuration per
    row) is looked up in an index built once per column, so a table of T rows over T trials
    costs O(T), not O(T²).
    """

    def __init__(self, trials: pd.DataFrame):
        self.trials = trials
        self._indexes: dict[str, dict] = {}

    def __call__(self, match: dict) -> pd.DataFrame:
        if len(match) == 1:
            (name, expected), = match.items()
            if name in self.trials and str(self.trials[name].dtype) == "string":
                if name not in self._indexes:
                    self._indexes[name] = self.trials.groupby(self.trials[name], sort=False, dropna=True).indices
                found = self._indexes[name].get(str(expected))
                return self.trials.iloc[found if found is not None else np.array([], dtype=int)]
        return self.trials[matching_mask(self.trials, match)]


def build_tables(results: StudyResults, tables) -> list[Table]:
    find = TrialFinder(main_trials(results))
    return [build_table(find, declaration) for declaration in tables]


def main_trials(results: StudyResults) -> pd.DataFrame:
    return stage_trials(results, Stage.MAIN.value)


def stage_trials(results: StudyResults, stage: str) -> pd.DataFrame:
    return results.trials[results.trials["stage"] == stage] if not results.trials.empty else results.trials


def build_table(find: TrialFinder, declaration, compared: bool = True) -> Table:
    columns = [c for c in declaration.columns if c != "best_val_miou" and c in METRIC_SOURCES] + ["best_val_miou"]
    rows = [_build_row(find(row.match), row.label) for row in declaration.rows]
    if rows and compared:
        baseline = rows[0].summaries[SIGNIFICANCE_METRIC].values
        rows = rows[:1] + [_with_p_value(row, baseline) for row in rows[1:]]
    notes = []
    for row in rows:
        if row.total == 0:
            notes.append(f"{row.label}: no trial of this study matches this row.")
        elif row.partial:
            notes.append(f"{FINISHED_MARK} {row.label}: {row.finished} of {row.total} trials finished; "
                         f"left out of the means: " + "; ".join(row.excluded) + ".")
    return Table(name=declaration.name, title=declaration.title, columns=tuple(columns), rows=tuple(rows),
                 notes=tuple(notes), compared=compared)


def _build_row(trials: pd.DataFrame, label: str) -> TableRow:
    status = trials["status"].fillna("")
    finished = trials[status == INCLUDED_STATUS]
    summaries = {metric: Summary(_finite_values(finished, source)) for metric, source in METRIC_SOURCES.items()}
    best_epochs = tuple(int(e) for e in finished["best_epoch"].dropna().tolist())
    excluded = tuple(_exclusion_line(trial) for trial in trials[status != INCLUDED_STATUS].to_dict("records"))
    datasets = trials["dataset"].dropna().unique()
    return TableRow(label=label, summaries=summaries, best_epochs=best_epochs, trial_ids=_ids(finished),
                    finished=len(finished), total=len(trials), excluded=excluded,
                    dataset=str(datasets[0]) if len(datasets) else None,
                    stopped_ids=_ids(trials[status == TrialState.EARLY_STOPPED.value]))


def _ids(trials: pd.DataFrame) -> tuple[str, ...]:
    # tolist(), not iteration: element access to an Arrow-backed string column costs far more than its conversion
    return tuple(trials["trial_id"].dropna().tolist())


def _with_p_value(row: TableRow, baseline: tuple[float, ...]) -> TableRow:
    return replace(row, p_value=welch_t_test(baseline, row.summaries[SIGNIFICANCE_METRIC].values))


def _exclusion_line(trial: dict) -> str:
    status = trial["status"]
    detail = ""
    if status in ("errored", "diverged") and present(trial.get("error")):
        detail = f": {trial['error']}"
    elif status == "diverged" and present(trial.get("diverged_epoch")):
        detail = f" at epoch {int(trial['diverged_epoch'])}"
    elif status in ("early_stopped", "running") and present(trial.get("epochs_run")):
        detail = f" after {int(trial['epochs_run'])} of {int_text(trial.get('epochs'))} epochs"
    return f"{trial['trial_key']} ({status.replace('_', ' ')}{detail})"


def _finite_values(trials: pd.DataFrame, column: str) -> tuple[float, ...]:
    if column not in trials:
        return ()
    values = pd.to_numeric(trials[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return tuple(float(v) for v in values[np.isfinite(values)])


def present(value) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def int_text(value) -> str:
    return str(int(value)) if present(value) else "?"


def significance_text(row: TableRow, is_first: bool) -> str:
    if is_first:
        return "baseline"
    if row.p_value is None:
        if row.summaries[SIGNIFICANCE_METRIC].n == 0:
            return "not testable (no finished trial)"
        return "not testable (one seed)"
    verdict = "yes" if row.p_value < ALPHA else "no"
    return f"{verdict} ({format_p(row.p_value)})"


# -- cells -----------------------------------------------------------------------
def format_summary(summary: Summary) -> str:
    if summary.n == 0:
        return "–"
    if summary.n == 1:
        return f"{summary.mean:.4f} (n=1)"
    return f"{summary.mean:.4f} ± {summary.std:.4f} (n={summary.n})"


def format_best_epochs(epochs: tuple[int, ...]) -> str:
    """"best at epoch 27 (median; range 22–30)": one line for any number of seeds."""
    if not epochs:
        return ""
    if len(epochs) == 1:
        return f"best at epoch {epochs[0]}"
    if len(set(epochs)) == 1:
        return f"best at epoch {epochs[0]} ({'both' if len(epochs) == 2 else f'all {len(epochs)}'} seeds)"
    return f"best at epoch {statistics.median(epochs):g} (median; range {min(epochs)}–{max(epochs)})"


def format_cell(row: TableRow, metric: str) -> str:
    text = format_summary(row.summaries[metric])
    if metric == "best_val_miou" and row.best_epochs:
        text += ", " + format_best_epochs(row.best_epochs)
    return text


def table_grid(table: Table) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of one table, shared by Markdown, HTML and the terminal."""
    tested = table.compared and len(table.rows) > 1
    headers = ["row", "finished/total"] + [METRIC_LABELS[c] for c in table.columns]
    if tested:
        headers.append("final val mIoU differs from first row? (Welch)")
    cells = []
    for index, row in enumerate(table.rows):
        label = f"{row.label} {FINISHED_MARK}" if row.partial else row.label
        line = [label, f"{row.finished}/{row.total}"] + [format_cell(row, c) for c in table.columns]
        if tested:
            line.append(significance_text(row, index == 0))
        cells.append(line)
    return headers, cells


# -- CSV -----------------------------------------------------------------------------
def table_frame(table: Table) -> pd.DataFrame:
    """Long form, every metric: one line per row and metric."""
    lines = []
    for index, row in enumerate(table.rows):
        for metric, summary in row.summaries.items():
            tested = metric == SIGNIFICANCE_METRIC and index > 0
            lines.append({
                "table": table.name, "row": row.label, "metric": metric, "metric_label": METRIC_LABELS[metric],
                "mean": summary.mean, "std": summary.std, "n": summary.n,
                "values": ";".join(f"{v:.6g}" for v in summary.values),
                "best_epochs": ";".join(map(str, row.best_epochs)) if metric == "best_val_miou" else "",
                "finished": row.finished, "total": row.total,
                "p_value_vs_first_row": row.p_value if tested else None,
                "differs_from_first_row": significance_text(row, False) if tested else "",
            })
    return pd.DataFrame(lines)


# -- per-class IoU, as MMSegmentation prints it after an evaluation --------------------------------
WIDE_CLASSES = 12  # beyond this many classes the per-class table lists one class per line


def class_iou_frame(table: Table, epochs, class_names) -> pd.DataFrame:
    """Long form: one line per row and class: its val IoU at each finished trial's last validated epoch, mean and
    sample std over those trials. `class_names(dataset, count)` names the classes (the plan's declaration)."""
    from study.analysis.epochs import class_ious

    lines = []
    for row in table.rows:
        mean, std = class_ious(epochs, row.trial_ids)
        if mean.empty:
            continue
        count = int(max(mean.index)) + 1
        names = class_names(row.dataset, count)
        n = len(epochs.last_validated(row.trial_ids))
        for class_id in range(count):
            lines.append({"table": table.name, "row": row.label, "class_id": class_id, "class": names[class_id],
                          "mean": float(mean.get(class_id, math.nan)), "std": float(std.get(class_id, math.nan)),
                          "n": n})
    return pd.DataFrame(lines, columns=["table", "row", "class_id", "class", "mean", "std", "n"])


def class_iou_grid(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]] | None:
    """A row per table row and a column per class (a line per class past WIDE_CLASSES classes); None if empty."""
    if frame.empty:
        return None

    def cell(line) -> str:
        if not math.isfinite(line["mean"]):
            return "–"
        return f"{line['mean']:.4f}" + (f" ± {line['std']:.4f}" if line["n"] > 1 else "")

    labels = list(dict.fromkeys(frame["row"]))
    classes = list(dict.fromkeys(zip(frame["class_id"], frame["class"])))
    cells = {(line["row"], line["class_id"]): cell(line) for line in frame.to_dict("records")}
    if len(classes) <= WIDE_CLASSES:
        return ["row", *(name for _, name in classes)], \
            [[label, *(cells.get((label, class_id), "–") for class_id, _ in classes)] for label in labels]
    return ["class", *labels], [[name, *(cells.get((label, class_id), "–") for label in labels)]
                                for class_id, name in classes]
