"""The one place that reads Tune's own files (study/folder/tune_state.py), checked on a real stage folder.

If a Ray upgrade changes the experiment state's format, these fail loudly instead of the
record silently losing what it reads from there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from study.folder.tune_state import STATE_FILE_PATTERN, TuneStateError, error_message, trial_statuses
from study.storage import Storage


def test_statuses_of_a_finished_stage(finished_tiny_study):
    storage = Storage(finished_tiny_study)
    files = sorted(f for f in storage.list_files("t", "main") if STATE_FILE_PATTERN.match(f))
    assert files, storage.list_files("t", "main")
    statuses = trial_statuses([storage.read_text("t", "main", f) for f in files])
    assert set(statuses) == set(storage.list_dirs("t", "main"))
    assert {s["status"] for s in statuses.values()} == {"TERMINATED"}
    assert all(s["num_failures"] == 0 and s["trial_id"] for s in statuses.values())


def test_a_format_it_does_not_know_fails_loudly():
    with pytest.raises(TuneStateError, match="format"):
        trial_statuses(['{"trials": []}'])


def test_error_message_is_the_last_line_of_the_latest_failure():
    text = ("Failure # 1 (occurred at 2026-12-01)\nTraceback...\nValueError: first\n"
            "Failure # 2 (occurred at 2026-12-02)\nTraceback (most recent call last):\n  File x\n"
            "RuntimeError: fault injected at epoch 3\n")
    assert error_message(text) == "RuntimeError: fault injected at epoch 3"
    assert "worker process died" in error_message("Failure # 1\nray.exceptions.ActorDiedError: The actor died")


# -- Tune's pickles are checked before a resume hands them to Tune ---------------------------------
class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture
def stage_copy(tmp_path, finished_tiny_study):
    import shutil

    shutil.copytree(finished_tiny_study, tmp_path / "studies")
    return Storage(tmp_path / "studies")


def test_a_planted_pickle_in_tunes_state_is_refused_before_tune_loads_it(stage_copy, tmp_path):
    import json
    import pickle

    from study.errors import StudyError
    from study.tune.pickle_guard import check_stage_folder

    marker = tmp_path / "MARKER"
    check_stage_folder(stage_copy, "t", "main")  # what the project itself saved passes
    tuner = stage_copy.path("t", "main", "tuner.pkl")
    original = open(tuner, "rb").read()
    with open(tuner, "wb") as handle:
        pickle.dump({"run_config": Planted(marker)}, handle)
    with pytest.raises(StudyError, match=r"tuner.pkl: Tune's saved state holds a pickle this tool will not load "
                                         r"\(it names builtins.exec\)"):
        check_stage_folder(stage_copy, "t", "main")
    with open(tuner, "wb") as handle:
        handle.write(original)
    state_file = next(f for f in stage_copy.list_files("t", "main") if f.startswith("experiment_state"))
    state = json.loads(stage_copy.read_text("t", "main", state_file))
    whole_trial = state["trial_data"][0][0]
    trial = json.loads(whole_trial)
    trial["placement_group_factory"] = pickle.dumps(Planted(marker), protocol=4).hex()
    state["trial_data"][0][0] = json.dumps(trial)
    stage_copy.write_text(json.dumps(state), "t", "main", state_file)
    with pytest.raises(StudyError, match="it names builtins.exec"):
        check_stage_folder(stage_copy, "t", "main")
    # a pickle of protocol 0 (no 0x80 header: text opcodes) is a pickle all the same, in a field or a fallback
    trial["placement_group_factory"] = pickle.dumps(Planted(marker), protocol=0).hex()
    state["trial_data"][0][0] = json.dumps(trial)
    stage_copy.write_text(json.dumps(state), "t", "main", state_file)
    with pytest.raises(StudyError, match=r"it names __builtin__.exec"):  # protocol 0 spells builtins so
        check_stage_folder(stage_copy, "t", "main")
    metadata = json.loads(state["trial_data"][0][1])
    metadata["planted"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(Planted(marker), protocol=0).hex()}
    state["trial_data"][0] = [whole_trial, json.dumps(metadata)]
    stage_copy.write_text(json.dumps(state), "t", "main", state_file)
    with pytest.raises(StudyError, match="it names __builtin__.exec"):
        check_stage_folder(stage_copy, "t", "main")
    assert not marker.exists()


def test_a_trial_id_that_looks_like_hex_is_no_pickle(stage_copy):
    """Tune's trial ids are 8 hex digits: one starting with 80 (a pickle's first byte) is read as an id, not as
    the pickle it is not (which refused the resume of 1 study in about 20 of 12 trials)."""
    import json

    from study.tune.pickle_guard import check_stage_folder

    state_file = next(f for f in stage_copy.list_files("t", "main") if f.startswith("experiment_state"))
    state = json.loads(stage_copy.read_text("t", "main", state_file))
    trial = json.loads(state["trial_data"][0][0])
    trial["trial_id"] = "8065b789"
    state["trial_data"][0][0] = json.dumps(trial)
    stage_copy.write_text(json.dumps(state), "t", "main", state_file)
    check_stage_folder(stage_copy, "t", "main")


def test_the_pickled_fields_are_those_tune_unpickles():
    """study/tune/pickle_guard.py checks what Ray's Trial and JSON decoder unpickle: an upgrade that changes
    either fails here."""
    from ray.tune.experiment.trial import Trial
    from ray.tune.utils import serialization

    from study.tune.pickle_guard import CLOUDPICKLE_FALLBACK, TRIAL_PICKLED_FIELDS

    assert tuple(Trial._nonjson_fields) == TRIAL_PICKLED_FIELDS
    assert serialization._CLOUDPICKLE_FALLBACK_TYPE == CLOUDPICKLE_FALLBACK


class Calls:
    def __init__(self, function, kwargs):
        self.function, self.kwargs = function, kwargs

    def __reduce__(self):
        return (self.function, tuple(self.kwargs.values()))


def test_a_function_tune_stores_may_be_named_but_not_called(tmp_path):
    """A syncer killed mid-upload keeps (_upload_to_fs_path, arguments) in Tune's state: that passes; a pickle that
    calls it (it copies files) does not."""
    import pickle

    from ray.train._internal.storage import _upload_to_fs_path

    from study.errors import StudyError
    from study.tune.pickle_guard import check_pickle

    arguments = {"local_path": str(tmp_path / "a"), "fs": None, "fs_path": str(tmp_path / "b")}
    check_pickle(pickle.dumps({"_current_cmd": (_upload_to_fs_path, arguments)}), "state")
    with pytest.raises(StudyError, match="it calls ray.train._internal.storage._upload_to_fs_path"):
        check_pickle(pickle.dumps(Calls(_upload_to_fs_path, arguments)), "state")


def test_a_searcher_state_cut_short_by_a_kill_is_removed_and_a_planted_one_refused(stage_copy, tmp_path):
    """A driver killed while Tune synced its searcher state leaves an empty or partial file; Tune restores
    without one (the study's record of the search is decisions.json). A planted one is still refused."""
    import pickle

    from study.errors import StudyError
    from study.tune.pickle_guard import check_stage_folder

    folder = Path(stage_copy.path("t", "main"))
    (folder / "search_gen_state-2026-12-07_21-10-18.json").write_bytes(b"")
    (folder / "searcher-state-2026-12-07_21-10-18.pkl").write_bytes(pickle.dumps({"name": "main"})[:-3])
    notes = check_stage_folder(stage_copy, "t", "main")
    assert len(notes) == 2 and all("was cut short" in note for note in notes)
    assert not list(folder.glob("search*_state-*"))
    marker = tmp_path / "ran"
    planted = pickle.dumps(Planted(marker))
    (folder / "search_gen_state-2026-12-07_21-10-18.json").write_bytes(planted)
    with pytest.raises(StudyError, match="will not load"):
        check_stage_folder(stage_copy, "t", "main")
    (folder / "search_gen_state-2026-12-07_21-10-18.json").write_bytes(planted[:-2])  # cut short: removed unread
    assert len(check_stage_folder(stage_copy, "t", "main")) == 1
    assert not marker.exists()


def test_a_trials_pickled_error_is_removed_before_a_restore(stage_copy, tmp_path):
    import pickle

    from study.tune.pickle_guard import check_stage_folder

    planted = Path(stage_copy.path("t", "main", "segformer_scratch-s0", "error.pkl"))
    planted.write_bytes(pickle.dumps(Planted(tmp_path / "MARKER")))
    check_stage_folder(stage_copy, "t", "main")
    assert not planted.exists()  # Tune then reads error.txt, as the record does
def test_what_the_tracking_callbacks_rely_on_in_ray():
    """study/tune/tracking.py subclasses Ray's logger callbacks; a Ray upgrade that changes what they override or
    call fails here, not silently in a user's tracker."""
    import inspect

    from ray.air.integrations import wandb as ray_wandb
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.air.integrations.wandb import WandbLoggerCallback
    from ray.tune.experiment import Trial
    from ray.tune.logger import LoggerCallback, TBXLoggerCallback

    def parameters(function) -> list[str]:
        return list(inspect.signature(function).parameters)

    for hook, called in (("on_trial_start", "log_trial_start"), ("on_trial_result", "log_trial_result"),
                         ("on_trial_complete", "log_trial_end"), ("on_trial_error", "log_trial_end")):
        assert called in inspect.getsource(getattr(LoggerCallback, hook)), hook
    assert parameters(LoggerCallback.log_trial_start) == ["self", "trial"]
    assert parameters(LoggerCallback.log_trial_result) == ["self", "iteration", "trial", "result"]
    assert parameters(LoggerCallback.log_trial_end) == ["self", "trial", "failed"]
    # MLflow: the experiment is set up by setup() into mlflow_util.experiment_id
    assert {"tracking_uri", "experiment_name"} <= set(parameters(MLflowLoggerCallback.__init__))
    assert "self.mlflow_util.setup_mlflow(" in inspect.getsource(MLflowLoggerCallback.setup)
    assert "self.experiment_id =" in inspect.getsource(type(MLflowLoggerCallback().mlflow_util).setup_mlflow)
    # W&B: keyword arguments go to wandb.init; the logging actor logs each result at step = training_iteration
    assert parameters(WandbLoggerCallback._start_logging_actor) == ["self", "trial", "exclude_results",
                                                                   "wandb_init_kwargs"]
    assert "self.kwargs = kwargs" in inspect.getsource(WandbLoggerCallback.__init__)
    assert "self._trial_queues[trial]" in inspect.getsource(WandbLoggerCallback._signal_logging_actor_stop)
    assert "step=log.get(TRAINING_ITERATION)" in inspect.getsource(ray_wandb._WandbLoggingActor.run)
    assert "_set_api_key(" in inspect.getsource(WandbLoggerCallback.setup)
    # TensorBoard: one writer per trial in _trial_writer, made with _summary_writer_cls
    source = inspect.getsource(TBXLoggerCallback)
    assert all(name in source for name in ("self._trial_writer[trial] = self._summary_writer_cls(",
                                           "self._trial_result[trial] = {}"))
    # where a trial's folder is (study/tune/trial_files.py): Tune's storage context
    assert isinstance(Trial.path, property) and "storage" in inspect.getsource(Trial.path.fget)


def test_tracking_callbacks_pickle_their_settings_only():
    """Tune pickles callbacks into the experiment (tuner.pkl); `study resume` unpickles them in a new driver."""
    import pickle

    from study.planning.spec import MLflowSpec, TrackingSpec, WandbSpec
    from study.tune.tracking import TrialFacts, tracking_callbacks
    from trainables.trial import StudyContext

    facts = TrialFacts(study="s", study_id="abc", stage="main", context=StudyContext(base={"epochs": 4}))
    tracking = TrackingSpec(mlflow=MLflowSpec("sqlite:////nowhere/m.db", "s"), wandb=WandbSpec("p", None, "offline"),
                            tensorboard=True)
    for callback in tracking_callbacks(tracking, facts):
        state = callback.__getstate__()
        assert set(state) <= {"facts", "tracking_uri", "experiment", "project", "entity", "mode"}, state
        again = pickle.loads(pickle.dumps(callback))
        assert type(again) is type(callback) and again.__getstate__() == state


def test_a_traceback_tune_logs_while_saving_its_state_is_one_line():
    """Tune logs a failed sync of its experiment state (retried at the next) with a traceback; the study's
    output keeps one line. The logger's name is Tune's module: an upgrade that moves the message fails here."""
    import inspect
    import logging

    from ray.tune.execution import experiment_state

    from study.tune.stage import TuneLogWatch

    assert "experiment_state" in TuneLogWatch.LOGGERS[-1]
    assert TuneLogWatch.LOGGERS[-1] == experiment_state.__name__
    assert "failed with exception: " in inspect.getsource(experiment_state)
    try:
        raise FileNotFoundError(2, "Failed to open local file '/tmp/x.json'")
    except FileNotFoundError:
        import sys

        record = logging.LogRecord(experiment_state.__name__, logging.ERROR, __file__, 1,
                                   "Saving experiment state to storage at '%s' failed with exception: ",
                                   ("b/s/main",), sys.exc_info())
    assert TuneLogWatch().filter(record)
    line = logging.Formatter().format(record)
    assert line == ("Saving experiment state to storage at 'b/s/main' failed with exception: FileNotFoundError: "
                    "[Errno 2] Failed to open local file '/tmp/x.json'"), line


def test_a_restore_is_told_which_trials_the_scheduler_stopped(tmp_path):
    """Tune's saved state can lag the scheduler's stop; the record's early-stopped trials are not trained on."""
    from study.reading.results import load_results
    from study.tune.stage import stopped_trials
    from tests.fake_study import fake_trial, write_fake_study

    trials = [fake_trial("a", 0, [0.5], status="early_stopped", epochs_planned=8), fake_trial("b", 0, [0.5, 0.6])]
    rows = load_results(write_fake_study(tmp_path / "studies", "s", trials), "s").rows
    assert stopped_trials(rows, "main") == (trials[0]["trial_key"],)
    assert stopped_trials(rows, "pretrain") == ()


def test_a_trial_that_ended_under_an_earlier_driver_is_told_by_its_checkpoint(finished_tiny_study, tmp_path, capsys):
    """Tune sets a restored trial's last result from the checkpoint it restores: an older one when the driver was
    killed after the trial's end but before Tune's state said so, and the trial, finding its final checkpoint,
    returns at once. The progress line, the event log and the trackers then say how it ended from its newest
    checkpoint, as the study's record does, not "early stopped" from that older result."""
    import json
    import shutil

    from ray.tune import ExperimentAnalysis

    from study.folder.events import EVENTS_FILE, EventLog
    from study.planning.record import TrialState
    from study.tune.callback import StageTotals, StudyProgress, attach, ended_state, planned_epochs, trial_ended_state

    storage = tmp_path / "studies"
    shutil.copytree(finished_tiny_study, storage)
    (storage / "t" / EVENTS_FILE).unlink()
    trial = ExperimentAnalysis(str(storage / "t" / "main")).trials[0]  # Tune's own Trial, from the moved folder
    planned = planned_epochs(trial)
    assert planned > 2 and trial_ended_state(trial, planned) == TrialState.FINISHED
    trial.update_last_result({"epoch": 2, "diverged": False})  # as Tune restores it from the epoch-2 checkpoint
    assert ended_state(trial.last_result, planned) == TrialState.EARLY_STOPPED  # Tune's result alone misleads
    assert trial_ended_state(trial, planned) == TrialState.FINISHED
    assert trial_ended_state(trial, planned + 2) == TrialState.EARLY_STOPPED  # a plan past its records: stopped

    attach("main", EventLog(Storage(storage), "t"), StageTotals(trials=1))
    progress = StudyProgress("main")
    progress.on_trial_start(0, [trial], trial)
    progress.on_trial_complete(0, [trial], trial)
    ended = [json.loads(line) for line in (storage / "t" / EVENTS_FILE).read_text().splitlines()][-1]
    assert ended["event"] == "complete" and ended["state"] == TrialState.FINISHED.value
    assert f"{TrialState.FINISHED.words} {progress._key(trial)}" in capsys.readouterr().err


def test_an_errored_searcher_trial_that_validated_is_a_failed_optuna_trial_without_a_value():
    """Optuna refuses a FAIL trial with a value; a trial that validated, then errored, has a final val mIoU."""
    import optuna

    from study.planning.plan import make_plan
    from study.planning.spec import load_spec
    from study.tune.optuna_record import reconcile_optuna_study
    from tests.study_helpers import SPECS

    plan = make_plan(load_spec(SPECS / "smoke_search.yaml", environ={}), lambda declaration, root: "fixed")
    label, variant = next(iter(plan.search.labels.items()))
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    searched = [{"trial_id": "a", "trial_key": "search-a", "config_name": label, "trial_index": 0,
                 "status": "errored", "categorical": dict(variant), "settings": {}, "floats": {"lr": 1e-3},
                 "value": 0.42, "per_epoch": {1: 0.42}}]
    reconcile_optuna_study(storage, "s", plan, searched)
    trial, = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert trial.state == optuna.trial.TrialState.FAIL and trial.value is None
    assert trial.intermediate_values == {1: 0.42}
