"""Read a study's trials and epochs from storage into two DataFrames.

The one loader behind `status`, `report` and `export`, so they never disagree. It
reads files only (Ray's per-trial `result.json`, the driver's trial states, the
plan), so it works while the study runs, after its driver is gone, and on a
study folder moved elsewhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from study.progress import trials_file
from study.storage import ARTIFACTS, Storage

STAGES = ("pretrain", "main")
STATUSES = ("finished", "early_stopped", "errored", "diverged", "running", "pending")
# Settings carried in every report that describe the trial; typed columns in both frames.
CONFIG_COLUMNS = ("trial_key", "config_name", "arch", "pretrain", "freeze", "lr", "seed", "segformer_stem",
                  "optimizer", "scheduler", "dataset", "epochs_planned", "batch_size")
VAL_PREFIX = "val_"


@dataclass(frozen=True)
class StudyResults:
    name: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    state: str  # planned | running | interrupted | incomplete | finished
    plan: dict


def load_results(storage: Storage, name: str) -> StudyResults:
    storage.require_study(name)
    plan = storage.read_json(name, "plan.json")
    state = storage.read_json(name, "study.json", default={}).get("state", "planned")
    trial_rows, epoch_rows = [], []
    for stage in STAGES:
        states = storage.read_json(name, trials_file(stage), default={})
        for directory in storage.list_dirs(name, stage):
            if not storage.exists(name, stage, directory, "result.json"):
                continue
            records = _read_jsonl(storage.read_text(name, stage, directory, "result.json"))
            if not records:
                continue
            trial_id = records[-1]["trial_id"]
            epochs = _epoch_rows(records, trial_id, stage)
            epoch_rows.extend(epochs)
            recorded = states.get(trial_id, {})
            trial_rows.append(_trial_row(name, stage, records[-1], epochs, recorded, state,
                                         storage.uri(name, stage, directory),
                                         _under(storage, (name, stage, directory), recorded.get("checkpoint"))))
    _add_reused_pretraining(storage, name, plan, trial_rows, epoch_rows)
    _add_pending(plan, trial_rows, name)
    trials = pd.DataFrame(trial_rows, columns=_trial_columns(trial_rows))
    epochs = pd.DataFrame(epoch_rows)
    if not epochs.empty:
        epochs = epochs.sort_values(["stage", "trial_id", "epoch"], ignore_index=True)
    if not trials.empty:
        trials = trials.sort_values(["stage", "trial_key"], key=lambda c: c.map(_stage_order) if c.name == "stage" else c,
                                    ignore_index=True)
    return StudyResults(name=name, trials=trials, epochs=epochs, state=state, plan=plan)


def _epoch_rows(records: list[dict], trial_id: str, stage: str) -> list[dict]:
    """One row per epoch; a retried trial re-reports epochs after its checkpoint: keep the last."""
    by_epoch: dict[int, dict] = {}
    for record in records:
        if "epoch" not in record:
            continue
        row = {key: value for key, value in record.items() if key not in ("config", "trial_id")}
        row.update(trial_id=trial_id, stage=stage)
        if not record.get("validated"):
            # Between validations the trial repeats the last validated values for Tune's
            # schedulers; in the table those epochs have no validation.
            for key in list(row):
                if key.startswith(VAL_PREFIX):
                    row[key] = None
        by_epoch[int(record["epoch"])] = row
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _trial_row(study: str, stage: str, last: dict, epochs: list[dict], recorded: dict, study_state: str, path: str,
               checkpoint: str | None = None) -> dict:
    validated = [e for e in epochs if e.get("validated")]
    final = epochs[-1] if epochs else {}
    final_val = validated[-1] if validated else {}
    best = max(validated, key=lambda e: e["val_miou"] if _finite(e["val_miou"]) else -1.0, default={})
    status = recorded.get("state") or ("running" if study_state == "running" else "pending")
    if status == "running" and study_state != "running":
        status = "pending"  # its driver is gone: it continues on `study resume`
    if status == "pending" and final.get("diverged"):
        status = "diverged"
    row = {"study": study, "trial_id": last["trial_id"], "stage": stage, "status": status}
    row.update({column: last.get(column) for column in CONFIG_COLUMNS})
    row["pretrain"] = last.get("pretrain_source", last.get("pretrain"))
    row["lr"] = last.get("lr_initial")
    row.update(
        best_val_miou=best.get("val_miou"),
        best_epoch=best.get("epoch"),
        final_train_loss=final.get("train_loss"),
        final_train_miou=final.get("train_miou"),
        final_val_loss=final_val.get("val_loss"),
        final_val_miou=final_val.get("val_miou"),
        final_val_epoch=final_val.get("epoch"),
        epochs_run=len(epochs),
        diverged_epoch=next((e["epoch"] for e in epochs if e.get("diverged")), None),
        wall_seconds=last.get("time_total_s"),
        node_ip=last.get("node_ip"),
        hostname=last.get("hostname"),
        device=last.get("device"),
        checkpoint=checkpoint,
        error=recorded.get("error"),
        attempts=recorded.get("attempts"),
        reused=False,
        path=path,
    )
    return row


def _add_reused_pretraining(storage: Storage, name: str, plan: dict, trial_rows: list, epoch_rows: list) -> None:
    """Pretraining this study reused from an earlier one: its rows come from the artifact."""
    seen = {row["trial_key"] for row in trial_rows if row["stage"] == "pretrain"}
    for job in plan.get("pretrain_jobs", []):
        folder = (ARTIFACTS, "encoders", job["key"])
        record = storage.read_json(*folder, "job.json", default=None)
        if record is None or record["trial_key"] in seen:
            continue  # not made yet, or this study's own pretraining trial is listed already
        records = [r for r in record.get("epochs", []) if "epoch" in r]
        if not records:
            continue
        trial_id = f"reused-{job['key']}"
        epochs = _epoch_rows(records, trial_id, "pretrain")
        epoch_rows.extend(epochs)
        row = _trial_row(name, "pretrain", {**records[-1], "trial_id": trial_id}, epochs,
                         {"state": "finished"}, "finished", storage.uri(*folder))
        row.update(reused=True, trial_key=record["trial_key"])
        trial_rows.append(row)


def _add_pending(plan: dict, trial_rows: list, name: str) -> None:
    started = {row["trial_key"] for row in trial_rows}
    for trial in plan.get("trials", []):
        if trial["trial_key"] in started:
            continue
        config = trial["config"]
        row = {"study": name, "trial_id": None, "stage": "main", "status": "pending", "trial_key": trial["trial_key"],
               "config_name": trial["config_name"], "epochs_run": 0, "reused": False}
        row.update({column: config.get(column) for column in CONFIG_COLUMNS if column in config})
        row["epochs_planned"] = config.get("epochs")
        trial_rows.append(row)


def _under(storage: Storage, trial_folder: tuple[str, ...], checkpoint: str | None) -> str | None:
    """The checkpoint folder under the trial's folder where the study is now (it may have moved)."""
    if not checkpoint:
        return None
    parts = checkpoint.rstrip("/").rsplit("/", 2)
    if len(parts) == 3 and parts[1] == trial_folder[-1]:
        return storage.uri(*trial_folder, parts[2])
    return checkpoint


def _trial_columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    return columns


def _read_jsonl(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # a line cut short by a killed driver ends what can be read
    return records


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _stage_order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)
