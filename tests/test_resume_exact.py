"""A resumed study proposes what an uninterrupted one would (issue 26), on a real local Ray, in real processes.

One uninterrupted run of each small study is the reference; the same study SIGKILLed at the points where a
search's state can be lost (while a trial trains, between a trial's end and the next ask, while a checkpoint
is written, between ASHA's decision and Tune acting on it) and resumed to its end must propose, train and
stop exactly the same trials: the same (trial_index, searched settings, status, epochs) and every epoch's
metrics bit for bit. With two trials at a time the promise is weaker (the order of results depends on
timing): tests/test_faults.py's Optuna kill test checks it (every trial once, each proposal the one that
the same sequence of asks and results gives).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

from study.folder.ledger import LEDGER_FILE, Ledger
from study.reading.results import load_results
from study.storage import Storage
from study.tune.decisions import KILL_VARIABLE
from tests.study_helpers import (
    TEST_SPECS,
    crash_driver_when,
    kill_group,
    ledger_trials,
    run_study_cli,
    start_study_cli,
    trial_reached,
    wait_for,
)

SEARCH, GRID = TEST_SPECS / "exact_search.yaml", TEST_SPECS / "exact_grid.yaml"
SEARCHED = ("segformer_stem", "lr", "weight_decay")


def sequence(storage: Path, name: str, settings=SEARCHED) -> list[tuple]:
    """(trial_index, the searched settings, status, epochs_run) of each main trial, in proposal order."""
    trials = load_results(Storage(storage), name).trials
    main = trials[trials["stage"] == "main"].sort_values("trial_index")
    return [(int(row["trial_index"]), *(row[s] for s in settings), row["status"], int(row["epochs_run"]))
            for row in main.to_dict("records")]


def epoch_metrics(storage: Path, name: str) -> list[tuple]:
    """(trial_index, epoch, train loss, val loss, val mIoU) of every epoch: the training itself, bit for bit."""
    results = load_results(Storage(storage), name)
    index = dict(zip(results.trials["trial_key"], results.trials["trial_index"]))
    epochs = results.epochs[results.epochs["stage"] == "main"]
    return sorted((int(index[row["trial_key"]]), int(row["epoch"]), row["train_loss"], row["val_loss"], row["val_miou"])
                  for row in epochs.to_dict("records"))


def optuna_history(storage: Path, name: str) -> list[tuple]:
    """The study's Optuna storage, trial by trial in Optuna's order (without who ran them: Tune's trial ids)."""
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{storage / name / 'optuna.db'}")
    return [(t.number, t.params, t.state.name, t.value, t.intermediate_values, t.user_attrs["trial_index"])
            for t in study.get_trials(deepcopy=False)]


def ledger(folder: Path) -> Ledger:
    return Ledger.from_json(json.loads((folder / LEDGER_FILE).read_text()))


def rungs(state: Ledger) -> dict:
    """ASHA's rungs by trial index (their keys hold Tune's trial ids, which differ from run to run)."""
    index = {trial.key: trial.index for trial in state.trials}
    return {milestone: {index[key]: value for key, value in values.items()}
            for milestone, values in state.rungs.items()}


def killed_by_itself(driver, log: Path) -> None:
    """The driver SIGKILLed itself at the decision KILL_VARIABLE named; then the Ray processes it left go."""
    try:
        returncode = driver.wait(timeout=600)
    finally:
        kill_group(driver)
    assert returncode == -signal.SIGKILL, log.read_text()[-5000:]


def promise(storage: Path, tmp_path: Path, name: str) -> str:
    return json.loads(run_study_cli(["status", name, "--json"], tmp_path, storage).stdout)["resume"]["promise"]


@pytest.fixture(scope="module")
def uninterrupted_search(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("uninterrupted-search")
    run_study_cli(["run", str(SEARCH)], home, home / "studies")
    return home / "studies"


@pytest.mark.slow
def test_a_search_killed_three_times_proposes_trains_and_stops_as_the_uninterrupted_one(tmp_path, uninterrupted_search):
    name = "exact_search"
    reference = sequence(uninterrupted_search, name)
    assert [row[0] for row in reference] == list(range(12))
    assert {row[-2] for row in reference} == {"finished", "early_stopped"}  # ASHA stopped some, not all
    storage, folder = tmp_path / "studies", tmp_path / "studies" / name

    # 1. while a trial trains: the driver SIGKILLed once trial 2 has reported its first epoch
    log = tmp_path / "driver1.log"
    driver = start_study_cli(["run", str(SEARCH)], tmp_path, storage, log)
    crash_driver_when(driver, lambda: trial_reached(folder, 2, 1), log, "trial 2's first epoch")
    # 2. between a trial's end and the next ask: the driver kills itself right after it told trial 5's end
    log = tmp_path / "driver2.log"
    driver = start_study_cli(["resume", name], tmp_path, storage, log, env={KILL_VARIABLE: "tell:5"})
    killed_by_itself(driver, log)
    state = ledger(folder)
    assert state.journal[-1] == ["tell", 5] and len(state.trials) == 6
    # 3. while a checkpoint is written: driver and trials SIGKILLed at once as trial 9's first checkpoint
    # appears, and that checkpoint's files cut short, as a write cut off leaves them
    log = tmp_path / "driver3.log"
    driver = start_study_cli(["resume", name], tmp_path, storage, log)

    def checkpoint_of_trial_9():
        entry = ledger_trials(folder).get(9)
        return entry and sorted((folder / "main" / entry["key"]).glob("checkpoint_*"))

    try:
        checkpoints = wait_for(checkpoint_of_trial_9, timeout=300, interval=0.05, what="trial 9's checkpoint")
    finally:
        kill_group(driver)
    for file in (path for path in checkpoints[-1].iterdir() if path.is_file()):
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    status = json.loads(run_study_cli(["status", name, "--json"], tmp_path, storage).stdout)
    assert "errored" not in status["stages"]["main"], status  # a proposal cut off is pending, not abandoned

    resumed = run_study_cli(["resume", name], tmp_path, storage)
    assert "study exact_search finished" in resumed.stderr
    assert sequence(storage, name) == reference  # bit for bit: lr and weight_decay are floats
    assert epoch_metrics(storage, name) == epoch_metrics(uninterrupted_search, name)
    assert optuna_history(storage, name) == optuna_history(uninterrupted_search, name)
    state, uninterrupted = ledger(folder), ledger(uninterrupted_search / name)
    assert state.exact and state.journal == uninterrupted.journal and rungs(state) == rungs(uninterrupted)
    assert promise(storage, tmp_path, name) == "exact"


@pytest.mark.slow
def test_a_stopped_trial_whose_record_a_kill_destroyed_is_trained_again_as_decided(tmp_path, uninterrupted_search):
    """The driver dies right after ASHA stops a trial, and the trial's record with it (no result.json, its
    checkpoint cut short): the ledger holds the decision, so the searcher is told as it would have been, and the
    trial is trained again under its key, up to the epoch it was stopped at."""
    name = "exact_search"
    reference = sequence(uninterrupted_search, name)
    stopped = [row[0] for row in reference if row[-2] == "early_stopped"]
    victim = stopped[len(stopped) // 2]
    storage, folder = tmp_path / "studies", tmp_path / "studies" / name
    log = tmp_path / "driver1.log"
    driver = start_study_cli(["run", str(SEARCH)], tmp_path, storage, log, env={KILL_VARIABLE: f"stop:{victim}"})
    killed_by_itself(driver, log)
    trial = folder / "main" / ledger_trials(folder)[victim]["key"]
    (trial / "result.json").unlink(missing_ok=True)
    for file in (path for path in trial.rglob("*") if path.is_file()):
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    resumed = run_study_cli(["resume", name], tmp_path, storage)
    assert f"have no readable record (a checkpoint cut short by a kill): {trial.name}" in resumed.stderr
    assert "study exact_search finished" in resumed.stderr
    assert sequence(storage, name) == reference
    assert epoch_metrics(storage, name) == epoch_metrics(uninterrupted_search, name)
    assert optuna_history(storage, name) == optuna_history(uninterrupted_search, name)
    state, uninterrupted = ledger(folder), ledger(uninterrupted_search / name)
    assert state.exact and state.journal == uninterrupted.journal and rungs(state) == rungs(uninterrupted)


@pytest.mark.slow
def test_a_grid_under_asha_killed_at_a_stop_then_its_ledger_lost_resumes_as_if_never_killed(tmp_path):
    name, settings = "exact_grid", ("lr", "segformer_stem")
    home = tmp_path / "uninterrupted"
    home.mkdir()
    run_study_cli(["run", str(GRID)], home, home / "studies")
    reference = sequence(home / "studies", name, settings)
    stopped = [row[0] for row in reference if row[-2] == "early_stopped"]
    assert stopped and [row[0] for row in reference] == list(range(6))
    storage, folder = tmp_path / "studies", tmp_path / "studies" / name

    # 1. between ASHA's decision to stop a trial and Tune stopping it: the driver kills itself there
    log = tmp_path / "driver1.log"
    driver = start_study_cli(["run", str(GRID)], tmp_path, storage, log, env={KILL_VARIABLE: f"stop:{stopped[0]}"})
    killed_by_itself(driver, log)
    assert ledger_trials(folder)[stopped[0]]["stopped_epoch"] == 1
    # 2. the ledger lost as well: the resume rebuilds ASHA's rungs and stops from the trials' record
    (folder / LEDGER_FILE).unlink()
    run_study_cli(["resume", name], tmp_path, storage)
    assert sequence(storage, name, settings) == reference
    assert epoch_metrics(storage, name) == epoch_metrics(home / "studies", name)
    assert "rebuilt from the trials' record" in ledger(folder).notes[0]
    assert promise(storage, tmp_path, name) == "exact"


def test_ashas_rule_decides_as_tunes_scheduler_does():
    """study/tune/asha.py against Ray Tune's AsyncHyperBandScheduler, result by result: a Ray upgrade that
    changes Tune's rule fails here."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from study.tune import asha

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    rng = np.random.default_rng(0)
    for mode, grace, factor, max_t in (("max", 1, 2, 8), ("min", 2, 3, 20), ("max", 1, 4, 16)):
        tune = ASHAScheduler(time_attr="epoch", metric="m", mode=mode, grace_period=grace,
                             reduction_factor=factor, max_t=max_t)
        rungs, marks, running = {}, asha.milestones(grace, factor, max_t), {}
        for step in range(400):
            if len(running) < 3:
                trial = Trial(f"t{step}")
                tune.on_trial_add(None, trial)
                running[trial.trial_id] = [trial, 0]
            trial_id = list(running)[int(rng.integers(len(running)))]
            trial, epoch = running[trial_id]
            epoch += 1
            value = float(rng.choice([rng.normal(), np.nan], p=[0.9, 0.1]))
            result = {"epoch": epoch, "m": value}
            stop = tune.on_trial_result(None, trial, result) == TrialScheduler.STOP
            assert asha.decide(rungs, marks, factor, max_t, trial_id, epoch, asha.signed(value, mode)) == stop
            running[trial_id][1] = epoch
            if stop:
                tune.on_trial_complete(None, trial, result)
                asha.record_end(rungs, marks, factor, trial_id, epoch, asha.signed(value, mode))
                del running[trial_id]
        ours = {m: dict(values) for m, values in rungs.items() if values}
        theirs = {m: dict(values) for m, values in tune._brackets[0]._rungs if values}
        assert ours.keys() == theirs.keys()
        for m in ours:
            assert np.array_equal(list(ours[m].values()), list(theirs[m].values()), equal_nan=True)


def test_a_damaged_ledger_is_named_and_the_promise_says_what_is_left(tmp_path):
    """A study whose ledger is unreadable: `status` names the file and says the resume promises nothing until a
    resume has rebuilt it (the grid test above: the rebuild itself)."""
    from study.reading.status import status_summary
    from tests.fake_study import fake_trial, write_fake_study

    storage = write_fake_study(tmp_path / "studies", "s", [fake_trial("a", 0, [0.5, 0.6])], search={"num_samples": 2})
    assert status_summary(storage, "s")["resume"]["promise"] == "none"  # begun without a ledger
    Path(storage.path("s", LEDGER_FILE)).write_text('{"format": 1, "trials": [')
    summary = status_summary(storage, "s")
    assert any(LEDGER_FILE in note and "damaged" in note and "`study resume` rebuilds it" in note
               for note in summary["notes"])
    assert summary["resume"]["promise"] == "none" and "without a ledger" in summary["resume"]["why"]
