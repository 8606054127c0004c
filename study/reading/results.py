"""Read a study's trials and epochs from storage into two typed DataFrames: the study's record.

The one loader behind `status`, `report`, `export` and the runner's check against the plan,
so they never disagree. It reads files only (no Ray, no torch, nothing unpickled), so it
works while the study runs, after its driver is gone and on a study folder moved elsewhere.

Durable truth first. A trial's epochs come from its folder: Tune's `result.json` (a line cut
short or garbled is dropped and named) and, where that file lacks epochs, the records that
its newest checkpoint carries (trainables/checkpoint.py). Its state comes from those epochs
(all planned epochs: finished; a non-finite loss: diverged), then from the driver's event log
(errored, early stopped, running), then from Tune's experiment state. The event log is a
cache: emptied, damaged or deleted, it is named and the folders decide.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property

from study.errors import StudyError
from study.folder.events import EVENTS_FILE, TrialView, replay
from study.folder.files import read_plan, read_study_file, spec_copy_notes
from study.folder.ledger import Ledger, read_ledger
from study.folder.lock import driver_alive
from study.folder.tune_state import STATE_FILE_PATTERN, TuneStateError, error_message, trial_statuses
from study.planning.plan import Plan
from study.planning.record import (
    EPOCH_COLUMNS,
    IOU_PREFIX,
    STAGES,
    TRIAL_COLUMNS,
    Stage,
    StudyState,
    TrialState,
    iou_columns,
    setting_values,
    typed_frame,
)
from study.storage import ARTIFACTS, Storage
from trainables.checkpoint import (
    BEST_WEIGHTS,
    FINAL,
    FINAL_WEIGHTS,
    TRIAL_FILE,
    CheckpointError,
    checkpoint_index,
    parse_trial_json,
)
from trainables.config import PRESET_CLASSES
from trainables.errors import TrainablesError
from trainables.records import VAL_PREFIX, flat
from trainables.trial import StudyContext, resolve_trial

RESULT_FILE = "result.json"
ABANDONED = ("abandoned: its driver was killed before Tune recorded this searcher trial, so no resume can "
             "continue it; the searcher samples another trial in its place")
TUNE_EPOCH_KEYS = ("time_total_s",)


@dataclass(frozen=True)
class StudyResults:
    """The record of one study. `rows` and `epoch_rows` are plain dicts (what `status` reads, without
    pandas); `trials` and `epochs` are the same as typed DataFrames, built on first use."""

    name: str
    plan: Plan
    rows: list  # one dict per trial, keyed by study.planning.record.TRIAL_COLUMNS, sorted by stage and key
    epoch_rows: list  # one dict per trial and epoch
    iou_count: int  # val_iou_0 ... val_iou_{K-1}
    state: StudyState
    notes: tuple  # damage found in the study's files and what was done about it, one line each
    views: dict  # (stage, trial folder) -> events.TrialView: what the drivers saw
    driver: dict | None  # the live driver ({pid, host, since}), None when none runs the study
    history: tuple = ()  # the drivers that ran it (study.json)
    ledger: Ledger | None = None  # the main stage's searcher and scheduler decisions (study/folder/ledger.py)

    @cached_property
    def trials(self):
        """study.planning.record.TRIAL_COLUMNS, typed."""
        return typed_frame(self.rows, TRIAL_COLUMNS)

    @cached_property
    def epochs(self):
        """study.planning.record.EPOCH_COLUMNS, then val_iou_0 ... val_iou_{K-1}, typed."""
        return typed_frame(self.epoch_rows, EPOCH_COLUMNS + iou_columns(self.iou_count))


def load_results(storage: Storage, name: str) -> StudyResults:
    plan = read_plan(storage, name)
    notes = spec_copy_notes(storage, name, plan)
    study_file, damage = read_study_file(storage, name)
    notes += damage
    views, damage = read_events(storage, name)
    notes += damage
    ledger, damage = read_ledger(storage, name)
    notes += damage
    driver = driver_alive(storage, name)
    context = StudyContext(base=plan.search.base_config if plan.search else {},
                           variants=plan.search.labels if plan.search else {})
    trial_rows, epoch_rows = [], []
    for stage in STAGES:
        tune = _TuneStates(storage, name, stage, notes)
        for directory in storage.list_dirs(name, stage):
            row, epochs, trial_notes = _read_trial(storage, name, stage, directory, plan, context,
                                                   views.get((stage, directory)), driver is not None, tune,
                                                   ledger if ledger is not None and ledger.stage == stage else None)
            notes += trial_notes
            if row is not None:
                trial_rows.append(row)
                epoch_rows.extend(epochs)
    _add_reused_pretraining(storage, name, plan, trial_rows, epoch_rows, notes)
    _add_pending(plan, trial_rows, name)
    trial_rows.sort(key=lambda r: (STAGES.index(r["stage"]) if r["stage"] in STAGES else len(STAGES),
                                   str(r["trial_key"])))
    epoch_rows.sort(key=lambda r: (str(r["stage"]), str(r["trial_id"]), r["epoch"]))
    state = study_state(plan, trial_rows, study_file, driver)
    return StudyResults(name=name, plan=plan, rows=trial_rows, epoch_rows=epoch_rows,
                        iou_count=_class_count(plan, epoch_rows), state=state, notes=tuple(notes), views=views,
                        driver=driver, history=tuple(study_file.get("history", ())), ledger=ledger)


def read_events(storage: Storage, name: str) -> tuple[dict, list[str]]:
    if not storage.exists(name, EVENTS_FILE):
        return {}, []
    try:
        return replay(storage.read_text(name, EVENTS_FILE))
    except StudyError as error:
        return {}, [f"{error}; the trial folders decide the trials' states"]


def study_state(plan: Plan, rows: list[dict], study_file: dict, driver: dict | None) -> StudyState:
    """Running while a driver holds the lock; otherwise what study.json says, checked against the trials."""
    if driver is not None:
        return StudyState.RUNNING
    recorded = study_file.get("state")
    if recorded == StudyState.PLANNED.value or (recorded is None and all(r.get("trial_id") is None for r in rows)):
        return StudyState.PLANNED
    from study.reading.audit import audit_study

    if audit_study(plan, rows).complete:
        return StudyState.FINISHED
    if recorded == StudyState.INCOMPLETE.value:
        return StudyState.INCOMPLETE
    return StudyState.INTERRUPTED  # "running" with no live driver: it died without a word


# -- one trial folder ---------------------------------------------------------------------------
def _read_trial(storage: Storage, name: str, stage: str, directory: str, plan: Plan, context: StudyContext,
                view: TrialView | None, driver_alive_: bool, tune: _TuneStates, ledger: Ledger | None):
    folder = (name, stage, directory)
    where = storage.uri(*folder)
    notes: list[str] = []
    lines = _result_lines(storage, folder, notes)
    config, trial_id = _config_and_id(storage, folder, lines, view)
    checkpoint = _newest_checkpoint(storage, folder)
    saved = None
    identity = settings = None
    if config is not None:
        try:
            identity, settings = _resolve(config, context, trial_id, stage)
        except (KeyError, TypeError, ValueError, TrainablesError) as error:
            notes.append(f"{where}: its Tune config cannot be read ({type(error).__name__}: {error})")
    records = _epoch_records(lines)
    planned = settings["epochs"] if settings else None
    if checkpoint is not None and (config is None or not _covers(records, planned)):
        saved = _read_checkpoint_json(storage, (*folder, checkpoint), notes)
        if saved is not None:
            if identity is None and isinstance(saved.get("identity"), dict):
                identity, settings = dict(saved["identity"]), dict(saved.get("settings") or {})
                planned = settings.get("epochs")
            recovered = _merge(records, [flat(r) for r in saved["records"]])
            if len(recovered) > len(records):
                notes.append(f"{where}: {RESULT_FILE} lacks epochs that its checkpoint {checkpoint} holds; "
                             f"epochs {_span(recovered)} taken from the checkpoint")
                records = recovered
    if identity is None or settings is None:
        if lines or checkpoint or notes:
            notes.append(f"{where}: neither {RESULT_FILE} nor a checkpoint says which trial this is; left out")
        return None, [], notes
    trial_id = trial_id or (view.trial_id if view else None) or f"unknown-{directory}"
    decided = ledger.by_key(identity["trial_key"]) if ledger is not None else None
    state, error = _decide_state(records, planned, view, driver_alive_, tune, directory, plan, storage, folder,
                                 decided)
    epochs = _epoch_rows(records, trial_id, stage, identity, settings)
    last = records[-1] if records else {}
    validated = [e for e in epochs if e.get("validated")]
    best = max(validated, key=lambda e: e["val_miou"] if _finite(e.get("val_miou")) else -1.0, default={})
    final_val = validated[-1] if validated else {}
    row = {"study": name, "trial_id": trial_id, **identity, "status": state.value, **setting_values(settings),
           "trial_index": _trial_index(config, identity, plan, decided),
           "epochs_run": len(epochs), "best_val_miou": best.get("val_miou"), "best_epoch": best.get("epoch"),
           "final_train_loss": last.get("train_loss"), "final_train_miou": last.get("train_miou"),
           "final_val_loss": final_val.get("val_loss"), "final_val_miou": final_val.get("val_miou"),
           "final_val_epoch": final_val.get("epoch"),
           "diverged_epoch": next((e["epoch"] for e in epochs if e.get("diverged")), None),
           "wall_seconds": last.get("time_total_s"), "node_ip": last.get("node_ip") or (view.node_ip if view else None),
           "hostname": last.get("hostname"), "run_device": last.get("run_device"),
           "run_threads": last.get("run_threads"), "worker_rss_mib": last.get("worker_rss_mib"), "error": error,
           "attempts": view.attempts if view and view.attempts else tune.attempts(directory),
           "checkpoint": storage.uri(*folder, checkpoint) if checkpoint else None,
           "path": where, "reused": False, "notes": "; ".join(notes) or None}
    row.update(_weights(storage, folder, checkpoint, state, best.get("epoch"), records, saved, notes))
    return row, epochs, notes


def _result_lines(storage: Storage, folder: tuple, notes: list[str]) -> list[dict]:
    if not storage.exists(*folder, RESULT_FILE):
        return []
    try:
        text = storage.read_text(*folder, RESULT_FILE)
    except StudyError as error:
        notes.append(f"{error}; its epochs are taken from its checkpoint where it has one")
        return []
    lines, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            lines.append(value)
        else:
            bad.append(number)
    if bad:
        cut = bad == [len(text.splitlines())] and not text.endswith("\n")
        what = (f"its last line (line {bad[0]}) was cut short" if cut
                else f"{len(bad)} garbled line(s) (first: {bad[0]})")
        notes.append(f"{storage.uri(*folder, RESULT_FILE)}: {what}; dropped")
    return lines


def _config_and_id(storage: Storage, folder: tuple, lines: list[dict], view: TrialView | None):
    for line in lines:
        if isinstance(line.get("config"), dict):
            return line["config"], line.get("trial_id")
    trial_id = view.trial_id if view else None
    try:
        params = storage.read_json(*folder, "params.json", default=None)  # Tune's: the trial's config as JSON
    except StudyError:
        params = None
    return (params, trial_id) if isinstance(params, dict) else (None, trial_id)


def _resolve(config: dict, context: StudyContext, trial_id: str | None, stage: str) -> tuple[dict, dict]:
    identity, settings = resolve_trial(config, context, trial_id)
    identity["stage"] = identity.get("stage") or stage
    return identity, settings.to_dict()


def _epoch_records(lines: list[dict]) -> list[dict]:
    """One per epoch; a retried trial re-reports the epochs after its checkpoint: the last report wins."""
    by_epoch: dict[int, dict] = {}
    for line in lines:
        epoch = line.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1:
            by_epoch[epoch] = line
    return [by_epoch[e] for e in sorted(by_epoch)]


def _merge(records: list[dict], saved: list[dict]) -> list[dict]:
    """result.json's epochs, and the checkpoint's for the epochs result.json lacks."""
    by_epoch = {r["epoch"]: r for r in saved if isinstance(r.get("epoch"), int)}
    by_epoch.update({r["epoch"]: r for r in records})
    return [by_epoch[e] for e in sorted(by_epoch)]


def _covers(records: list[dict], planned: int | None) -> bool:
    """Epochs 1..last without a gap, up to the plan or to a divergence."""
    epochs = [r["epoch"] for r in records]
    if not epochs or epochs != list(range(1, len(epochs) + 1)):
        return False
    return bool(records[-1].get("diverged")) or planned is None or epochs[-1] >= planned


def _decide_state(records, planned, view, driver_alive_: bool, tune, directory, plan, storage, folder, decided):
    last = records[-1] if records else None
    if last is not None and last.get("diverged"):
        return TrialState.DIVERGED, None
    if last is not None and planned is not None and last["epoch"] >= planned:
        return TrialState.FINISHED, None
    if decided is not None and decided.stopped_epoch is not None:
        return TrialState.EARLY_STOPPED, None  # the ledger holds the scheduler's decisions as they were made
    if view is not None:
        if view.state in (TrialState.ERRORED, TrialState.EARLY_STOPPED):
            return view.state, view.error
        if view.state == TrialState.RUNNING and driver_alive_:
            return TrialState.RUNNING, None
    status = tune.status(directory)
    if status == "ERROR":
        return TrialState.ERRORED, _error_text(storage, folder)
    if status == "TERMINATED" and records and plan.execution.scheduler.type == "asha":
        return TrialState.EARLY_STOPPED, None
    if status is None and plan.search is not None and not driver_alive_:
        if decided is not None and decided.ended is None:
            return TrialState.PENDING, None  # asked before a kill: `study resume` hands its proposal out again
        # Started, then its driver was killed before Tune's experiment state named it: a study begun without
        # a ledger cannot continue it, and its searcher samples another trial in its place.
        return TrialState.ERRORED, ABANDONED
    if driver_alive_ and view is not None and view.state == TrialState.RUNNING:
        return TrialState.RUNNING, None
    return TrialState.PENDING, None


def _trial_index(config: dict | None, identity: dict, plan: Plan, decided) -> int | None:
    """The order in which the searcher proposed the trial (its config says, else the ledger); a grid trial's or
    pretraining job's place in the plan."""
    if config is not None and "trial" not in config and config.get("trial_index") is not None:
        return int(config["trial_index"])
    if decided is not None and decided.index >= 0:
        return decided.index
    return _planned_index(plan, identity["stage"], identity["trial_key"])


def _planned_index(plan: Plan, stage: str, trial_key: str) -> int | None:
    keys = [job.trial_key for job in plan.pretrain_jobs] if stage == Stage.PRETRAIN.value else \
        [trial.trial_key for trial in plan.trials]
    return keys.index(trial_key) if trial_key in keys else None


def _error_text(storage: Storage, folder: tuple) -> str | None:
    try:
        return error_message(storage.read_text(*folder, "error.txt")) if storage.exists(*folder, "error.txt") else None
    except StudyError:
        return None


def _newest_checkpoint(storage: Storage, folder: tuple) -> str | None:
    names = [d for d in storage.list_dirs(*folder) if checkpoint_index(d) is not None]
    return max(names, key=checkpoint_index) if names else None


def _read_checkpoint_json(storage: Storage, folder: tuple, notes: list[str]) -> dict | None:
    try:
        return parse_trial_json(storage.read_text(*folder, TRIAL_FILE), storage.uri(*folder, TRIAL_FILE))
    except (StudyError, CheckpointError) as error:
        notes.append(str(error))
        return None


def _weights(storage: Storage, folder: tuple, checkpoint: str | None, state: TrialState, best_epoch, records,
             saved: dict | None, notes: list[str]) -> dict:
    """Where an ended trial's weights are: its final checkpoint's final and best weights files."""
    if checkpoint is None or state not in (TrialState.FINISHED, TrialState.EARLY_STOPPED, TrialState.DIVERGED):
        return {}
    if state != TrialState.FINISHED:  # a final checkpoint only when it ran to its end or diverged (or was slimmed)
        saved = saved or _read_checkpoint_json(storage, (*folder, checkpoint), notes)
        if not saved or saved.get("kind") != FINAL:
            return {}
    final = storage.uri(*folder, checkpoint, FINAL_WEIGHTS)
    last_epoch = records[-1]["epoch"] if records else None
    best = storage.uri(*folder, checkpoint, BEST_WEIGHTS) if best_epoch and best_epoch != last_epoch else final
    return {"weights_final": final, "weights_best": best if best_epoch else None}


def _epoch_rows(records: list[dict], trial_id: str, stage: str, identity: dict, settings: dict) -> list[dict]:
    rows = []
    for record in records:
        row = dict(record)
        if not record.get("validated"):
            # Between validations the trial repeats the last validated values for Tune's schedulers;
            # in the record those epochs have no validation.
            for key in list(row):
                if key.startswith(VAL_PREFIX):
                    row[key] = None
        row.update(trial_id=trial_id, stage=stage, trial_key=identity["trial_key"],
                   config_name=identity["config_name"], dataset=settings.get("dataset"))
        rows.append(row)
    return rows


# -- rows that come from elsewhere --------------------------------------------------------------
def _add_reused_pretraining(storage: Storage, name: str, plan: Plan, trial_rows: list, epoch_rows: list,
                            notes: list[str]) -> None:
    """Pretraining this study reused from an earlier one: its row comes from the encoder's record."""
    seen = {row["trial_key"] for row in trial_rows if row["stage"] == Stage.PRETRAIN.value}
    for job in plan.pretrain_jobs:
        folder = (ARTIFACTS, "encoders", job.key)
        if job.trial_key in seen:
            continue
        try:
            record = storage.read_json(*folder, "job.json", default=None)
        except StudyError as error:
            notes.append(f"{error}; the reused pretraining job is listed as pending")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("records"), list) or not record["records"]:
            continue
        trial_id = f"reused-{job.key}"
        identity = {"trial_key": job.trial_key, "config_name": f"pretrain_{job.source}", "stage": "pretrain"}
        records = [flat(r) for r in record["records"]]
        epochs = _epoch_rows(records, trial_id, "pretrain", identity, job.config)
        epoch_rows.extend(epochs)
        last = records[-1]
        validated = [e for e in epochs if e.get("validated")]
        trial_rows.append({"study": name, "trial_id": trial_id, **identity, "status": TrialState.FINISHED.value,
                           "trial_index": _planned_index(plan, "pretrain", job.trial_key),
                           **setting_values(job.config), "epochs_run": len(epochs),
                           "best_val_miou": last.get("best_val_miou"), "best_epoch": last.get("best_epoch"),
                           "final_train_loss": last.get("train_loss"), "final_train_miou": last.get("train_miou"),
                           "final_val_loss": validated[-1].get("val_loss") if validated else None,
                           "final_val_miou": validated[-1].get("val_miou") if validated else None,
                           "final_val_epoch": validated[-1].get("epoch") if validated else None,
                           "path": storage.uri(*folder), "reused": True})


def _add_pending(plan: Plan, trial_rows: list, name: str) -> None:
    started = {(row["stage"], row["trial_key"]) for row in trial_rows}
    planned = [("pretrain", job.trial_key, f"pretrain_{job.source}", job.config) for job in plan.pretrain_jobs]
    planned += [("main", trial.trial_key, trial.config_name, trial.config) for trial in plan.trials]
    for stage, key, config_name, config in planned:
        if (stage, key) not in started:
            trial_rows.append({"study": name, "trial_key": key, "config_name": config_name, "stage": stage,
                               "trial_index": _planned_index(plan, stage, key), "status": TrialState.PENDING.value,
                               **setting_values(config), "epochs_run": 0, "reused": False})


class _TuneStates:
    """Tune's experiment state of one stage, read on first need (most trials never need it)."""

    def __init__(self, storage: Storage, name: str, stage: str, notes: list[str]):
        self.storage, self.folder, self.notes = storage, (name, stage), notes
        self._statuses: dict | None = None

    def _load(self) -> dict:
        if self._statuses is None:
            files = sorted(f for f in self.storage.list_files(*self.folder) if STATE_FILE_PATTERN.match(f))
            try:
                self._statuses = trial_statuses([self.storage.read_text(*self.folder, f) for f in files])
            except (TuneStateError, StudyError) as error:
                self.notes.append(f"{self.storage.uri(*self.folder)}: {error}")
                self._statuses = {}
        return self._statuses

    def status(self, directory: str) -> str | None:
        return self._load().get(directory, {}).get("status")

    def attempts(self, directory: str) -> int | None:
        entry = self._load().get(directory) if self._statuses is not None else None
        return entry["num_failures"] + 1 if entry else None


def _class_count(plan: Plan, epoch_rows: list[dict]) -> int:
    # a config's num_classes (plans of format 4), else its preset's count (older plans)
    counts = [c.get("num_classes") or PRESET_CLASSES.get(c["dataset"], 0) for c in plan.configs()]
    counts += [int(k[len(IOU_PREFIX):]) + 1 for row in epoch_rows[:1] for k in row
               if k.startswith(IOU_PREFIX) and k[len(IOU_PREFIX):].isdigit()]
    return max(counts, default=0)


def _span(records: list[dict]) -> str:
    return f"{records[0]['epoch']}-{records[-1]['epoch']}"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["StudyResults", "load_results", "study_state"]
