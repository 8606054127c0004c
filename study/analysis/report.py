"""`study report`: the study's declared tables (mean ± std over seeds) beside the protocol that made them,
figures (PNG and SVG), and the same report as Markdown, as one self-contained HTML file and as CSV.

Each declared table row gathers the main-stage trials whose settings equal the row's
`match` and aggregates them over seeds. Only finished trials enter the means; the
others (errored, diverged, stopped early, still running or pending) are counted and
listed, so a report of a partial study says how partial it is.

Two kinds of validation mIoU are shown and labelled apart, because readers mix them up:
"val mIoU (final epoch)" is the value at the last validated epoch, "best val mIoU
(epoch)" is the highest value over all validated epochs and the epoch where the seeds
reached it. Each row's final val mIoU is compared with the table's first row (its
baseline) by Welch's two-sided t-test over seeds.

The report is built once as a list of blocks (headings, text, tables, figures) and
rendered twice: report.md (figures linked) and report.html (figures embedded as data URIs,
CSV files as download links), so one file can be mailed. Its cost is linear in trials and
epochs, and it never imports Ray; torch is imported only to draw predicted masks.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from study.errors import StudyError
from study.models import ranked_candidates
from study.plan import EXECUTION_ONLY
from study.predictions import MASK_IMAGES, MAX_ROWS, Predictions
from study.record import (
    TRIAL_COLUMNS,
    Stage,
    StudyState,
    TrialState,
    matching_mask,
    setting_values,
    settings_from_row,
    typed_frame,
)
from study.results import StudyResults, load_results
from study.spec import RowSpec, TableSpec
from study.storage import Storage, read_text_at
from trainables.config import FIELDS as SETTING_FIELDS
from trainables.trial import join_uri

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
ALPHA = 0.05
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
# Settings that shape what a trial learns (compared between studies): not where or how fast it ran,
# not the seed (compared as a set), not the test-only fault injection.
PROTOCOL_SETTINGS = tuple(name for name in SETTING_FIELDS
                          if name not in EXECUTION_ONLY and name != "seed" and not name.startswith("fault_"))


# -- table declarations --------------------------------------------------------
def declared_tables(results: StudyResults) -> list[TableSpec]:
    """The study file's tables (from the plan), or one row per configuration when it declares none."""
    if results.plan.tables:
        return list(results.plan.tables)
    main = main_trials(results)
    if results.plan.search is not None and not main.empty:
        # A searcher samples each configuration with its own lr: trials are not seeds of one row.
        ranked = main.sort_values("best_val_miou", ascending=False, na_position="last")
        return [TableSpec(name="trials", title="All trials, best first", columns=tuple(METRIC_SOURCES),
                          rows=tuple(RowSpec(label=f"{row.config_name}, lr {row.lr:.3g}",
                                             match={"trial_key": row.trial_key}) for row in ranked.itertuples()))]
    names = list(dict.fromkeys(main["config_name"].dropna())) if "config_name" in main else []
    return [TableSpec(name="configurations", title="All configurations", columns=tuple(METRIC_SOURCES),
                      rows=tuple(RowSpec(label=str(n), match={"config_name": n}) for n in names))]


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
    return [_build_table(find, declaration) for declaration in tables]


def main_trials(results: StudyResults) -> pd.DataFrame:
    return stage_trials(results, Stage.MAIN.value)


def stage_trials(results: StudyResults, stage: str) -> pd.DataFrame:
    return results.trials[results.trials["stage"] == stage] if not results.trials.empty else results.trials


def _build_table(find: TrialFinder, declaration, compared: bool = True) -> Table:
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
    if status in ("errored", "diverged") and _present(trial.get("error")):
        detail = f": {trial['error']}"
    elif status == "diverged" and _present(trial.get("diverged_epoch")):
        detail = f" at epoch {int(trial['diverged_epoch'])}"
    elif status in ("early_stopped", "running") and _present(trial.get("epochs_run")):
        detail = f" after {int(trial['epochs_run'])} of {_int_text(trial.get('epochs'))} epochs"
    return f"{trial['trial_key']} ({status.replace('_', ' ')}{detail})"


def _finite_values(trials: pd.DataFrame, column: str) -> tuple[float, ...]:
    if column not in trials:
        return ()
    values = pd.to_numeric(trials[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return tuple(float(v) for v in values[np.isfinite(values)])


def _present(value) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def _int_text(value) -> str:
    return str(int(value)) if _present(value) else "?"


# -- Welch's t-test --------------------------------------------------------------
def welch_t_test(a, b) -> float | None:
    """Two-sided p-value of Welch's t-test of equal means; None with fewer than 2 values on a side."""
    n1, n2 = len(a), len(b)
    if n1 < 2 or n2 < 2:
        return None
    mean1, mean2 = statistics.fmean(a), statistics.fmean(b)
    var1, var2 = statistics.variance(a), statistics.variance(b)
    standard_error_sq = var1 / n1 + var2 / n2
    if standard_error_sq == 0:
        # No spread on either side: any difference at all is beyond the seeds' spread.
        return 1.0 if mean1 == mean2 else 0.0
    t = (mean1 - mean2) / math.sqrt(standard_error_sq)
    dof = standard_error_sq ** 2 / ((var1 / n1) ** 2 / (n1 - 1) + (var2 / n2) ** 2 / (n2 - 1))
    # P(|T| > |t|) for Student's t with `dof` degrees of freedom.
    return regularized_incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (Numerical Recipes, 6.4), without scipy."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast only for x below (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float, max_terms: int = 500, tolerance: float = 1e-15) -> float:
    tiny = 1e-300

    def guarded(value: float) -> float:
        return tiny if abs(value) < tiny else value

    c, d = 1.0, 1.0 / guarded(1.0 - (a + b) * x / (a + 1))
    result = d
    for m in range(1, max_terms + 1):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / guarded(1.0 + even * d)
        c = guarded(1.0 + even / c)
        result *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / guarded(1.0 + odd * d)
        c = guarded(1.0 + odd / c)
        step = d * c
        result *= step
        if abs(step - 1.0) < tolerance:
            break
    return result


def significance_text(row: TableRow, is_first: bool) -> str:
    if is_first:
        return "baseline"
    if row.p_value is None:
        if row.summaries[SIGNIFICANCE_METRIC].n == 0:
            return "not testable (no finished trial)"
        return "not testable (one seed)"
    verdict = "yes" if row.p_value < ALPHA else "no"
    return f"{verdict} ({format_p(row.p_value)})"


def format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


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


# -- the protocol: what the plan says each row ran ----------------------------------
def planned_trials(results: StudyResults) -> pd.DataFrame:
    """The main trials' settings as planned: the plan's trials; for a search, the record's (the searcher
    sampled them)."""
    if not results.plan.trials:
        return main_trials(results)
    return typed_frame([{"trial_key": t.trial_key, "config_name": t.config_name, "stage": Stage.MAIN.value,
                         **setting_values(t.config)} for t in results.plan.trials], TRIAL_COLUMNS)


def _model_text(s: dict) -> str:
    return f"{s['arch']} ({s['segformer_stem']} stem)" if str(s["arch"]).startswith("segformer") else str(s["arch"])


def _encoder_text(s: dict) -> str:
    pretrain = {"none": "from scratch", "imagenet": "ImageNet"}.get(s["pretrain"], f"{s['pretrain']} pretraining")
    return pretrain + (", frozen" if s.get("freeze") == "encoder" else "")


def _optimizer_text(s: dict) -> str:
    name = {"adamw": "AdamW", "adam": "Adam"}.get(s["optimizer"], str(s["optimizer"]))
    return f"{name}{', amsgrad' if s.get('amsgrad') else ''}, weight decay {s['weight_decay']:g}"


def _schedule_text(s: dict) -> str:
    if s["scheduler"] == "exponential":
        return f"exponential, ×{s['gamma']:g} per epoch"
    if s["scheduler"] == "step":
        return f"step, ×{s['gamma']:g} every {s['step_size']} epochs"
    return str(s["scheduler"])


def _image_size_text(s: dict) -> str:
    height, width = s["image_size"]
    return f"{height}×{width}"


SETUP_COLUMNS = (
    ("model", _model_text),
    ("encoder", _encoder_text),
    ("optimizer", _optimizer_text),
    ("lr", lambda s: f"{s['lr']:g}"),
    ("schedule", _schedule_text),
    ("epochs", lambda s: f"{s['epochs']} (val every {s['val_interval']})"),
    ("batch size", lambda s: str(s["batch_size"])),
    ("image size", _image_size_text),
)


def _settings(trials: pd.DataFrame) -> list[dict]:
    return [settings_from_row(row) for row in trials.to_dict("records")]


def _distinct(values) -> str:
    return " / ".join(dict.fromkeys(values)) or "–"


def seeds_text(seeds) -> str:
    seeds = sorted(set(seeds))
    if len(seeds) > 4 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{len(seeds)} ({seeds[0]}–{seeds[-1]})"
    return ", ".join(map(str, seeds)) or "–"


def setup_grid(find: TrialFinder, declaration) -> tuple[list[str], list[list[str]]]:
    """One line per row of a table: the settings its planned trials share (different values joined by /)."""
    headers = ["row"] + [name for name, _ in SETUP_COLUMNS] + ["seeds"]
    cells = []
    for row in declaration.rows:
        settings = [s for s in _settings(find(row.match)) if _complete(s)]
        cells.append([row.label] + [_distinct(text(s) for s in settings) for _, text in SETUP_COLUMNS]
                     + [seeds_text(s["seed"] for s in settings)])
    return headers, cells


def _complete(settings: dict) -> bool:
    return "seed" in settings and all(name in settings for parts in _SETUP_PARTS.values() for name in parts)


def protocol(find: TrialFinder, match: dict) -> dict[str, str]:
    """Every setting that shapes what a row's trials learn (distinct values joined), and its seeds."""
    settings = _settings(find(match))
    values = {name: _distinct(_setting_text(s.get(name)) for s in settings) for name in PROTOCOL_SETTINGS}
    values["seeds"] = seeds_text(s["seed"] for s in settings if "seed" in s)
    return values


def _setting_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "×".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else "–" if value is None else str(value)


def protocol_differences(declaration, find_a: TrialFinder, find_b: TrialFinder, name_a: str, name_b: str
                         ) -> tuple[list[str], list[list[str]]]:
    """Row, setting, this study's value, the other's: each place where the two protocols differ."""
    cells = []
    for row in declaration.rows:
        a, b = protocol(find_a, row.match), protocol(find_b, row.match)
        cells += [[row.label, name, a[name], b[name]] for name in a if a[name] != b[name]]
    return ["row", "setting", name_a, name_b], cells


def search_protocol(results: StudyResults) -> tuple[list[str], list[list[str]]]:
    """What a search searched and over what: its base settings, dimensions, samples, searcher and scheduler."""
    plan, search = results.plan, results.plan.search
    base = search.base_config
    dims: dict[str, list] = {}
    for variant in search.variants:
        for name, value in variant.items():
            dims.setdefault(name, [])
            if value not in dims[name]:
                dims[name].append(value)
    searched = set(dims) | set(search.float_dims)
    cells = [[name, text(base)] for name, text in SETUP_COLUMNS
             if not any(part in searched for part in _SETUP_PARTS[name])]
    cells += [[name, f"one of {', '.join(map(str, values))}"] for name, values in sorted(dims.items())]
    cells.append(["valid combinations", str(len(search.variants))])
    cells += [[name, f"{kind} in [{low:g}, {high:g}]"] for name, (kind, low, high) in sorted(search.float_dims.items())]
    searcher, scheduler = plan.execution.searcher, plan.execution.scheduler
    cells.append(["samples", f"{search.num_samples}, by {searcher.type} (seed {searcher.seed}, multivariate "
                             f"{searcher.multivariate}, constant liar {searcher.constant_liar})"])
    if scheduler.type == "asha":
        cells.append(["scheduler", f"ASHA on {scheduler.metric} ({scheduler.mode}): grace period "
                                   f"{scheduler.grace_period}, reduction factor {scheduler.reduction_factor}, "
                                   f"max {scheduler.max_t} epochs"])
    else:
        cells.append(["scheduler", f"{scheduler.type}: every trial runs all its epochs"])
    cells.append(["seed", str(base.get("seed"))])
    return ["setting", "value"], cells


# The settings each setup column shows (a column searched over is shown as a dimension instead).
_SETUP_PARTS = {"model": ("arch", "segformer_stem"), "encoder": ("pretrain", "freeze"),
                "optimizer": ("optimizer", "amsgrad", "weight_decay"), "lr": ("lr",),
                "schedule": ("scheduler", "gamma", "step_size"), "epochs": ("epochs", "val_interval"),
                "batch size": ("batch_size",), "image size": ("image_size",)}


# -- comparing two studies -------------------------------------------------------
def check_same_declarations(tables_a: list[Table], tables_b: list[Table], name_a: str, name_b: str) -> None:
    shape_a = [(t.name, [r.label for r in t.rows]) for t in tables_a]
    shape_b = [(t.name, [r.label for r in t.rows]) for t in tables_b]
    if shape_a != shape_b:
        raise StudyError(f"--compare: studies {name_a!r} and {name_b!r} declare different tables "
                         f"(names and row labels must be equal): {shape_a} vs {shape_b}")


def compare_grid(table_a: Table, table_b: Table, name_a: str, name_b: str) -> tuple[list[str], list[list[str]]]:
    """One line per row and metric: A | B | B − A, and Welch's test on the final val mIoU line."""
    headers = ["row", "metric", name_a, name_b, f"difference ({name_b} − {name_a})", "differs? (Welch)"]
    cells = []
    for row_a, row_b in zip(table_a.rows, table_b.rows):
        for metric in table_a.columns:
            a, b = row_a.summaries[metric], row_b.summaries[metric]
            difference = f"{b.mean - a.mean:+.4f}" if a.n and b.n else "–"
            verdict = _compare_verdict(a, b) if metric == SIGNIFICANCE_METRIC else ""
            cells.append([row_a.label, METRIC_LABELS[metric], format_cell(row_a, metric), format_cell(row_b, metric),
                          difference, verdict])
    return headers, cells


def _compare_verdict(a: Summary, b: Summary) -> str:
    p = welch_t_test(a.values, b.values)
    if p is None:
        return "not testable (one seed)" if a.n and b.n else "not testable (no finished trial)"
    return f"{'yes' if p < ALPHA else 'no'} ({format_p(p)})"


# -- text output -------------------------------------------------------------------
def markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    def render(line: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |"

    return "\n".join([render(headers), "|" + "---|" * len(headers), *(render(line) for line in cells)])


def text_table(headers: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(str(line[i])) for line in [headers, *cells]) for i in range(len(headers))]

    def render(line: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()

    return "\n".join([render(headers), render(["-" * w for w in widths]), *(render(line) for line in cells)])


def format_terminal(tables: list[Table], compare: tuple[list[Table], str, str] | None = None) -> str:
    """The tables as aligned text; `compare` = (the other study's tables, this name, other name)."""
    blocks = []
    for index, table in enumerate(tables):
        if compare:
            other, name_a, name_b = compare
            grid = compare_grid(table, other[index], name_a, name_b)
        else:
            grid = table_grid(table)
        blocks.append("\n".join([f"{table.title} [{table.name}]", text_table(*grid), *table.notes]))
    return "\n\n".join(blocks)


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


def compare_frame(table_a: Table, table_b: Table) -> pd.DataFrame:
    lines = []
    for row_a, row_b in zip(table_a.rows, table_b.rows):
        for metric in METRIC_SOURCES:
            a, b = row_a.summaries[metric], row_b.summaries[metric]
            lines.append({"table": table_a.name, "row": row_a.label, "metric": metric, "a_mean": a.mean,
                          "a_std": a.std, "a_n": a.n, "b_mean": b.mean, "b_std": b.std, "b_n": b.n,
                          "difference": b.mean - a.mean,
                          "p_value": welch_t_test(a.values, b.values) if metric == SIGNIFICANCE_METRIC else None})
    return pd.DataFrame(lines)



# -- the report's blocks, rendered as Markdown and as HTML ---------------------------------------------
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str  # Markdown inline: **bold**, *italics*, `code`, [link](target)


@dataclass(frozen=True)
class Items:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Grid:
    headers: tuple[str, ...]
    cells: tuple[tuple[str, ...], ...]  # plain text


@dataclass(frozen=True)
class Picture:
    title: str
    png: Path | None = None  # None: not drawn; `note` says why
    note: str = ""


@dataclass(frozen=True)
class DataFile:
    path: Path


def grid(headers, cells) -> Grid:
    return Grid(tuple(map(str, headers)), tuple(tuple(map(str, line)) for line in cells))


def render_markdown(blocks: list, out: Path) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Text):
            lines.append(block.text)
        elif isinstance(block, Items):
            lines.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Grid):
            lines.append(markdown_table(list(block.headers), [list(line) for line in block.cells]))
        elif isinstance(block, Picture):
            alt = block.title.replace("[", "(").replace("]", ")")  # a bracket would end Markdown's alt text
            lines.append(f"![{alt}]({block.png.relative_to(out).as_posix()})" if block.png
                         else f"*{block.title}: {block.note}*")
        elif isinstance(block, DataFile):
            name = block.path.relative_to(out).as_posix()
            lines.append(f"Data: [{name}]({name})")
        lines.append("")
    return "\n".join(lines)


_STYLE = "\n".join([
    "body{font-family:system-ui,sans-serif;max-width:78rem;margin:2rem auto;padding:0 1rem;line-height:1.45}",
    "table{border-collapse:collapse;margin:0.5rem 0 1rem;font-size:0.9rem}",
    "th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:left;vertical-align:top}th{background:#f3f3f3}",
    "figure{margin:1rem 0}img{max-width:100%;height:auto}figcaption{font-size:0.9rem;color:#555}",
    "code{background:#f3f3f3;padding:0 0.2rem}.note{color:#8a5300}",
])


def render_html(blocks: list, title: str) -> str:
    """One self-contained page: figures as PNG data URIs, CSV files as download links, every text escaped."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{inline_html(block.text)}</p>")
        elif isinstance(block, Items):
            body.append("<ul>" + "".join(f"<li>{inline_html(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Grid):
            head = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.headers)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>"
                           for line in block.cells)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Picture):
            if block.png:
                data = base64.b64encode(block.png.read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(block.title)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(block.title)}</figcaption></figure>")
            else:
                body.append(f'<p class="note"><em>{html.escape(block.title)}: {html.escape(block.note)}</em></p>')
        elif isinstance(block, DataFile):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            name = html.escape(block.path.name)
            body.append(f'<p>Data: <a download="{name}" href="data:text/csv;base64,{data}">{name}</a></p>')
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*(.+?)\*|\[([^\]]+)\]\(([^)\s]+)\)")


def inline_html(text: str) -> str:
    """The Markdown inline forms the report writes, as HTML; everything else escaped."""
    out, position = [], 0
    for found in _INLINE.finditer(text):
        out.append(html.escape(text[position:found.start()]))
        code, bold, italic, label, target = found.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{inline_html(bold)}</strong>")
        elif italic is not None:
            out.append(f"<em>{inline_html(italic)}</em>")
        else:
            out.append(f'<a href="{html.escape(target)}">{inline_html(label)}</a>')
        position = found.end()
    out.append(html.escape(text[position:]))
    return "".join(out)


# -- the report folder -----------------------------------------------------------------
def default_report_dir(storage: Storage, name: str) -> Path:
    """Inside the study folder on local storage; ./report-NAME for an object store."""
    return Path(storage.path(name, "report")) if storage.is_local else Path.cwd() / f"report-{name}"


def report_study(storage: Storage, name: str, out_dir=None, compare_name: str | None = None) -> tuple[Path, str]:
    """Write the report of study `name` (beside `compare_name`'s); (report.md path, terminal text)."""
    results = load_results(storage, name)
    other = load_results(storage, compare_name) if compare_name else None
    tables, compared = _all_tables(results, other)
    out = Path(out_dir) if out_dir else default_report_dir(storage, name)
    path = _write_report(results, tables, out, compared, storage)
    terminal_compare = (compared[1], name, compare_name) if compared else None
    return path, format_terminal(tables, terminal_compare)


def write_report(results: StudyResults, out_dir, compare: StudyResults | None = None,
                 storage: Storage | None = None) -> Path:
    """report.md, report.html, one CSV per table and the figures in `out_dir`, beside another study's values.

    `storage`: where the study lives, for its Optuna study (a search's history and importance figures).
    """
    tables, compared = _all_tables(results, compare)
    return _write_report(results, tables, Path(out_dir), compared, storage)


def _all_tables(results: StudyResults, other_results: StudyResults | None
                ) -> tuple[list[Table], tuple[StudyResults, list[Table]] | None]:
    tables = build_tables(results, declared_tables(results))
    if other_results is None:
        return tables, None
    other_tables = build_tables(other_results, declared_tables(other_results))
    check_same_declarations(tables, other_tables, results.name, other_results.name)
    return tables, (other_results, other_tables)


class _Figures:
    """Draws the report's figures; a failure becomes a note and a warning, never a lost report."""

    def __init__(self, out: Path):
        from study import figures

        self.module = figures
        self.folder = out / "figures"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.problems: list[str] = []
        self.deferred: list[_Later] = []

    def __call__(self, title: str, make, *args, stem: str) -> Picture:
        try:
            path = make(*args, path=self.folder / stem)
        except self.module.FigureSkipped as skipped:
            return Picture(title, note=f"not drawn: {skipped}")
        except Exception as error:  # one broken figure must not lose the rest of the report
            self.problems.append(f"{title}: {type(error).__name__}: {error}")
            print(f"warning: report figure {title!r} failed: {type(error).__name__}: {error}", file=sys.stderr)
            return Picture(title, note="failed, see the notes at the end.")
        return Picture(title, Path(path))

    def later(self, title: str, make, *args, stem: str) -> _Later:
        """A figure drawn by `finish`, after the others (predicted masks wait for their worker meanwhile)."""
        placeholder = _Later(lambda: self(title, make, *args, stem=stem))
        self.deferred.append(placeholder)
        return placeholder

    def finish(self, blocks: list) -> list:
        for placeholder in self.deferred:
            placeholder.picture = placeholder.draw()
        return [block.picture if isinstance(block, _Later) else block for block in blocks]


@dataclass
class _Later:
    draw: object
    picture: Picture | None = None


@dataclass
class _Context:
    results: StudyResults
    out: Path
    draw: _Figures
    epochs: object  # figures.EpochIndex
    predictions: Predictions
    records: dict = field(default_factory=dict)  # main trial id -> its record row


def _write_report(results: StudyResults, tables: list[Table], out: Path,
                  other: tuple[StudyResults, list[Table]] | None, storage: Storage | None = None) -> Path:
    main = main_trials(results)
    records = {row["trial_id"]: row for row in main.to_dict("records") if _present(row["trial_id"])}
    columns = {table.name: [(row.label, _best_seed(records, row)) for row in table.rows] for table in tables}
    best = best_checkpoint_trial(results.trials)
    predictions = Predictions()
    try:
        # The masks' worker starts first: its imports (torch) take longer than anything else the report does.
        predictions.prefetch([trial for found in columns.values() for trial in
                              [t for _, t in found if t is not None][:MAX_ROWS]]
                             + ([best.to_dict()] if best is not None else []))
        draw = _Figures(out)
        context = _Context(results, out, draw, draw.module.EpochIndex(results.epochs), predictions, records)
        blocks = draw.finish(_blocks(context, tables, other, storage, columns))
    finally:
        predictions.close()
    if draw.problems:
        blocks += [Heading("Notes"), Items(tuple(f"figure {problem}" for problem in draw.problems))]
    path = out / "report.md"
    path.write_text(render_markdown(blocks, out))
    (out / "report.html").write_text(render_html(blocks, f"Study report: {results.name}"))
    return path


def _blocks(context: _Context, tables: list[Table], other: tuple[StudyResults, list[Table]] | None,
            storage: Storage | None, columns: dict) -> list:
    results, out = context.results, context.out
    blocks: list = [Heading(f"Study report: {results.name}", 1), *_overview(results)]
    blocks += _pretraining_section(context)
    if results.plan.search is not None:
        blocks += _search_section(context, storage)
    declarations = {t.name: t for t in declared_tables(results)}
    find = TrialFinder(planned_trials(results))
    other_find = TrialFinder(planned_trials(other[0])) if other else None
    for index, table in enumerate(tables):
        declaration = declarations[table.name]
        stem = _file_stem(table.name)
        table_frame(table).to_csv(out / f"{stem}.csv", index=False)
        blocks.append(Heading(table.title))
        if results.plan.search is None or results.plan.tables:
            blocks += [Text("**Protocol** (from the plan):"), grid(*setup_grid(find, declaration))]
        else:
            blocks.append(Text("**Protocol**: the search's, in the section above; each row is one trial."))
        blocks += [Text("**Results**:"), grid(*table_grid(table)), Text(TABLE_NOTE)]
        blocks += [Items(table.notes)] if table.notes else []
        blocks.append(DataFile(out / f"{stem}.csv"))
        if other:
            other_name = other[0].name
            blocks += _compare_section(table, other_name, other[1][index], results.name,
                                       out / f"{stem}.compare.csv")
            headers, cells = protocol_differences(declaration, find, other_find, results.name, other_name)
            blocks.append(Heading(f"Protocol differences with study {other_name}", 3))
            blocks += ([grid(headers, cells)] if cells else
                       [Text("None: both studies planned these rows with the same settings and seeds.")])
        # a table named like the report's own figures (pretraining-loss, predicted-masks) gets its own names
        blocks += _table_figures(context, table, f"{stem}-table" if stem in ("pretraining", "predicted") else stem,
                                 columns[table.name])
    return blocks + _best_model_section(context)


def _table_figures(context: _Context, table: Table, stem: str, columns: list) -> list:
    figures, draw = context.draw.module, context.draw
    blocks = [draw(f"Learning curves, {figures.PAIR_TITLES[pair]}: {table.title}", figures.learning_curves,
                   table.rows, context.epochs, table.title, pair, stem=f"{stem}-{pair}") for pair in figures.PAIRS]
    blocks.append(draw(f"Per-class IoU: {table.title}", figures.class_iou_bars, table.rows, context.epochs,
                       table.title, stem=f"{stem}-class-iou"))
    blocks.append(draw.later(f"Predicted masks: {table.title}", figures.predicted_masks, columns,
                             context.predictions, f"{table.title}: each row's best seed at its best validated epoch",
                             stem=f"{stem}-masks"))
    shown = [(label, trial) for label, trial in columns if trial is not None][:MAX_ROWS]
    missing = [label for label, trial in columns if trial is None]
    text = ("Learning curves: train (dashed) and val (solid) on the same axes, mean over each row's finished seeds, "
            "band from min to max over seeds; trials stopped early by the scheduler are drawn each to its last "
            f"epoch and marked ✕ there; rows past the first {MAX_ROWS} are grey. Per-class IoU: last "
            "validated epoch, mean over seeds, error bar = sample std. Predicted masks: the first "
            f"{MASK_IMAGES} validation images; a column per row: its best seed (highest best val mIoU among "
            "the seeds that finished or were stopped early with stored weights, as `study best --table T --row "
            "LABEL` chooses) "
            "with the weights of its best validated epoch; under each prediction, that image's IoU (mean over the "
            "classes in its ground truth or prediction).")
    if shown:
        text += " Columns: " + "; ".join(f"{label} = `{trial['trial_key']}` (epoch {_int_text(trial['best_epoch'])})"
                                         for label, trial in shown) + "."
    if missing:
        text += " No trial that finished or was stopped early with stored weights yet: " + "; ".join(missing) + "."
    blocks.append(Text(text))
    return blocks


def _best_seed(records: dict, row: TableRow) -> dict | None:
    """The row's best seed: `study best --table T --row LABEL`'s choice (study/models.py), None if none yet."""
    ranked = ranked_candidates(pd.DataFrame([records[t] for t in row.trial_ids if t in records]))
    return None if ranked.empty else ranked.iloc[0].to_dict()


def best_checkpoint_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The study's best main trial: `study best`'s choice (study/models.py), None if no trial qualifies yet."""
    ranked = ranked_candidates(trials[trials["stage"] == Stage.MAIN.value] if not trials.empty else trials)
    return None if ranked.empty else ranked.iloc[0]


def _best_model_section(context: _Context) -> list:
    figures, trials = context.draw.module, context.results.trials
    best = best_checkpoint_trial(trials)
    blocks = [Heading("Best model of the study")]
    if best is None:
        return blocks + [Picture("Predicted masks of the best model", note="not drawn: no main-stage trial has "
                                                                            "ended with stored weights yet")]
    best = best.to_dict()
    blocks.append(context.draw.later("Predicted masks of the best model", figures.predicted_masks,
                               [(best["trial_key"], best)], context.predictions,
                               f"Best model: {best['trial_key']}, weights of its best validated epoch "
                               f"({_int_text(best['best_epoch'])})", stem="predicted-masks"))
    return blocks + [Text(f"Best model of the study (the trial `study best` names): trial `{best['trial_key']}` "
                          f"({best['config_name']}; best val mIoU {float(best['best_val_miou']):.4f} at epoch "
                          f"{_int_text(best['best_epoch'])}), weights of its best validated epoch, on the first "
                          f"{MASK_IMAGES} validation images; under each prediction, that image's IoU.")]


def _pretraining_section(context: _Context) -> list:
    results, draw = context.results, context.draw
    jobs = results.plan.pretrain_jobs
    if not jobs:
        return []
    figures = draw.module
    pretrain = stage_trials(results, Stage.PRETRAIN.value)
    find = TrialFinder(pretrain)
    declaration = TableSpec(name="pretraining", title="Pretraining", columns=tuple(METRIC_SOURCES),
                            rows=tuple(RowSpec(label=f"{job.source}, {_model_text(job.config)}",
                                               match={"trial_key": job.trial_key}) for job in jobs))
    table = _build_table(find, declaration, compared=False)
    blocks: list = [Heading("Pretraining"),
                    Text("Encoders pretrained before the main trials, each by one job of the plan (the seed "
                         "report's Table 5), and what became of each.")]
    for job in jobs:
        found = find({"trial_key": job.trial_key})
        trial = found.to_dict("records")[0] if not found.empty else {}
        blocks += [Heading(f"{job.source}, {_model_text(job.config)}: {job.trial_key}", 3),
                   grid(*_job_setup(job, trial))]
    blocks += [Text("**Results**:"), grid(*table_grid(table))]
    blocks += [Items(table.notes)] if table.notes else []
    blocks += [draw(f"Pretraining curves, {figures.PAIR_TITLES[pair]}", figures.learning_curves, table.rows,
                    context.epochs, "Pretraining: each job on its own dataset", pair, stem=f"pretraining-{pair}")
               for pair in figures.PAIRS]
    blocks.append(Text("Pretraining curves: train (dashed) and val (solid) of each job on its own dataset; a job "
                       "reused from an earlier study is drawn from the epochs its encoder's record carries."))
    return blocks


def _job_setup(job, trial: dict) -> tuple[list[str], list[list[str]]]:
    """A pretraining job's settings, from the plan, and what became of it, from the record."""
    s = job.config
    export = s.get("export_encoder", "last")
    if export == "best" and _present(trial.get("best_epoch")):
        kept = f"best validated epoch (epoch {int(trial['best_epoch'])})"
    elif export == "last" and _present(trial.get("epochs_run")) and trial.get("epochs_run"):
        kept = f"last epoch (epoch {int(trial['epochs_run'])})"
    else:
        kept = {"best": "best validated epoch", "last": "last epoch"}.get(export, str(export))
    cells = [["dataset", f"{s['dataset']} ({len(_class_names(s['dataset']))} classes)"], ["model", _model_text(s)],
             ["encoder at start", _encoder_text(s)], ["image size", _image_size_text(s)],
             ["epochs", f"{s['epochs']} (val every {s['val_interval']})"], ["batch size", str(s["batch_size"])],
             ["optimizer", _optimizer_text(s)], ["lr", f"{s['lr']:g}"], ["schedule", _schedule_text(s)],
             ["seed", str(s["seed"])], ["encoder exported", kept], ["trained", _provenance(trial)],
             ["encoder key", job.key]]
    return ["setting", "value"], cells


def _class_names(dataset: str) -> tuple:
    from trainables.data.classes import CLASS_NAMES

    return CLASS_NAMES.get(dataset, ())


def _provenance(trial: dict) -> str:
    """Trained here or reused from an earlier study of the same storage (its encoder store says which)."""
    if not trial:
        return "not yet"
    if trial.get("reused") is True:
        made_by = None
        try:
            made_by = json.loads(read_text_at(join_uri(str(trial["path"]), "job.json"))).get("made_by_study")
        except (StudyError, ValueError, AttributeError):
            pass
        return f"reused from study {made_by}" if made_by else "reused from an earlier study (its record is unreadable)"
    if trial.get("status") == TrialState.FINISHED.value:
        return "here, by this study"
    return f"here, by this study: {str(trial.get('status')).replace('_', ' ')} so far"


def _search_section(context: _Context, storage: Storage | None) -> list:
    results, draw = context.results, context.draw
    figures = draw.module
    plan = results.plan
    dimensions = list(dict.fromkeys(name for variant in plan.search.variants for name in variant))
    url = _optuna_storage_url(plan, storage, results.name)
    target = f"final {plan.execution.scheduler.metric}"
    loaded: dict = {}

    def load_study():
        if "study" not in loaded:
            try:
                if url is None and storage is None:
                    raise figures.FigureSkipped("the report was written without the study's storage "
                                                "(write_report(..., storage=...))")
                loaded["study"] = figures.optuna_study(url, results.name)
            except Exception as error:  # noqa: BLE001 - read once; both figures say the same
                loaded["study"] = error
        if isinstance(loaded["study"], Exception):
            raise loaded["study"]
        return loaded["study"]

    return [Heading("Search"), Text("**Protocol** (from the plan):"), grid(*search_protocol(results)),
            draw("Search: best val mIoU against lr", figures.search_scatter, results.trials, dimensions,
                 stem="search-lr"),
            draw("Search: optimisation history", figures.optimization_history, load_study, target,
                 stem="search-history"),
            draw("Search: parameter importances", figures.parameter_importances, load_study, target,
                 stem="search-importance"),
            Text("Best val mIoU against lr: every main trial, a colour and marker per combination of the "
                 "categorical dimensions; hollow: stopped early by the scheduler (its best before the stop). "
                 f"Optimisation history and parameter importances: Optuna's, of its study `{results.name}` "
                 f"({'in ' + _shown_url(url) if url else 'not stored'}), on the {target} of each completed trial; "
                 "importances use Optuna's default evaluator over whatever parameters that study holds.")]


def _optuna_storage_url(plan, storage: Storage | None, name: str) -> str | None:
    """The same rule as study/tune/stage.py's optuna_storage_url (which imports Ray; a test keeps the two equal)."""
    if plan.execution.searcher.storage is None and storage is not None and storage.is_local:
        return f"sqlite:///{storage.path(name, 'optuna.db')}"
    return plan.execution.searcher.storage


def _shown_url(url: str) -> str:
    return f"`{re.sub(r'//[^/@]*@', '//***@', url)}`"  # never a password in the report


def _compare_section(table: Table, other_name: str, other_table: Table, name: str, csv_path: Path) -> list:
    compare_frame(table, other_table).to_csv(csv_path, index=False)
    blocks = [Heading(f"Compared with study {other_name}", 3),
              grid(*compare_grid(table, other_table, name, other_name)),
              Text(f"Difference = {other_name} − {name}, of the means. Welch's t-test on the final val mIoU over each "
                   f"study's seeds.")]
    if other_table.notes:
        blocks.append(Items(tuple(f"{other_name}: {note}" for note in other_table.notes)))
    return blocks + [DataFile(csv_path)]


def _overview(results: StudyResults) -> list:
    trials = results.trials
    parts = [f"Study state: **{results.state.value}**."]
    if not trials.empty:
        for stage, group in trials.groupby("stage", sort=False):
            counts = group["status"].value_counts()
            parts.append(f"{stage}: " + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items()) + ".")
    if results.state != StudyState.FINISHED:
        main = main_trials(results)
        done = int((main["status"] == INCLUDED_STATUS).sum()) if not main.empty else 0
        parts.append(f"The study is not finished: {done} of {len(main)} main trials have finished, and the "
                     "tables cover those.")
    blocks = [Text(" ".join(parts)),
              Text("Figures are in `figures/`, each as PNG and as SVG (vector, for print); `report.html` is this "
                   "report in one file, figures and data included.")]
    if results.notes:
        blocks += [Text("Damage found in the study's record, and what was done about it:"), Items(results.notes)]
    return blocks


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "table"
