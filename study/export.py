"""`study export`: a study's trials and epochs as two typed Parquet files.

    trials.parquet   one row per trial (every stage, every status, pending included)
    epochs.parquet   one row per trial and reported epoch

Both frames come from the shared results loader and are typed by the schemas below,
so a column's type never depends on the data (a column that is all null still has
its type). `study_frames` builds them for both this module and `study.api.load_study`.
Each file is written to a temporary file beside it, fsynced and renamed over the old
one: an interrupted export leaves the previous file or none, never a partial one.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from study.errors import StudyError
from study.results import STATUSES, StudyResults, load_results
from study.storage import Storage

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
IOU_PREFIX = "val_iou_"
VERSIONED_PACKAGES = ("segstudy", "torch", "torchvision", "ray", "optuna", "pandas", "pyarrow")

_s, _f, _i, _b = pa.string(), pa.float64(), pa.int64(), pa.bool_()
TRIALS_SCHEMA = pa.schema([
    ("study", _s), ("trial_id", _s), ("trial_key", _s), ("stage", _s), ("status", _s), ("config_name", _s),
    ("arch", _s), ("pretrain", _s), ("freeze", _s), ("lr", _f), ("seed", _i), ("segformer_stem", _s),
    ("optimizer", _s), ("scheduler", _s), ("dataset", _s), ("epochs_planned", _i), ("batch_size", _i),
    ("best_val_miou", _f), ("best_epoch", _i), ("final_train_loss", _f), ("final_train_miou", _f),
    ("final_val_loss", _f), ("final_val_miou", _f), ("final_val_epoch", _i), ("epochs_run", _i),
    ("diverged_epoch", _i), ("wall_seconds", _f), ("node_ip", _s), ("hostname", _s), ("device", _s),
    ("checkpoint", _s), ("error", _s), ("attempts", _i), ("reused", _b), ("path", _s),
])
# Followed by val_iou_0 .. val_iou_<K-1> (float64), K = the largest class count of the study's datasets.
EPOCHS_SCHEMA = pa.schema([
    ("trial_id", _s), ("stage", _s), ("trial_key", _s), ("config_name", _s), ("dataset", _s), ("epoch", _i),
    ("lr", _f), ("train_loss", _f), ("train_miou", _f), ("train_miou_present", _f), ("validated", _b),
    ("val_loss", _f), ("val_miou", _f), ("val_miou_present", _f), ("val_pixel_accuracy", _f),
    ("best_val_miou", _f), ("best_epoch", _i), ("diverged", _b), ("epoch_seconds", _f), ("images_per_second", _f),
    ("time_total_s", _f),
])
PANDAS_DTYPES = {_s: "string", _f: "float64", _i: "Int64", _b: "bool"}
ARROW_TYPES = {dtype: arrow for arrow, dtype in PANDAS_DTYPES.items()}


def study_frames(results: StudyResults) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) with the columns and types that export writes."""
    trials = typed_frame(results.trials, TRIALS_SCHEMA)
    unknown = sorted(set(trials["status"].dropna()) - set(STATUSES))
    if unknown:
        raise StudyError(f"study {results.name}: trial status {unknown} is not one of {list(STATUSES)}")
    iou_fields = [(f"{IOU_PREFIX}{i}", _f) for i in range(class_count(results))]
    epochs = typed_frame(results.epochs, pa.schema(list(EPOCHS_SCHEMA) + iou_fields))
    return trials, epochs


def class_count(results: StudyResults) -> int:
    """Per-class columns to export: the most classes of the study's datasets, or of the data seen."""
    counts = [_classes_of(d) for d in _datasets(results)]
    counts += [int(c[len(IOU_PREFIX):]) + 1 for c in results.epochs.columns
               if c.startswith(IOU_PREFIX) and c[len(IOU_PREFIX):].isdigit()]
    return max(counts, default=0)


def typed_frame(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """The schema's columns in its order and types; a column the data lacks is all null."""
    columns = {}
    for field in schema:
        values = frame[field.name] if field.name in frame else pd.Series(None, index=frame.index, dtype=object)
        columns[field.name] = _typed_column(values, field.type)
    return pd.DataFrame(columns, index=frame.index).reset_index(drop=True)


def _typed_column(values: pd.Series, arrow_type: pa.DataType) -> pd.Series:
    if arrow_type == _s:
        return pd.Series([None if pd.isna(v) else str(v) for v in values], index=values.index, dtype="string")
    if arrow_type == _b:
        # Missing means not set: a pending trial is not reused, an epoch without the flag did not diverge.
        return pd.Series([False if pd.isna(v) else bool(v) for v in values], index=values.index, dtype=bool)
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    return numbers.astype("Int64") if arrow_type == _i else numbers


def arrow_table(frame: pd.DataFrame, file_metadata: dict[str, str]) -> pa.Table:
    schema = pa.schema([(name, ARROW_TYPES[str(dtype)]) for name, dtype in frame.dtypes.items()])
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    encoded = {key.encode(): value.encode() for key, value in file_metadata.items()}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **encoded})


def export_study(storage: Storage, name: str, out_dir) -> list[Path]:
    """Write trials.parquet and epochs.parquet of study `name` to `out_dir`; reads files only."""
    results = load_results(storage, name)
    trials, epochs = study_frames(results)
    file_metadata = export_metadata(storage, results)
    out = Path(out_dir)
    return [write_parquet_atomic(arrow_table(trials, file_metadata), out / TRIALS_FILE),
            write_parquet_atomic(arrow_table(epochs, file_metadata), out / EPOCHS_FILE)]


def export_metadata(storage: Storage, results: StudyResults) -> dict[str, str]:
    from study.report import class_names

    spec_text = storage.read_text(results.name, "spec.yaml") if storage.exists(results.name, "spec.yaml") else ""
    return {
        "segstudy.study": results.name,
        "segstudy.state": results.state,
        "segstudy.spec_yaml": spec_text,
        "segstudy.versions": json.dumps(package_versions(), sort_keys=True),
        "segstudy.git_commit": git_commit(),
        "segstudy.exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "segstudy.class_names": json.dumps({d: class_names(d, _classes_of(d)) for d in _datasets(results)}),
    }


def _datasets(results: StudyResults) -> list[str]:
    return sorted(set(results.trials["dataset"].dropna())) if "dataset" in results.trials else []


def _classes_of(dataset: str) -> int:
    from trainables.data import NUM_CLASSES

    return NUM_CLASSES.get(dataset, 0)


def package_versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def git_commit() -> str:
    """The commit of the code that exports (the package's checkout), or "unknown"."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Temporary file in the same folder, fsync, rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:  # Ctrl-C included: never leave the temporary file behind
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
    return path
