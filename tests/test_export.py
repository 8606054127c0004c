"""`study export`: typed Parquet files with metadata, written atomically; `load_study` gives the same frames."""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from study.api import load_study
from study.planning.plan import VERSIONED_PACKAGES
from study.planning.record import EPOCH_COLUMNS, TRIAL_COLUMNS, TrialState
from study.reading import export
from tests.fake_study import SPEC_YAML, epoch_records, fake_trial, write_fake_study


def mixed_study(tmp_path):
    """Finished, errored, running and pending trials of a study still running."""
    trials = [fake_trial("a", 0, [0.5, 0.6]), fake_trial("a", 1, [0.55, 0.62]),
              fake_trial("a", 2, [0.3], status="errored", error="RuntimeError: CUDA out of memory", epochs_planned=4),
              fake_trial("b", 0, [0.4], status="running", epochs_planned=4), fake_trial("b", 1, [])]
    return write_fake_study(tmp_path / "studies", "mixed", trials, state="running"), trials


def test_parquet_round_trip_has_schema_rows_and_metadata(tmp_path):
    storage, trials = mixed_study(tmp_path)
    paths = export.export_study(storage, "mixed", tmp_path / "out")
    assert [p.name for p in paths] == ["trials.parquet", "epochs.parquet"]

    trials_table = pq.read_table(tmp_path / "out" / "trials.parquet")
    assert trials_table.num_rows == len(trials)
    assert trials_table.column_names == [c.name for c in TRIAL_COLUMNS]
    for column in TRIAL_COLUMNS:
        assert trials_table.schema.field(column.name).type == export.ARROW_TYPES[column.type], column.name
    epochs_table = pq.read_table(tmp_path / "out" / "epochs.parquet")
    assert epochs_table.num_rows == sum(len(epoch_records(t)) for t in trials)
    for column in EPOCH_COLUMNS:
        assert epochs_table.schema.field(column.name).type == export.ARROW_TYPES[column.type], column.name
    assert [f"val_iou_{i}" for i in range(3)] == [n for n in epochs_table.column_names if n.startswith("val_iou_")]

    meta = {k.decode(): v.decode() for k, v in trials_table.schema.metadata.items()}
    assert meta["segstudy.spec_yaml"] == SPEC_YAML
    assert set(json.loads(meta["segstudy.versions"])) == set(VERSIONED_PACKAGES)
    assert meta["segstudy.git_commit"]
    assert datetime.fromisoformat(meta["segstudy.exported_at"]).tzinfo is not None
    assert json.loads(meta["segstudy.class_names"]) == {"pets": ["pet", "background", "border"]}
    assert meta["segstudy.state"] == "running"

    # the notebook API gives exactly what was written
    frames = load_study("mixed", storage=storage.root)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "trials.parquet"), frames[0])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "epochs.parquet"), frames[1])


def test_types_do_not_depend_on_the_data(tmp_path):
    storage, _ = mixed_study(tmp_path)
    trials, epochs = load_study("mixed", storage=storage)
    assert trials["diverged_epoch"].isna().all() and str(trials["diverged_epoch"].dtype) == "Int64"
    assert str(trials["hostname"].dtype) == "string" and str(trials["lr"].dtype) == "float64"
    assert str(trials["reused"].dtype) == "boolean" and str(trials["seed"].dtype) == "Int64"
    assert str(epochs["epoch"].dtype) == "Int64" and str(epochs["validated"].dtype) == "boolean"


def test_statuses_errors_and_nulls_of_a_partial_study(tmp_path):
    storage, _ = mixed_study(tmp_path)
    trials, epochs = load_study("mixed", storage=storage)
    by_key = trials.set_index("trial_key")
    assert set(trials["status"]) <= {state.value for state in TrialState}
    assert by_key.loc["a-s2", "status"] == "errored"
    assert by_key.loc["a-s2", "error"] == "RuntimeError: CUDA out of memory"
    assert by_key.loc["b-s0", "status"] == "running"
    pending = by_key.loc["b-s1"]
    assert pending["status"] == "pending" and pd.isna(pending["trial_id"]) and pd.isna(pending["best_val_miou"])
    assert pending["lr"] == pytest.approx(1e-3)
    # val_* are null on epochs without validation, set on validated ones
    validated = epochs["validated"].astype(bool)
    assert epochs.loc[~validated, "val_miou"].isna().all()
    assert epochs.loc[validated, "val_miou"].notna().all()
    assert epochs.loc[validated, "val_iou_2"].notna().all()


def test_every_setting_is_a_typed_column_with_its_value(tmp_path):
    """Optimizer, schedule, batch size, image size... of each trial, as the plan ran them."""
    storage, trials = mixed_study(tmp_path)
    frame, _ = load_study("mixed", storage=storage)
    row = frame.set_index("trial_key").loc["a-s0"]
    settings = trials[0]["settings"]
    assert (row["optimizer"], row["scheduler"], row["batch_size"]) == (settings["optimizer"], settings["scheduler"],
                                                                       settings["batch_size"])
    assert (row["image_height"], row["image_width"]) == tuple(settings["image_size"])
    assert bool(row["amsgrad"]) is settings["amsgrad"] and row["gamma"] == settings["gamma"]
    assert str(frame["batch_size"].dtype) == "Int64" and str(frame["amsgrad"].dtype) == "boolean"


def test_an_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    storage, _ = mixed_study(tmp_path)
    out = tmp_path / "out"
    export.export_study(storage, "mixed", out)
    before = (out / "trials.parquet").read_bytes()
    real_write = pq.write_table

    def write_half_then_fail(table, where, **kwargs):
        sink = pa.BufferOutputStream()
        real_write(table, sink, **kwargs)
        data = sink.getvalue().to_pybytes()
        where.write(data[: len(data) // 2])
        raise OSError("disk unplugged")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk unplugged"):
        export.export_study(storage, "mixed", out)
    assert (out / "trials.parquet").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["epochs.parquet", "trials.parquet"]
    pq.read_table(out / "trials.parquet")  # still a whole file


def test_an_interrupted_first_export_leaves_no_file(tmp_path, monkeypatch):
    storage, _ = mixed_study(tmp_path)

    def fail(table, where, **kwargs):
        where.write(b"PAR1")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", fail)
    with pytest.raises(KeyboardInterrupt):
        export.export_study(storage, "mixed", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_study_with_nothing_run_yet_exports_typed_empty_columns(tmp_path):
    storage = write_fake_study(tmp_path / "studies", "planned", [fake_trial("a", 0, [])], state="planned")
    export.export_study(storage, "planned", tmp_path / "out")
    trials = pq.read_table(tmp_path / "out" / "trials.parquet")
    epochs = pq.read_table(tmp_path / "out" / "epochs.parquet")
    assert trials.num_rows == 1 and epochs.num_rows == 0
    assert trials.schema.field("best_val_miou").type == pa.float64()
    assert trials.schema.field("attempts").type == pa.int64()
    assert epochs.schema.field("val_iou_2").type == pa.float64()  # pets: three classes, none seen yet
