"""Faults inside trials, on a real local Ray: retried, errored, diverged; and the study's check against its plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from study.results import load_results
from study.storage import Storage
from tests.study_helpers import TEST_SPECS, run_study_cli

pytestmark = pytest.mark.slow


def restarts(trial_path: str) -> list[int]:
    """Epochs at which a later attempt of the trial reported first."""
    lines = [json.loads(line) for line in (Path(trial_path) / "result.json").read_text().splitlines()]
    return [line["epoch"] for line in lines[1:] if line.get("iterations_since_restore") == 1]


def test_faulty_trials_are_retried_errored_or_diverged_and_the_study_goes_on(tmp_path):
    storage = tmp_path / "studies"
    run = run_study_cli(["run", str(TEST_SPECS / "faults.yaml")], tmp_path, storage)
    assert "study faults finished" in run.stderr
    assert "Traceback" not in run.stderr  # Tune's tracebacks stay in each trial's error.txt

    results = load_results(Storage(storage), "faults")
    trials = results.trials.set_index("config_name")
    # an exception and a SIGKILLed worker: retried once, from the checkpoint of epoch 2
    for name in ("exception_once", "worker_killed_once"):
        trial = trials.loc[name]
        assert (trial["status"], trial["attempts"], trial["epochs_run"]) == ("finished", 2, 4), name
        assert restarts(trial["path"]) == [3], name
    assert "worker process died" in run.stderr
    # an exception on every attempt: errored after max_failures (1) retry, with its message
    errored = trials.loc["exception_always"]
    assert (errored["status"], errored["attempts"]) == ("errored", 2)
    assert "fault injected at epoch 3" in errored["error"]
    # NaN weights: stopped as diverged at that epoch, not retried
    diverged = trials.loc["nan_weights"]
    assert (diverged["status"], diverged["diverged_epoch"], diverged["attempts"]) == ("diverged", 2, 1)

    status = json.loads(run_study_cli(["status", "faults", "--json"], tmp_path, storage).stdout)
    assert status["stages"]["main"] == {"finished": 2, "errored": 1, "diverged": 1}
    assert any("fault injected at epoch 3" in e["error"] for e in status["errors"])
    report = run_study_cli(["report", "faults", "--out", str(tmp_path / "report")], tmp_path, storage)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "exception_always-s0 (errored: " in text and "fault injected at epoch 3" in text
    assert "nan_weights-s0 (diverged at epoch 2)" in text and report.returncode == 0
    run_study_cli(["export", "faults", "--out", str(tmp_path / "export")], tmp_path, storage)
    exported = pd.read_parquet(tmp_path / "export" / "trials.parquet").set_index("config_name")
    assert exported.loc["exception_always", "status"] == "errored"
    assert "fault injected at epoch 3" in exported.loc["exception_always", "error"]
    assert exported.loc["nan_weights", "status"] == "diverged"


def test_resume_runs_planned_trials_that_the_backend_lost(tmp_path):
    """A trial whose folder and record are gone (Ray's state says it finished) runs again on resume."""
    storage = tmp_path / "studies"
    spec = str(TEST_SPECS / "tiny.yaml")
    run_study_cli(["run", spec, "--name", "t"], tmp_path, storage)
    lost = "segformer_scratch-s0"
    shutil.rmtree(storage / "t" / "main" / lost)
    states_file = storage / "t" / "main_trials.json"
    states = json.loads(states_file.read_text())
    states_file.write_text(json.dumps({k: v for k, v in states.items() if v["trial_key"] != lost}))
    kept = (storage / "t" / "main" / "segformer_frozen-s0" / "result.json").read_text()

    status = json.loads(run_study_cli(["status", "t", "--json"], tmp_path, storage).stdout)
    assert status["stages"]["main"].get("pending") == 1

    resumed = run_study_cli(["resume", "t"], tmp_path, storage)
    assert f"have not run to the end although Tune's state says the stage is done: {lost}" in resumed.stderr
    assert "study t finished" in resumed.stderr
    results = load_results(Storage(storage), "t")
    main = results.trials[results.trials["stage"] == "main"]
    assert sorted(main["trial_key"]) == sorted(t["trial_key"] for t in results.plan["trials"])
    assert set(main["status"]) == {"finished"}
    assert (storage / "t" / "main" / "segformer_frozen-s0" / "result.json").read_text() == kept
    again = run_study_cli(["resume", "t"], tmp_path, storage)
    assert "already finished" in again.stderr
