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

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from study.analysis.compare import check_same_declarations, compare_frame, compare_grid
from study.analysis.epochs import EpochIndex
from study.analysis.predictions import MASK_IMAGES, MAX_ROWS, Predictions
from study.analysis.protocol import planned_trials, protocol_differences, setup_grid
from study.analysis.render import (
    DataFile,
    Heading,
    Items,
    Picture,
    Text,
    format_terminal,
    grid,
    render_html,
    render_markdown,
)
from study.analysis.sections import pretraining_section, search_section
from study.analysis.tables import (
    INCLUDED_STATUS,
    TABLE_NOTE,
    Table,
    TableRow,
    TrialFinder,
    build_tables,
    class_iou_frame,
    class_iou_grid,
    declared_tables,
    int_text,
    main_trials,
    present,
    table_frame,
    table_grid,
)
from study.models.choose import ranked_candidates
from study.planning.record import Stage, StudyState
from study.reading.results import StudyResults, load_results
from study.storage import Storage


# -- the report folder -----------------------------------------------------------------
def default_report_dir(storage: Storage, name: str) -> Path:
    """Inside the study folder on local storage; ./report-NAME for an object store."""
    return Path(storage.path(name, "report")) if storage.is_local else Path.cwd() / f"report-{name}"


def report_study(storage: Storage, name: str, out_dir=None, compare_name: str | None = None,
                 results: StudyResults | None = None) -> tuple[Path, str]:
    """Write the report of study `name` (beside `compare_name`'s); (report.md path, terminal text).

    `results`: the study's record when the caller has read it."""
    results = results or load_results(storage, name)
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
        from study.analysis import figures

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
    epochs: EpochIndex
    predictions: Predictions
    records: dict = field(default_factory=dict)  # main trial id -> its record row


def _write_report(results: StudyResults, tables: list[Table], out: Path,
                  other: tuple[StudyResults, list[Table]] | None, storage: Storage | None = None) -> Path:
    main = main_trials(results)
    records = {row["trial_id"]: row for row in main.to_dict("records") if present(row["trial_id"])}
    columns = {table.name: [(row.label, _best_seed(records, row)) for row in table.rows] for table in tables}
    best = best_checkpoint_trial(results.trials)
    predictions = Predictions(declarations={name: results.plan.declaration(name).to_dict()
                                            for name in results.plan.datasets})
    try:
        # The masks' worker starts first: its imports (torch) take longer than anything else the report does.
        predictions.prefetch([trial for found in columns.values() for trial in
                              [t for _, t in found if t is not None][:MAX_ROWS]]
                             + ([best.to_dict()] if best is not None else []))
        draw = _Figures(out)
        context = _Context(results, out, draw, EpochIndex(results.epochs), predictions, records)
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
    blocks += pretraining_section(context)
    if results.plan.search is not None:
        blocks += search_section(context, storage)
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
        blocks += _class_iou_section(context, table, out / f"{stem}.class-iou.csv")
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


def _class_iou_section(context: _Context, table: Table, csv_path: Path) -> list:
    """The per-class IoU of each row, as MMSegmentation prints it, with its CSV."""
    frame = class_iou_frame(table, context.epochs, context.results.plan.class_names)
    shown = class_iou_grid(frame)
    if shown is None:
        return []
    frame.to_csv(csv_path, index=False)
    return [Text("**Per-class IoU** (validation, each finished trial's last validated epoch; mean ± sample std over "
                 "seeds):"), grid(*shown), DataFile(csv_path)]


def _table_figures(context: _Context, table: Table, stem: str, columns: list) -> list:
    figures, draw = context.draw.module, context.draw
    blocks = [draw(f"Learning curves, {figures.PAIR_TITLES[pair]}: {table.title}", figures.learning_curves,
                   table.rows, context.epochs, table.title, pair, stem=f"{stem}-{pair}") for pair in figures.PAIRS]
    blocks.append(draw(f"Per-class IoU: {table.title}", figures.class_iou_bars, table.rows, context.epochs,
                       table.title, context.results.plan.class_names, stem=f"{stem}-class-iou"))
    blocks.append(draw.later(f"Predicted masks: {table.title}", figures.predicted_masks, columns,
                             context.predictions, f"{table.title}: each row's best seed at its best validated epoch",
                             context.results.plan, stem=f"{stem}-masks"))
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
        text += " Columns: " + "; ".join(f"{label} = `{trial['trial_key']}` (epoch {int_text(trial['best_epoch'])})"
                                         for label, trial in shown) + "."
    if missing:
        text += " No trial that finished or was stopped early with stored weights yet: " + "; ".join(missing) + "."
    blocks.append(Text(text))
    return blocks


def _best_seed(records: dict, row: TableRow) -> dict | None:
    """The row's best seed: `study best --table T --row LABEL`'s choice (study/models/choose.py), None if none yet."""
    ranked = ranked_candidates(pd.DataFrame([records[t] for t in row.trial_ids if t in records]))
    return None if ranked.empty else ranked.iloc[0].to_dict()


def best_checkpoint_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The study's best main trial: `study best`'s choice (study/models/choose.py), None if no trial qualifies yet."""
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
                               f"({int_text(best['best_epoch'])})", context.results.plan, stem="predicted-masks"))
    return blocks + [Text(f"Best model of the study (the trial `study best` names): trial `{best['trial_key']}` "
                          f"({best['config_name']}; best val mIoU {float(best['best_val_miou']):.4f} at epoch "
                          f"{int_text(best['best_epoch'])}), weights of its best validated epoch, on the first "
                          f"{MASK_IMAGES} validation images; under each prediction, that image's IoU.")]
















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
