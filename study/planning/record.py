"""The study's record: every column of a trial and of an epoch, its type and meaning; the states.

One place. A trial's columns are its identity, one typed column per `TrainConfig` field
(trainables/config.py: a new training setting is a new column with no other edit), what it
achieved, and where and how it ran. An epoch's columns are the `EpochRecord` fields
(trainables/records.py). The results loader builds its frames with `typed_frame`, export
writes these types to Parquet, table rows match on `MATCHABLE`, and tests take their
fixtures from here; `python -m study.planning.record` prints the reference tables of the README.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Any

from trainables.config import CHOICES, pair_type
from trainables.config import FIELDS as SETTING_FIELDS
from trainables.records import FIELDS as EPOCH_FIELDS

STRING, FLOAT, INT, BOOL = "string", "float64", "int64", "bool"
PANDAS_DTYPES = {STRING: "string", FLOAT: "float64", INT: "Int64", BOOL: "boolean"}
IOU_PREFIX = "val_iou_"


class TrialState(str, Enum):
    """Where a trial is; `study status`, reports and exports use these words."""

    FINISHED = "finished"  # ran every planned epoch
    EARLY_STOPPED = "early_stopped"  # stopped by the scheduler (ASHA) before its last epoch
    ERRORED = "errored"  # failed past max_failures retries; `error` says why
    DIVERGED = "diverged"  # non-finite training loss: stopped at that epoch, not retried
    RUNNING = "running"  # training now, under a live driver
    PENDING = "pending"  # not started, or cut off with its driver: `study resume` runs it

    @property
    def ended(self) -> bool:
        return self in ENDED

    @property
    def words(self) -> str:
        return self.value.replace("_", " ")


ENDED = (TrialState.FINISHED, TrialState.EARLY_STOPPED, TrialState.ERRORED, TrialState.DIVERGED)


class StudyState(str, Enum):
    PLANNED = "planned"  # planned, no driver has run it yet
    RUNNING = "running"  # a live driver holds the study's lock
    INTERRUPTED = "interrupted"  # stopped (Ctrl-C, SIGTERM, a killed driver) with trials left: `study resume`
    INCOMPLETE = "incomplete"  # its driver ended but planned trials are missing: `study resume` runs them
    FINISHED = "finished"  # every planned trial ended


class Stage(str, Enum):
    PRETRAIN = "pretrain"
    MAIN = "main"


STAGES = tuple(stage.value for stage in Stage)


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # STRING, FLOAT, INT or BOOL
    doc: str
    group: str  # identity, setting, outcome, execution; epochs: identity, epoch


def _setting_columns() -> tuple[Column, ...]:
    columns = []
    for name, field in SETTING_FIELDS.items():
        kind = _kind(str(field.type))
        parts = field.metadata.get("columns")
        if parts:  # a pair such as image_size: one int (or float) column each
            kind = FLOAT if pair_type(name) is float else INT
            columns += [Column(part, kind, f"{field.metadata['doc']} ({part.rsplit('_', 1)[-1]})", "setting")
                        for part in parts]
        else:
            columns.append(Column(name, kind, field.metadata["doc"], "setting"))
    return tuple(columns)


def _kind(annotation: str) -> str:
    base = annotation.split("|")[0].strip()
    return {"str": STRING, "float": FLOAT, "int": INT, "bool": BOOL}.get(base, STRING)


IDENTITY_COLUMNS = (
    Column("study", STRING, "the study's name", "identity"),
    Column("trial_id", STRING, "Ray Tune's trial id (null: not started)", "identity"),
    Column("trial_key", STRING, "the trial's key: <configuration>-s<seed>, search-<trial id>, or "
                                "pretrain-<source>-<arch>-<stem>-<key>; its folder name in its stage", "identity"),
    Column("stage", STRING, "pretrain or main", "identity"),
    Column("trial_index", INT, "the order in which the searcher proposed the trial, from 0 (a grid and pretraining: "
                               "the plan's order; null: a searcher trial of a study begun before segstudy recorded it)",
           "identity"),
    Column("config_name", STRING, "the configuration (a searcher trial: its variant, e.g. freeze=none/pretrain=none)",
           "identity"),
    Column("status", STRING, "finished, early_stopped, errored, diverged, running or pending", "identity"),
)
SETTING_COLUMNS = _setting_columns()
OUTCOME_COLUMNS = (
    Column("epochs_run", INT, "epochs trained", "outcome"),
    Column("best_val_miou", FLOAT, "highest validation mIoU over the validated epochs", "outcome"),
    Column("best_epoch", INT, "epoch of best_val_miou", "outcome"),
    Column("final_train_loss", FLOAT, "train loss of the last epoch", "outcome"),
    Column("final_train_miou", FLOAT, "train mIoU of the last epoch", "outcome"),
    Column("final_val_loss", FLOAT, "validation loss of the last validated epoch", "outcome"),
    Column("final_val_miou", FLOAT, "validation mIoU of the last validated epoch", "outcome"),
    Column("final_val_epoch", INT, "the last validated epoch", "outcome"),
    Column("diverged_epoch", INT, "epoch whose training loss was not finite", "outcome"),
    Column("wall_seconds", FLOAT, "training time reported by Tune (time_total_s)", "outcome"),
)
EXECUTION_COLUMNS = (
    Column("attempts", INT, "attempts the driver started (retries after failures count)", "execution"),
    Column("error", STRING, "last line of the error that ended an errored trial", "execution"),
    Column("node_ip", STRING, "IP address of the node that ran the trial last", "execution"),
    Column("hostname", STRING, "host name of that node", "execution"),
    Column("run_device", STRING, "device it trained on: cpu or cuda", "execution"),
    Column("run_threads", INT, "torch threads it trained with", "execution"),
    Column("worker_rss_mib", FLOAT, "resident memory of its worker process at its last report, MiB", "execution"),
    Column("checkpoint", STRING, "its newest checkpoint folder (path or URI)", "execution"),
    Column("weights_final", STRING, "weights after its last epoch (safetensors; finished trials)", "execution"),
    Column("weights_best", STRING, "weights of its best validated epoch (safetensors; = weights_final when that "
                                   "epoch was the last)", "execution"),
    Column("path", STRING, "its folder (path or URI)", "execution"),
    Column("reused", BOOL, "a pretraining job taken from an earlier study in the same storage", "execution"),
    Column("notes", STRING, "damage found in its record and what was done about it", "execution"),
)
TRIAL_COLUMNS = IDENTITY_COLUMNS + SETTING_COLUMNS + OUTCOME_COLUMNS + EXECUTION_COLUMNS

EPOCH_IDENTITY = (
    Column("trial_id", STRING, "Ray Tune's trial id", "identity"),
    Column("trial_key", STRING, "the trial's key", "identity"),
    Column("stage", STRING, "pretrain or main", "identity"),
    Column("config_name", STRING, "the trial's configuration", "identity"),
    Column("dataset", STRING, "the dataset it trained on", "identity"),
)
EPOCH_RECORD_COLUMNS = tuple(Column(name, _kind(str(field.type)), field.metadata["doc"], "epoch")
                             for name, field in EPOCH_FIELDS.items() if name != "val_iou")
EPOCH_COLUMNS = EPOCH_IDENTITY + EPOCH_RECORD_COLUMNS + (
    Column("time_total_s", FLOAT, "training time since the trial started, as Tune counts it", "epoch"),)
IOU_DOC = EPOCH_FIELDS["val_iou"].metadata["doc"]

# Table rows match on these (study files: tables[].rows[].match).
MATCHABLE = {c.name: c for c in (*IDENTITY_COLUMNS[2:], *SETTING_COLUMNS) if c.name != "trial_index"}
MATCH_CHOICES = {**CHOICES, "stage": STAGES, "status": tuple(s.value for s in TrialState)}


def iou_columns(count: int) -> tuple[Column, ...]:
    return tuple(Column(f"{IOU_PREFIX}{i}", FLOAT, f"validation IoU of class {i}", "epoch") for i in range(count))


def setting_values(settings: dict) -> dict:
    """A TrainConfig dict as record columns (image_size -> image_height, image_width)."""
    values = {}
    for name, value in settings.items():
        field = SETTING_FIELDS.get(name)
        parts = field.metadata.get("columns") if field is not None else None
        if parts:
            pair = list(value) if isinstance(value, (list, tuple)) else [value, value]  # None: both null
            values.update(zip(parts, pair))
        elif field is not None:
            values[name] = value
    return values


def settings_from_row(row: dict) -> dict:
    """The TrainConfig fields of a trial's record row (the inverse of setting_values); missing ones are left out."""
    settings = {}
    for name, field in SETTING_FIELDS.items():
        parts = field.metadata.get("columns")
        if parts:
            if all(not _missing(row.get(part)) for part in parts):
                settings[name] = [pair_type(name)(row[part]) for part in parts]
        elif name in row and not _missing(row[name]):
            value = row[name]
            kind = _kind(str(field.type))
            settings[name] = int(value) if kind == INT else float(value) if kind == FLOAT else \
                bool(value) if kind == BOOL else str(value)
    return settings


def typed_frame(rows: list[dict], columns: tuple[Column, ...]):
    """The columns in order and with their types, as a pandas DataFrame; a column no row has is all null."""
    import pandas as pd

    data = {column.name: _typed([row.get(column.name) for row in rows], column.type) for column in columns}
    return pd.DataFrame(data, index=pd.RangeIndex(len(rows)))


def _typed(values: list, kind: str):
    import numpy as np
    import pandas as pd

    if kind == FLOAT:
        return np.array([_number(v) for v in values], dtype="float64")
    if kind == INT:
        numbers_ = [_number(v) for v in values]
        return pd.array([None if n != n or n in (math.inf, -math.inf) else int(n) for n in numbers_], dtype="Int64")
    if kind == BOOL:
        return pd.array([None if _missing(v) else bool(v) for v in values], dtype="boolean")
    return pd.array([None if _missing(v) else str(v) for v in values], dtype="string")


def _number(value) -> float:
    """A float for a numeric column (NaN for missing or unreadable values, as pd.to_numeric(errors="coerce"))."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value is None or isinstance(value, bool) or _missing(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


# -- table matching: one comparison for the spec's check and the report --------------------------
def same_value(actual: Any, expected: Any) -> bool:
    """1e-3 equals 0.001 and "1e-3" (YAML 1.1 reads that as a string); booleans are not numbers."""
    if _missing(actual) or _missing(expected):
        return _missing(actual) and _missing(expected)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return bool(actual) == bool(expected) and isinstance(actual, (bool, int)) and isinstance(expected, (bool, int))
    a, b = _as_number(actual), _as_number(expected)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return str(actual) == str(expected)


def matching_mask(frame, match: dict):
    """Rows of a DataFrame whose every `match` column equals the expected value (numbers with a tolerance);
    vectorised."""
    import numpy as np
    import pandas as pd

    mask = np.ones(len(frame), dtype=bool)
    for name, expected in match.items():
        if name not in frame:
            return pd.Series(False, index=frame.index)
        column = frame[name]
        if str(column.dtype) == "boolean":
            equal = (column.fillna(not expected).to_numpy(dtype=bool) == expected) if isinstance(expected, bool) \
                else False
        elif column.dtype.kind in "fiu" or str(column.dtype) == "Int64":
            number = _as_number(expected)
            values = column.astype("float64").to_numpy()
            equal = np.isclose(values, number, rtol=1e-9, atol=1e-12) if number is not None else False
        else:
            equal = column.astype("string").fillna("\0").to_numpy(dtype=object) == str(expected)
        mask &= np.asarray(equal, dtype=bool)
    return pd.Series(mask, index=frame.index)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# -- the README's reference tables -----------------------------------------------------------------
def markdown(columns: tuple[Column, ...]) -> str:
    lines = ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.type} | {c.doc} |" for c in columns]
    return "\n".join(lines)


def reference() -> str:
    """The record's reference as the README shows it (a test keeps the two equal)."""
    iou = f"| `val_iou_0` … `val_iou_{{K-1}}` | {FLOAT} | {IOU_DOC}; K = most classes among the study's datasets |"
    return "\n".join([
        "`trials.parquet`: one row per trial, every stage and status (pending included)", "",
        markdown(TRIAL_COLUMNS), "",
        "`epochs.parquet`: one row per trial and reported epoch (validation columns null on epochs without "
        "validation)", "",
        markdown(EPOCH_COLUMNS), iou,
    ])


if __name__ == "__main__":
    sys.stdout.write(reference() + "\n")
