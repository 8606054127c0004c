"""`study export`: a study's trials and epochs as two typed Parquet files.

    trials.parquet   one row per trial (every stage, every status, pending included)
    epochs.parquet   one row per trial and reported epoch

Both frames come typed from the shared results loader (the record's columns: study/planning/record.py),
so a column's type never depends on the data. Each file is written to a temporary file beside
it, fsynced and renamed over the old one: an interrupted export leaves the previous file or
none, never a partial one.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from study.planning.plan import package_versions
from study.planning.record import BOOL, EPOCH_COLUMNS, FLOAT, INT, STRING, TRIAL_COLUMNS, iou_columns
from study.reading.results import StudyResults, load_results
from study.storage import Storage

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
ARROW_TYPES = {STRING: pa.string(), FLOAT: pa.float64(), INT: pa.int64(), BOOL: pa.bool_()}


def arrow_table(frame: pd.DataFrame, columns, file_metadata: dict[str, str]) -> pa.Table:
    schema = pa.schema([(c.name, ARROW_TYPES[c.type]) for c in columns])
    table = pa.Table.from_pandas(frame[[c.name for c in columns]], schema=schema, preserve_index=False)
    encoded = {key.encode(): value.encode() for key, value in file_metadata.items()}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **encoded})


def export_study(storage: Storage, name: str, out_dir, results: StudyResults | None = None) -> list[Path]:
    """Write trials.parquet and epochs.parquet of study `name` to `out_dir`; reads files only (`results`: the
    study's record when the caller has read it)."""
    results = results or load_results(storage, name)
    out = Path(out_dir)
    metadata = export_metadata(results)
    iou = iou_columns(results.iou_count)
    return [write_parquet_atomic(arrow_table(results.trials, TRIAL_COLUMNS, metadata), out / TRIALS_FILE),
            write_parquet_atomic(arrow_table(results.epochs, EPOCH_COLUMNS + iou, metadata), out / EPOCHS_FILE)]


def export_metadata(results: StudyResults) -> dict[str, str]:
    datasets = sorted({config["dataset"] for config in results.plan.configs()})
    return {
        "segstudy.study": results.name,
        "segstudy.state": results.state.value,
        "segstudy.spec_yaml": results.plan.spec_yaml,
        "segstudy.spec_sha256": results.plan.spec_sha256,
        "segstudy.versions": json.dumps(package_versions(), sort_keys=True),
        "segstudy.planned_with": json.dumps(results.plan.versions, sort_keys=True),
        "segstudy.git_commit": git_commit(),
        "segstudy.exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "segstudy.class_names": json.dumps({d: results.plan.declaration(d).class_names for d in datasets}),
        # each dataset's declaration: its classes, colours, ignore index and how its masks were read
        "segstudy.datasets": json.dumps({d: results.plan.declaration(d).to_dict() for d in datasets}),
        "segstudy.notes": json.dumps(list(results.notes)),
    }


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
