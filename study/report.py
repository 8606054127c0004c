"""`study report`: the study's declared tables (mean ± std over seeds), figures, Markdown and CSV.

Each declared table row gathers the main-stage trials whose settings equal the row's
`match` and aggregates them over seeds. Only finished trials enter the means; the
others (errored, diverged, stopped early, still running or pending) are counted and
listed, so a report of a partial study says how partial it is.

Two kinds of validation mIoU are shown and labelled apart, because readers mix them up:
"val mIoU (final epoch)" is the value at the last validated epoch, "best val mIoU
(epoch)" is the highest value over all validated epochs and the epoch where each seed
reached it. Each row's final val mIoU is compared with the table's first row (its
baseline) by Welch's two-sided t-test over seeds.
"""

from __future__ import annotations

import math
import re
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from study.errors import StudyError
from study.record import StudyState, matching_mask
from study.results import StudyResults, load_results
from study.spec import RowSpec, TableSpec
from study.storage import Storage

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
INCLUDED_STATUS = "finished"
FINISHED_MARK = "†"
TABLE_NOTE = (
    "Cells are mean ± sample std over seeds (n = finished trials). *(final epoch)* columns hold the "
    "train values of the last epoch and the val values of the last validated epoch; *best val mIoU (epoch)* "
    "is the highest val mIoU over all validated epochs, followed by the epoch where each seed reached it. "
    f"*differs from first row?* compares each row's final val mIoU with the first row's by Welch's two-sided t-test "
    f"over seeds (unequal variances), significant at p < {ALPHA}."
)


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


def build_tables(results: StudyResults, tables) -> list[Table]:
    main = main_trials(results)
    return [_build_table(main, declaration) for declaration in tables]


def main_trials(results: StudyResults) -> pd.DataFrame:
    return results.trials[results.trials["stage"] == "main"] if not results.trials.empty else results.trials


def _build_table(main: pd.DataFrame, declaration) -> Table:
    columns = [c for c in declaration.columns if c != "best_val_miou" and c in METRIC_SOURCES] + ["best_val_miou"]
    rows = [_build_row(main, row.label, row.match) for row in declaration.rows]
    if rows:
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
                 notes=tuple(notes))


def _build_row(main: pd.DataFrame, label: str, match: dict) -> TableRow:
    trials = main[matching_mask(main, match)]
    finished = trials[trials["status"] == INCLUDED_STATUS] if not trials.empty else trials
    summaries = {metric: Summary(_finite_values(finished, source)) for metric, source in METRIC_SOURCES.items()}
    best_epochs = tuple(int(e) for e in finished["best_epoch"].dropna()) if "best_epoch" in finished else ()
    excluded = tuple(_exclusion_line(trial) for _, trial in trials.iterrows() if trial["status"] != INCLUDED_STATUS)
    datasets = trials["dataset"].dropna().unique() if "dataset" in trials else []
    return TableRow(label=label, summaries=summaries, best_epochs=best_epochs,
                    trial_ids=tuple(str(t) for t in finished.get("trial_id", [])), finished=len(finished),
                    total=len(trials), excluded=excluded, dataset=str(datasets[0]) if len(datasets) else None)


def _with_p_value(row: TableRow, baseline: tuple[float, ...]) -> TableRow:
    return replace(row, p_value=welch_t_test(baseline, row.summaries[SIGNIFICANCE_METRIC].values))


def _exclusion_line(trial: pd.Series) -> str:
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
    values = pd.to_numeric(trials[column], errors="coerce").astype(float)
    return tuple(float(v) for v in values if math.isfinite(v))


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA


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


def format_cell(row: TableRow, metric: str) -> str:
    text = format_summary(row.summaries[metric])
    if metric == "best_val_miou" and row.best_epochs:
        label = "epoch" if len(row.best_epochs) == 1 else "epochs"
        text += f" @ {label} " + ", ".join(str(e) for e in row.best_epochs)
    return text


def table_grid(table: Table) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of one table, shared by Markdown and the terminal."""
    headers = ["row", "finished/total"] + [METRIC_LABELS[c] for c in table.columns]
    if len(table.rows) > 1:
        headers.append("final val mIoU differs from first row? (Welch)")
    cells = []
    for index, row in enumerate(table.rows):
        label = f"{row.label} {FINISHED_MARK}" if row.partial else row.label
        line = [label, f"{row.finished}/{row.total}"] + [format_cell(row, c) for c in table.columns]
        if len(table.rows) > 1:
            line.append(significance_text(row, index == 0))
        cells.append(line)
    return headers, cells


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


# -- the report folder -----------------------------------------------------------------
def default_report_dir(storage: Storage, name: str) -> Path:
    """Inside the study folder on local storage; ./report-NAME for an object store."""
    return Path(storage.path(name, "report")) if storage.is_local else Path.cwd() / f"report-{name}"


def report_study(storage: Storage, name: str, out_dir=None, compare_name: str | None = None) -> tuple[Path, str]:
    """Write the report of study `name` (beside `compare_name`'s); (report.md path, terminal text)."""
    results = load_results(storage, name)
    other = load_results(storage, compare_name) if compare_name else None
    tables, compared = _all_tables(results, other)
    path = _write_report(results, tables, Path(out_dir) if out_dir else default_report_dir(storage, name), compared)
    terminal_compare = (compared[1], name, compare_name) if compared else None
    return path, format_terminal(tables, terminal_compare)


def write_report(results: StudyResults, out_dir, compare: StudyResults | None = None) -> Path:
    """report.md, one CSV per table and the figures in `out_dir`, beside another study's values."""
    tables, compared = _all_tables(results, compare)
    return _write_report(results, tables, Path(out_dir), compared)


def _all_tables(results: StudyResults, other_results: StudyResults | None
                ) -> tuple[list[Table], tuple[StudyResults, list[Table]] | None]:
    tables = build_tables(results, declared_tables(results))
    if other_results is None:
        return tables, None
    other_tables = build_tables(other_results, declared_tables(other_results))
    check_same_declarations(tables, other_tables, results.name, other_results.name)
    return tables, (other_results, other_tables)


def _write_report(results: StudyResults, tables: list[Table], out: Path,
                  other: tuple[StudyResults, list[Table]] | None) -> Path:
    from study import figures

    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []

    def figure(title: str, make, *args) -> str:
        """Markdown for one figure; a failure becomes a note and a warning, never a lost report."""
        try:
            path = make(*args)
        except figures.FigureSkipped as skipped:
            return f"*{title}: not drawn: {skipped}*"
        except Exception as error:  # one broken figure must not lose the rest of the report
            problems.append(f"{title}: {type(error).__name__}: {error}")
            print(f"warning: report figure {title!r} failed: {type(error).__name__}: {error}", file=sys.stderr)
            return f"*{title}: failed, see the notes at the end.*"
        return f"![{title}]({Path(path).relative_to(out).as_posix()})"

    lines = [f"# Study report: {results.name}", "", _overview(results), ""]
    for index, table in enumerate(tables):
        stem = _file_stem(table.name)
        table_frame(table).to_csv(out / f"{stem}.csv", index=False)
        lines += [f"## {table.title}", "", markdown_table(*table_grid(table)), "", TABLE_NOTE, ""]
        lines += [f"- {note}" for note in table.notes] + ([""] if table.notes else [])
        lines += [f"Data: [{stem}.csv]({stem}.csv)", ""]
        if other:
            lines += _compare_section(table, other[0].name, other[1][index], results.name, out / f"{stem}.compare.csv")
        lines += [figure(f"Learning curves: {table.title}", figures.learning_curves, table, results.epochs,
                         figure_dir / f"{stem}-curves.png"), "",
                  figure(f"Per-class IoU: {table.title}", figures.class_iou_bars, table, results.epochs,
                         figure_dir / f"{stem}-class-iou.png"), "",
                  "Learning curves: mean over the trials in the table's means, band from min to max over seeds. "
                  "Per-class IoU: last validated epoch, mean over seeds, error bar = sample std.", ""]
    if results.plan.search is not None:
        lines += ["## Search: validation mIoU against learning rate", "",
                  figure("Search: best val mIoU vs lr", figures.search_scatter, results.trials,
                         figure_dir / "search-lr.png"), ""]
    lines += ["## Predicted masks", "",
              figure("Predicted masks", figures.predicted_masks, results.trials,
                     figure_dir / "predicted-masks.png"), "",
              _best_model_caption(results.trials), ""]
    if problems:
        lines += ["## Notes", "", *[f"- figure {problem}" for problem in problems], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _compare_section(table: Table, other_name: str, other_table: Table, name: str, csv_path: Path) -> list[str]:
    compare_frame(table, other_table).to_csv(csv_path, index=False)
    return [f"### Compared with study {other_name}", "",
            markdown_table(*compare_grid(table, other_table, name, other_name)),
            "", f"Difference = {other_name} − {name}, of the means. Welch's t-test on the final val mIoU over each "
                f"study's seeds.", *[f"- {other_name}: {note}" for note in other_table.notes], "",
            f"Data: [{csv_path.name}]({csv_path.name})", ""]


def _overview(results: StudyResults) -> str:
    trials = results.trials
    parts = [f"Study state: **{results.state.value}**."]
    if not trials.empty:
        for stage, group in trials.groupby("stage", sort=False):
            counts = group["status"].value_counts()
            parts.append(f"{stage}: " + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items()) + ".")
    if results.state != StudyState.FINISHED:
        parts.append("The study is not finished: the tables cover the trials finished so far.")
    text = " ".join(parts)
    if results.notes:
        text += "\n\nDamage found in the study's record, and what was done about it:\n\n" + \
            "\n".join(f"- {note}" for note in results.notes)
    return text


def _best_model_caption(trials: pd.DataFrame) -> str:
    from study.figures import best_checkpoint_trial

    best = best_checkpoint_trial(trials)
    if best is None:
        return ""
    return (f"Best model of the study: trial `{best['trial_key']}` (best val mIoU {float(best['best_val_miou']):.4f} "
            f"at epoch {_int_text(best['best_epoch'])}), weights of its best epoch, on the first validation images.")


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "table"
