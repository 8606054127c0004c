"""The study's record on a real finished study: every setting typed in the export, and every damaged or
missing file named, repaired or refused, through the real `study` command, with no finished trial re-run.

Each case copies the session's finished tiny study (tests/conftest.py), damages one file, and checks
what `status`, `report`, `export` and `resume` make of it. `resume` of a study whose trials all ended
starts no Ray: it must say the study is finished and leave every result.json byte for byte as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from study.folder.events import EVENTS_FILE
from study.folder.files import STUDY_FILE
from study.planning.plan import PLAN_FILE, SPEC_FILE
from study.planning.record import TRIAL_COLUMNS, setting_values
from tests.study_helpers import run_study_cli

MAIN = ("segformer_frozen-s0", "segformer_scratch-s0")


@pytest.fixture
def study(tmp_path, finished_tiny_study) -> Path:
    """A copy of the finished tiny study "t" (and its storage's encoder store): returns the storage folder."""
    storage = tmp_path / "studies"
    shutil.copytree(finished_tiny_study, storage)
    return storage


def results_of(storage: Path) -> dict[str, bytes]:
    files = {key: storage / "t" / "main" / key / "result.json" for key in MAIN}
    return {key: path.read_bytes() for key, path in files.items() if path.exists()}


def status(storage: Path, check: bool = True):
    done = run_study_cli(["status", "t", "--json"], storage.parent, storage, check=check)
    return json.loads(done.stdout) if done.returncode == 0 else done


def resumed_without_rerun(storage: Path, before: dict[str, bytes]) -> str:
    """`study resume t` of the (still) finished study: nothing runs, nothing is rewritten."""
    done = run_study_cli(["resume", "t"], storage.parent, storage)
    assert "already finished" in done.stderr and "Ray" not in done.stderr, done.stderr
    assert results_of(storage) == before
    return done.stderr


def test_every_setting_is_a_typed_column_of_the_export(study, tmp_path):
    run_study_cli(["export", "t", "--out", str(tmp_path / "out")], tmp_path, study)
    trials = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert list(trials.columns) == [c.name for c in TRIAL_COLUMNS]
    main = trials[trials["stage"] == "main"].set_index("trial_key")
    plan = json.loads((study / "t" / PLAN_FILE).read_text())
    for planned in plan["trials"]:
        row, config = main.loc[planned["trial_key"]], planned["config"]
        for name, value in setting_values(config).items():  # pairs such as image_size: two columns
            if value is None:
                assert pd.isna(row[name]), name
            else:
                assert row[name] == pytest.approx(value) if isinstance(value, float) else row[name] == value, name
    assert set(main["optimizer"]) == {"adamw"} and set(main["batch_size"]) == {8}
    assert str(trials["batch_size"].dtype) == "Int64" and str(trials["amsgrad"].dtype) == "boolean"
    # a table row can match any setting
    done = run_study_cli(["report", "t", "--out", str(tmp_path / "report")], tmp_path, study)
    assert "no trial of this study matches" not in done.stdout


@pytest.mark.parametrize("damage", ["emptied", "garbage", "deleted"])
def test_a_damaged_event_log_loses_no_finished_trial(study, damage):
    events = study / "t" / EVENTS_FILE
    before = results_of(study)
    if damage == "emptied":
        events.write_text("")
    elif damage == "garbage":
        events.write_bytes(b'{"event": "start", "st\n\x00\xff garbage\n' + events.read_bytes()[:100])
    else:
        events.unlink()
    summary = status(study)
    assert summary["state"] == "finished" and summary["stages"]["main"] == {"finished": 2}
    if damage == "garbage":
        assert any(EVENTS_FILE in note for note in summary["notes"]), summary["notes"]
        # every command that reads the record names the same damage, as status does
        for command in (["report", "t", "--out", str(study.parent / "report")],
                        ["export", "t", "--out", str(study.parent / "export")], ["best", "t"]):
            done = run_study_cli(command, study.parent, study)
            assert all(f"note: {note}" in done.stderr for note in summary["notes"]), (command, done.stderr)
    resumed_without_rerun(study, before)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "deleted"])
def test_a_damaged_result_file_is_named_and_mended_from_the_checkpoint(study, tmp_path, damage):
    path = study / "t" / "main" / MAIN[1] / "result.json"
    text = path.read_text()
    if damage == "truncated":  # the last line cut short, as by a kill mid-write
        path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01 not json at all\n")
    else:
        path.unlink()
    summary = status(study)
    assert summary["state"] == "finished" and summary["stages"]["main"] == {"finished": 2}
    noted = " ".join(summary["notes"])
    assert MAIN[1] in noted and "taken from the checkpoint" in noted
    if damage == "truncated":
        assert "last line (line 4) was cut short; dropped" in noted
    run_study_cli(["export", "t", "--out", str(tmp_path / "out")], tmp_path, study)
    epochs = pd.read_parquet(tmp_path / "out" / "epochs.parquet")
    assert sorted(epochs.loc[epochs["trial_key"] == MAIN[1], "epoch"]) == [1, 2, 3, 4]
    resumed_without_rerun(study, results_of(study))


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_a_missing_plan_is_named_and_rebuilt_by_resume(study, damage):
    before = results_of(study)
    plan = study / "t" / PLAN_FILE
    planned = json.loads(plan.read_text())
    if damage == "deleted":
        plan.unlink()
    else:
        plan.write_text('{"study_name": "t", "trials": [')
    refused = status(study, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{PLAN_FILE} is missing" in refused.stderr or "is damaged" in refused.stderr
    assert "`study resume t` rebuilds it from spec.yaml" in refused.stderr
    assert run_study_cli(["list"], study.parent, study).stdout.split()[0] == "t"  # still listed
    stderr = resumed_without_rerun(study, before)
    assert "rebuilt it from spec.yaml" in stderr
    rebuilt = json.loads(plan.read_text())
    assert [t["trial_key"] for t in rebuilt["trials"]] == [t["trial_key"] for t in planned["trials"]]
    assert rebuilt["pretrain_jobs"] == planned["pretrain_jobs"]  # same encoder key: same data, same settings
    assert status(study)["state"] == "finished"


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_a_damaged_study_file_is_derived_from_the_trials(study, damage):
    before = results_of(study)
    path = study / "t" / STUDY_FILE
    path.unlink() if damage == "deleted" else path.write_text("[1, 2")
    summary = status(study)
    assert summary["state"] == "finished"
    if damage == "garbage":
        assert any(STUDY_FILE in note for note in summary["notes"])
    resumed_without_rerun(study, before)
    assert json.loads(path.read_text())["state"] == "finished"  # resume wrote it back


def test_an_edited_study_file_is_detected_and_the_plans_copy_is_used(study, tmp_path):
    before = results_of(study)
    spec = study / "t" / SPEC_FILE
    original = spec.read_text()
    spec.write_text(original.replace("epochs: 4", "epochs: 40"))
    summary = status(study)
    assert any("was changed after the study was planned" in note for note in summary["notes"])
    run_study_cli(["export", "t", "--out", str(tmp_path / "out")], tmp_path, study)
    import pyarrow.parquet as pq

    metadata = pq.read_schema(tmp_path / "out" / "trials.parquet").metadata
    assert metadata[b"segstudy.spec_yaml"].decode() == original  # the study file as run, not the edit
    report = run_study_cli(["report", "t", "--out", str(tmp_path / "report")], tmp_path, study)
    assert "was changed after the study was planned" in (tmp_path / "report" / "report.md").read_text()
    assert report.returncode == 0
    stderr = resumed_without_rerun(study, before)
    assert "was changed after the study was planned" in stderr
    spec.unlink()
    assert any(f"{SPEC_FILE} is missing" in note for note in status(study)["notes"])
    resumed_without_rerun(study, before)
    assert spec.read_text() == original  # resume puts the plan's copy back


def test_status_reads_the_record_without_ray_torch_or_pandas(study):
    """`study status` stays quick: it imports none of the heavy libraries (speed itself: benchmarks/read_side.py)."""
    import subprocess
    import sys

    code = ("import sys; from study.cli import main; code = main(['status', 't', '--storage', sys.argv[1]]); "
            "heavy = [m for m in ('ray', 'torch', 'pandas', 'pyarrow', 'matplotlib') if m in sys.modules]; "
            "print(heavy); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, str(study)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
