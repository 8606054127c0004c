"""Faults inside trials, on a real local Ray: retried, errored, diverged; and the study's check against its plan."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from study.reading.results import load_results
from study.storage import Storage
from tests.study_helpers import (
    SPECS,
    TEST_SPECS,
    crash_driver_when,
    driver_views,
    kill_group,
    run_study_cli,
    session_processes,
    start_study_cli,
    wait_for,
)
from trainables.trial import variant_label

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


def test_resume_runs_planned_trials_that_the_backend_lost(tmp_path, finished_tiny_study):
    """A trial whose folder and record are gone (Ray's state says it finished) runs again on resume."""
    storage = tmp_path / "studies"
    shutil.copytree(finished_tiny_study, storage)
    lost = "segformer_scratch-s0"
    shutil.rmtree(storage / "t" / "main" / lost)
    kept = (storage / "t" / "main" / "segformer_frozen-s0" / "result.json").read_text()

    status = json.loads(run_study_cli(["status", "t", "--json"], tmp_path, storage).stdout)
    assert status["stages"]["main"].get("pending") == 1

    resumed = run_study_cli(["resume", "t"], tmp_path, storage)
    assert f"have not run to the end although Tune's state says the stage is done: {lost}" in resumed.stderr
    assert "study t finished" in resumed.stderr
    results = load_results(Storage(storage), "t")
    main = results.trials[results.trials["stage"] == "main"]
    assert sorted(main["trial_key"]) == sorted(t.trial_key for t in results.plan.trials)
    assert set(main["status"]) == {"finished"}
    assert (storage / "t" / "main" / "segformer_frozen-s0" / "result.json").read_text() == kept
    again = run_study_cli(["resume", "t"], tmp_path, storage)
    assert "already finished" in again.stderr


def test_an_ended_trials_older_checkpoints_go_once_its_last_is_a_whole_final_one(tmp_path, finished_tiny_study):
    """Tune deletes a trial's older checkpoint only once it has registered the next: a trial that ended while its
    driver was being killed keeps a training state in the older one (seen in the Optuna kill test below). The
    stage's end deletes it, unless the last checkpoint is not a whole final one (a cut-off upload, say)."""
    from study.running.runner import finalize_ended_trials
    from trainables.checkpoint import FINAL_WEIGHTS, STATE_FILE, TRIAL_FILE, checkpoint_index, load_weights

    storage = tmp_path / "studies"
    shutil.copytree(finished_tiny_study, storage)
    rows = [row for row in load_results(Storage(storage), "t").rows if row["stage"] == "main"]
    assert [row["status"] for row in rows] == ["finished", "finished"]
    older = {}
    for row in rows:  # the last checkpoint moves one index up; the older one in its place holds a training state
        last = Path(row["checkpoint"])
        newer = last.parent / f"checkpoint_{checkpoint_index(last.name) + 1:06d}"
        last.rename(newer)
        last.mkdir()
        shutil.copy(newer / TRIAL_FILE, last / TRIAL_FILE)
        (last / STATE_FILE).write_bytes(b"an optimizer state")
        older[row["trial_key"]] = (last, newer)
    whole, cut = rows[0]["trial_key"], rows[1]["trial_key"]
    (older[cut][1] / TRIAL_FILE).write_text('{"kind": "fin')  # the upload of the last one was cut off

    finalize_ended_trials(Storage(storage), load_results(Storage(storage), "t"))
    assert not older[whole][0].exists() and load_weights(older[whole][1] / FINAL_WEIGHTS)
    assert (older[cut][0] / STATE_FILE).exists()


def test_optuna_study_killed_twice_moved_and_resumed(tmp_path):
    """Driver SIGKILLed in pretraining, then in the main stage of an Optuna + ASHA search (two trials at a
    time), the study folder moved in between: resume completes it with exactly the planned samples, each
    proposal once and as its sequence of asks and results gives it, and the Optuna storage holds each trial
    once, none left RUNNING."""
    import optuna

    from study.folder.ledger import LEDGER_FILE, Ledger
    from study.tune.optuna_live import LiveSearch

    first_home, storage = tmp_path / "first", tmp_path / "moved"
    args = ["run", str(SPECS / "smoke_search.yaml"), "--name", "o"]
    log = tmp_path / "driver.log"
    driver = start_study_cli(args, tmp_path, first_home, log)
    crash_driver_when(driver, lambda: any(v.state.value == "running" and v.last_epoch
                                          for v in driver_views(first_home / "o", "pretrain")),
                      log, "a pretraining trial one epoch in")
    assert not (first_home / "_artifacts").exists()  # no encoder saved yet
    shutil.move(first_home, storage)  # the storage moves, as to another disk or machine

    driver = start_study_cli(["resume", "o"], tmp_path, storage, log)
    def some_ended_and_one_midway():
        views = driver_views(storage / "o")
        ended = [v for v in views if v.state.value in ("finished", "early_stopped")]
        return len(ended) >= 2 and any(v.state.value == "running" and v.last_epoch for v in views)

    crash_driver_when(driver, some_ended_and_one_midway, log, "two ended searcher trials and one midway")
    assert "saved encoder" in log.read_text()
    ended_before = {v.dir: (storage / "o" / "main" / v.dir / "result.json").read_text()
                    for v in driver_views(storage / "o") if v.state.value in ("finished", "early_stopped")}

    resumed = run_study_cli(["resume", "o"], tmp_path, storage)
    assert "[pretrain] reusing encoder" in resumed.stderr and "study o finished" in resumed.stderr
    results = load_results(Storage(storage), "o")
    main = results.trials[results.trials["stage"] == "main"]
    # Every proposal ran once, to its end: one the killed driver started but Tune's state never named was
    # handed out again under its trial key (tests/test_resume_exact.py: the same with one trial at a time).
    assert len(main) == 6 and set(main["status"]) <= {"finished", "early_stopped"}
    assert main["trial_id"].is_unique and sorted(main["trial_index"]) == list(range(6))
    # Two trials at a time: which ends first depends on timing, so the promise is the searcher's: each proposal,
    # before and after the kills, the one a fresh searcher with the same seed makes for the same asks and results.
    state = Ledger.from_json(json.loads((storage / "o" / LEDGER_FILE).read_text()))
    asks, tells = ([index for kind, index in state.journal if kind == wanted] for wanted in ("ask", "tell"))
    assert asks == list(range(6)) and sorted(tells) == list(range(6)) and state.exact
    assert LiveSearch(results.plan, "replayed", None).replay(state) is None
    status = json.loads(run_study_cli(["status", "o", "--json"], tmp_path, storage).stdout)
    assert status["resume"]["promise"] == "same_sequence"
    for directory, text in ended_before.items():
        assert (storage / "o" / "main" / directory / "result.json").read_text() == text
    assert all(str(c).startswith(str(storage)) for c in results.trials["checkpoint"].dropna())
    # ended trials, early-stopped ones too, keep weights only: no optimizer state
    assert main["weights_final"].notna().all()
    assert not [p for key in main["trial_key"] for p in (storage / "o" / "main" / key).glob("checkpoint_*/state.pt")]

    # The Optuna study, rebuilt from the record: each trial once, stopped ones PRUNED with their value per epoch
    study = optuna.load_study(study_name="o", storage=f"sqlite:///{storage / 'o' / 'optuna.db'}")
    optuna_trials = {t.user_attrs["trial_key"]: t for t in study.get_trials(deepcopy=False)}
    assert sorted(optuna_trials) == sorted(main["trial_key"])
    assert sorted(t.user_attrs["tune_trial_id"] for t in optuna_trials.values()) == sorted(main["trial_id"])
    epochs = results.epochs
    for row in main.to_dict("records"):
        trial = optuna_trials[row["trial_key"]]
        assert trial.state.name == {"finished": "COMPLETE", "early_stopped": "PRUNED"}[row["status"]]
        assert trial.value == pytest.approx(row["final_val_miou"])
        own = epochs[(epochs["trial_key"] == row["trial_key"]) & epochs["validated"]]
        assert trial.intermediate_values == pytest.approx(dict(zip(own["epoch"], own["val_miou"])))
        assert max(trial.intermediate_values) == row["epochs_run"]
        assert {k: trial.user_attrs[k] for k in ("config_name", "arch", "pretrain", "freeze", "segformer_stem")} == \
            {k: row[k] for k in ("config_name", "arch", "pretrain", "freeze", "segformer_stem")}
        assert trial.params == {"pretrain": row["pretrain"], "freeze": row["freeze"],
                                "segformer_stem": row["segformer_stem"], "lr": pytest.approx(row["lr"])}
    assert "pruned by ASHA" in resumed.stderr
    # each categorical setting is its own parameter, so importance analysis separates them
    assert set(optuna.importance.get_param_importances(study)) == {"pretrain", "freeze", "segformer_stem", "lr"}
    assert study.user_attrs["optuna_version"] == optuna.__version__
    assert study.user_attrs["sampler"] == {"class": "TPESampler", "seed": 0, "multivariate": True,
                                           "constant_liar": True}
    # each sampled setting is a typed column: the variant's categorical settings and the sampled lr
    labels = {variant_label(v): v for v in results.plan.search.variants}
    for row in main.to_dict("records"):
        assert all(row[k] == v for k, v in labels[row["config_name"]].items()), row["config_name"]
        assert 1e-4 <= row["lr"] <= 3e-3 and row["epochs"] == 4 and row["image_height"] == 32

    run_study_cli(["report", "o"], tmp_path, storage)
    assert (storage / "o" / "report" / "report.md").exists()


def test_a_study_through_a_crash_sigterm_and_ctrl_c_with_one_driver_at_a_time(tmp_path):
    """One single-trial study (a checkpoint every 5 of 40 epochs), through everything that stops a driver:

    1. two `study run` of it started at once: one runs, the other exits 2 naming it; `resume` is refused
       while it lives, and `status` reads the study from another process;
    2. the running driver SIGKILLed two epochs past a checkpoint, and that checkpoint renamed, as when Tune
       records a checkpoint one asynchronous sync after deleting the one before: `resume` takes the dead
       driver's lock over and mends the lost checkpoint from the newest one;
    3. SIGTERM to that driver alone (kill, docker stop, Slurm, timeout): exit 143;
    4. Ctrl-C to the next one's whole process group, as a terminal sends it: exit 130;
    each stopping within seconds, leaving no process of the run, recording the study as interrupted and
    printing how to resume; 5. a last `resume` finishes it, each attempt continuing from a checkpoint."""
    storage = tmp_path / "studies"
    args = ["run", str(TEST_SPECS / "single.yaml"), "--name", "i"]
    drivers = [start_study_cli(args, tmp_path, storage, tmp_path / f"driver{i}.log") for i in range(2)]
    try:
        wait_for(lambda: any(d.poll() is not None for d in drivers), timeout=120, what="one driver to refuse")
        loser = next(i for i, d in enumerate(drivers) if d.poll() is not None)
        winner = drivers[1 - loser]
        text = (tmp_path / f"driver{loser}.log").read_text()
        assert drivers[loser].returncode == 2, text
        assert f"already being run by process {winner.pid}" in text and "study resume i" in text, text
        assert "Traceback" not in text
        wait_for(lambda: (storage / "i" / "plan.json").exists(), timeout=120, what="the winner's plan")
        refused = run_study_cli(["resume", "i"], tmp_path, storage, check=False)
        assert refused.returncode == 2 and f"already being run by process {winner.pid}" in refused.stderr
        status = json.loads(run_study_cli(["status", "i", "--json"], tmp_path, storage).stdout)
        assert status["state"] == "running" and status["driver"]["pid"] == winner.pid
    except BaseException:
        for driver in drivers:
            kill_group(driver)
        raise
    log = tmp_path / f"driver{1 - loser}.log"
    crash_driver_when(winner, lambda: any(v.state.value == "running" and 7 <= (v.last_epoch or 0) <= 8
                                          for v in driver_views(storage / "i")),
                      log, "the trial two epochs past its first checkpoint")
    # the driver died without a word: status and list say so, not "running"
    assert json.loads(run_study_cli(["status", "i", "--json"], tmp_path, storage).stdout)["state"] == "interrupted"
    assert run_study_cli(["list"], tmp_path, storage).stdout.strip() == "i\tinterrupted (driver process gone)"
    trial = storage / "i" / "main" / "segformer_scratch-s0"
    newest = sorted(trial.glob("checkpoint_*"))[-1]
    newest.rename(trial / f"checkpoint_{int(newest.name.split('_')[1]) + 1:06d}")  # the recorded one is gone

    def stopped(stop, after_epoch: int, log: Path) -> str:
        driver = start_study_cli(["resume", "i"], tmp_path, storage, log)
        try:
            wait_for(lambda: any(v.state.value == "running" and (v.last_epoch or 0) > after_epoch
                                 for v in driver_views(storage / "i")), timeout=300, interval=0.1,
                     what=f"the trial past epoch {after_epoch}")
            stop(driver)
            started = time.time()
            returncode = driver.wait(timeout=60)
            seconds = time.time() - started
            deadline = time.time() + 20  # Ray's GCS, raylet and workers end with the command, within seconds
            while session_processes(driver.pid) and time.time() < deadline:
                time.sleep(0.5)
            left = session_processes(driver.pid)
        finally:
            kill_group(driver)
        text = log.read_text()
        assert seconds < 30 and not left, (seconds, left, text[-3000:])
        assert "study resume i" in text and "interrupted" in text and "Traceback" not in text, text[-3000:]
        assert json.loads((storage / "i" / "study.json").read_text())["state"] == "interrupted"
        return f"{returncode}\n{text}"

    text = stopped(lambda d: d.terminate(), 10, tmp_path / "sigterm.log")
    assert text.startswith("143\n"), text[-3000:]  # 128 + SIGTERM, as a shell reports it
    assert "its recorded checkpoint was already replaced; resuming it from its newest one" in text
    status = json.loads(run_study_cli(["status", "i", "--json"], tmp_path, storage).stdout)
    assert status["state"] == "interrupted" and status["stages"]["main"] == {"pending": 1}
    reached = max(v.last_epoch or 0 for v in driver_views(storage / "i"))
    text = stopped(lambda d: os.killpg(d.pid, signal.SIGINT), reached + 1, tmp_path / "ctrl-c.log")
    assert text.startswith("130\n"), text[-3000:]

    resumed = run_study_cli(["resume", "i"], tmp_path, storage)
    assert "study i finished" in resumed.stderr
    trials = load_results(Storage(storage), "i").trials
    assert (trials.iloc[0]["status"], trials.iloc[0]["epochs_run"]) == ("finished", 40)
    starts = restarts(str(trial))
    assert starts[0] == 6 and len(starts) == 3 and all(epoch > 5 for epoch in starts), starts  # never from scratch
