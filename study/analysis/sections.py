"""The report's sections about how a study got its numbers: its pretraining jobs and its search."""

from __future__ import annotations

import json
import re

from study.analysis.protocol import (
    encoder_text,
    image_size_text,
    model_text,
    optimizer_text,
    schedule_text,
    search_protocol,
)
from study.analysis.render import Heading, Items, Text, grid
from study.analysis.tables import METRIC_SOURCES, TrialFinder, build_table, present, stage_trials, table_grid
from study.errors import StudyError
from study.planning.plan import optuna_storage_url
from study.planning.record import Stage, TrialState
from study.planning.spec import RowSpec, TableSpec
from study.storage import Storage, read_text_at
from trainables.config import PRESET_CLASSES
from trainables.trial import join_uri


def pretraining_section(context) -> list:
    results, draw = context.results, context.draw
    jobs = results.plan.pretrain_jobs
    if not jobs:
        return []
    figures = draw.module
    pretrain = stage_trials(results, Stage.PRETRAIN.value)
    find = TrialFinder(pretrain)
    declaration = TableSpec(name="pretraining", title="Pretraining", columns=tuple(METRIC_SOURCES),
                            rows=tuple(RowSpec(label=f"{job.source}, {model_text(job.config)}",
                                               match={"trial_key": job.trial_key}) for job in jobs))
    table = build_table(find, declaration, compared=False)
    blocks: list = [Heading("Pretraining"),
                    Text("Encoders pretrained before the main trials, each by one job of the plan (the seed "
                         "report's Table 5), and what became of each.")]
    for job in jobs:
        found = find({"trial_key": job.trial_key})
        trial = found.to_dict("records")[0] if not found.empty else {}
        blocks += [Heading(f"{job.source}, {model_text(job.config)}: {job.trial_key}", 3),
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
    if export == "best" and present(trial.get("best_epoch")):
        kept = f"best validated epoch (epoch {int(trial['best_epoch'])})"
    elif export == "last" and present(trial.get("epochs_run")) and trial.get("epochs_run"):
        kept = f"last epoch (epoch {int(trial['epochs_run'])})"
    else:
        kept = {"best": "best validated epoch", "last": "last epoch"}.get(export, str(export))
    classes = s.get("num_classes") or PRESET_CLASSES.get(s["dataset"], "?")  # plans before format 4: a preset
    cells = [["dataset", f"{s['dataset']} ({classes} classes)"], ["model", model_text(s)],
             ["encoder at start", encoder_text(s)], ["image size", image_size_text(s)],
             ["epochs", f"{s['epochs']} (val every {s['val_interval']})"], ["batch size", str(s["batch_size"])],
             ["optimizer", optimizer_text(s)], ["lr", f"{s['lr']:g}"], ["schedule", schedule_text(s)],
             ["seed", str(s["seed"])], ["encoder exported", kept], ["trained", _provenance(trial)],
             ["encoder key", job.key]]
    return ["setting", "value"], cells


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


def search_section(context, storage: Storage | None) -> list:
    results, draw = context.results, context.draw
    figures = draw.module
    plan = results.plan
    dimensions = list(dict.fromkeys(name for variant in plan.search.variants for name in variant))
    url = optuna_storage_url(plan, storage, results.name)
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


def _shown_url(url: str) -> str:
    return f"`{re.sub(r'//[^/@]*@', '//***@', url)}`"  # never a password in the report
