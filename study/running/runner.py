"""Run a study's plan, and resume it: the stages in order, then the study's check against its plan.

`run_study` validates nothing itself: the study file was validated into a StudySpec, which it
expands into a Plan, writes (plan.json, spec.yaml) and runs. `resume_study` continues the plan
from what the study's folder holds, rebuilding plan.json from spec.yaml when it is gone. Only
study/tune/ touches Ray; this module decides what runs.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time

from study.errors import StudyError
from study.folder.events import EventLog
from study.folder.files import read_plan, read_study_file, spec_copy_notes, write_study_file
from study.folder.lock import study_lock
from study.names import check_name
from study.planning.plan import (
    PLAN_FILE,
    SPEC_FILE,
    Plan,
    PlanError,
    PretrainJob,
    datasets_of,
    make_plan,
    plan_tracking,
)
from study.planning.record import ENDED, Stage, StudyState, TrialState
from study.planning.spec import StudySpec, loads
from study.reading.audit import Audit, audit_study
from study.reading.results import StudyResults, load_results
from study.running.datasets import build_caches, check_datasets, generate_missing_datasets
from study.running.models import check_factory_models
from study.running.weights import weights_artifacts
from study.storage import ARTIFACTS, Storage, read_text_at
from trainables.checkpoint import ENCODER_FILE, FINAL_WEIGHTS, STATE_FILE, TRIAL_FILE, parse_trial_json
from trainables.data import dataset_fingerprint
from trainables.trial import encoder_key, join_uri

INTERRUPTED_EXIT = 130


# -- entry points -------------------------------------------------------------
def run_study(spec: StudySpec, storage: Storage, name: str | None = None, address: str | None = None,
              dashboard: bool = False) -> int:
    from study.tune.stage import check_reachable

    name = check_name(spec.name if name is None else name, "--name")
    check_reachable(address)  # before anything of the study is written
    plan_devices = [c.get("device", "auto") for c in [*(cfg.config for cfg in spec.configurations),
                                                      *(job.config for job in spec.pretraining)]]
    check_devices(plan_devices + [spec.search_base_config().get("device", "auto")], address)
    with study_lock(storage, name):  # first: a study being run is named as such, not as merely existing
        if storage.is_study(name):
            raise StudyError(f"a study named {name!r} already exists in {storage.root}: continue it with "
                             f"`{resume_command(storage, name)}`, or pick another --name")
        tracking = preflight(plan_tracking(spec.tracking, name), spec.source_path, address, dashboard)
        generate_missing_datasets(datasets_of(spec))
        plan = make_plan(spec, dataset_fingerprint, study_name=name)
        check_datasets(plan, say)  # every problem of the masks named before Ray starts
        build_caches(plan)
        check_factory_models(plan)
        weights = weights_artifacts(plan, storage, say)  # a missing weights file is named before anything is written
        storage.write_text(plan.spec_yaml, name, SPEC_FILE)
        storage.write_text(plan.to_json(), name, PLAN_FILE)
        say(f"study {name}: {plan.describe()}; storage {storage.uri(name)}")
        if tracking:
            say(tracking)
        return execute(plan, storage, name, address, dashboard, weights)


def resume_study(storage: Storage, name: str, address: str | None = None, dashboard: bool = False) -> int:
    from study.tune.stage import check_reachable
    storage.require_study(name)
    check_reachable(address)
    with study_lock(storage, name):
        plan = plan_for_resume(storage, name)
        results = load_results(storage, name)
        for note in results.notes:
            say(f"note: {note}")
        if audit_study(plan, results.rows).complete:
            _, history = _study_history(storage, name)
            write_study_file(storage, name, StudyState.FINISHED, history)
            if plan.search is not None:  # a driver killed while it rebuilt the Optuna study left it part-built
                from study.tune.optuna_record import sync_optuna_study

                sync_optuna_study(plan, storage, name, results.trials, results.epochs)
            say(f"study {name} is already finished; nothing to resume (see `study status {name}`)")
            return 0
        tracking = preflight(plan.execution.tracking, storage.uri(name, SPEC_FILE), address, dashboard)
        generate_missing_datasets(plan.datasets)
        check_datasets(plan, say)  # every problem of the masks named before Ray starts
        build_caches(plan)
        check_factory_models(plan)
        weights = weights_artifacts(plan, storage, say)
        say(f"resuming study {name}: {plan.describe()}")
        if tracking:
            say(tracking)
        return execute(plan, storage, name, address, dashboard, weights)


def preflight(tracking, where: str, address: str | None, dashboard: bool) -> str | None:
    """What must work before Ray starts: the trackers the study file names, the dashboard it asks for.
    Returns the line saying where trials are tracked (None: nowhere)."""
    if dashboard:
        from study.tune.stage import check_dashboard

        check_dashboard(address)
    if not tracking.any:
        return None
    from study.tune.tracking import check_tracking  # imports Ray's logger callbacks: only when needed

    return check_tracking(tracking, where)


def plan_for_resume(storage: Storage, name: str) -> Plan:
    """The study's plan; rebuilt from spec.yaml when plan.json is missing or damaged (and said so)."""
    try:
        plan = read_plan(storage, name)
    except PlanError as error:
        if not storage.exists(name, SPEC_FILE):
            raise StudyError(f"{error}; but {storage.uri(name, SPEC_FILE)} is missing too: the study cannot be "
                             f"rebuilt") from None
        spec = loads(storage.read_text(name, SPEC_FILE), storage.uri(name, SPEC_FILE))
        generate_missing_datasets(datasets_of(spec))
        plan = make_plan(spec, dataset_fingerprint, study_name=name)
        storage.write_text(plan.to_json(), name, PLAN_FILE)
        say(f"note: {str(error).split('; `study resume')[0]}; rebuilt it from {SPEC_FILE}")
        return plan
    for note in spec_copy_notes(storage, name, plan):
        say(f"note: {note}")
    if not storage.exists(name, SPEC_FILE):
        storage.write_text(plan.spec_yaml, name, SPEC_FILE)  # put the copy back
    return plan


def check_devices(devices: list[str], address: str | None) -> None:
    """On this machine (no cluster), a CUDA device a trial asks for must exist: refused before Ray otherwise."""
    from study.tune.stage import cluster_address

    wanted = sorted({d for d in devices if str(d).startswith("cuda")})
    if not wanted or cluster_address(address):
        return  # nothing asked, or the trials run on the cluster's nodes, checked once it is joined
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in wanted:
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise StudyError(f"device: trials ask for {device}, but this machine has {count} CUDA device(s); "
                             f"use device auto or cpu, or run on a cluster with GPUs (--address)")


def resume_command(storage: Storage, name: str) -> str:
    """What to type to continue the study (a URI's query needs quoting for the shell)."""
    return f"study resume {name} --storage {shlex.quote(storage.root)}"


# -- the two stages -----------------------------------------------------------
def execute(plan: Plan, storage: Storage, name: str, address: str | None, dashboard: bool = False,
            weights: dict | None = None) -> int:
    """Run the plan's stages; `weights`: {weights_key: the storage's copy} of the built-in and file weights."""
    from study.tune.stage import init_ray, shutdown_ray, trial_resources

    _, history = _study_history(storage, name)
    started_ray = init_ray(address, dashboard)  # first: a study whose cluster cannot be reached is never "running"
    history.append({"started": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
                    "address": address or "local"})
    write_study_file(storage, name, StudyState.RUNNING, history)
    events = EventLog(storage, name)
    complete = False
    try:
        try:
            resources = trial_resources(plan)
            encoders, complete = run_pretraining(plan, storage, name, resources, events, weights or {})
            if complete:
                complete = run_main(plan, storage, name, resources, encoders, events)
        finally:
            events.flush()
            if started_ray:
                shutdown_ray()
    finally:  # also when an error or a second signal ends the run early
        history[-1]["ended"] = time.time()
        if not complete:
            write_study_file(storage, name, StudyState.INTERRUPTED, history)
            say(f"study {name} was interrupted; finished trials are kept. Continue it with:\n"
                f"    {resume_command(storage, name)}")
    if not complete:
        return INTERRUPTED_EXIT
    results, audit = check_against_plan(storage, name)
    if not audit.complete:
        write_study_file(storage, name, StudyState.INCOMPLETE, history, problems=audit.problems())
        say(f"study {name} is incomplete: `{resume_command(storage, name)}` runs what is missing")
        return 1
    write_study_file(storage, name, StudyState.FINISHED, history)
    say(f"study {name} finished. See `study status {name}`, `study report {name}`, `study export {name}`.")
    return 0


def check_against_plan(storage: Storage, name: str) -> tuple[StudyResults, Audit]:
    """Each planned trial ended exactly once? Prints the outcome by state and anything amiss."""
    results = load_results(storage, name)
    audit = audit_study(results.plan, results.rows)
    ran = results.trials[results.trials["trial_id"].notna()]
    for stage in (Stage.PRETRAIN.value, Stage.MAIN.value):
        counts = ran.loc[ran["stage"] == stage, "status"].value_counts()
        if len(counts):
            say(f"[{stage}] " + ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in counts.items()))
    for row in ran[ran["status"] == "errored"].to_dict("records"):
        say(f"  errored {row['trial_key']} after {row['attempts']} attempt(s): {row['error']}")
    for row in ran[ran["status"] == "diverged"].to_dict("records"):
        say(f"  diverged {row['trial_key']} at epoch {row['diverged_epoch']}")
    for note in results.notes:
        say(f"note: {note}")
    for problem in audit.problems():
        say(f"check against the plan: {problem}")
    return results, audit


def run_pretraining(plan: Plan, storage: Storage, name: str, resources: dict, events: EventLog,
                    weights: dict) -> tuple[dict, bool]:
    """Each pretraining job's encoder, made where the storage's encoder store lacks it; (every weights file a main
    trial reads: the encoders and `weights`, complete)."""
    from study.tune.stage import run_stage

    encoders, missing = dict(weights), []
    for job in plan.pretrain_jobs:
        key = encoder_key(job.source, job.config)
        encoders[key] = storage.uri(ARTIFACTS, "encoders", job.key, ENCODER_FILE)
        if storage.exists(ARTIFACTS, "encoders", job.key, ENCODER_FILE):
            say(f"[pretrain] reusing encoder {job.key} for {key}")
        else:
            missing.append(job)
    if not missing:
        return encoders, True
    trials = [{**job.config, "trial_key": job.trial_key, "config_name": f"pretrain_{job.source}", "stage": "pretrain"}
              for job in missing]
    grid, interrupted = run_stage(plan, storage, name, "pretrain", trials, resources, weights, events)
    if interrupted:
        return encoders, False
    for result in grid:
        if result.error is not None:
            key = result.config.get("trial", {}).get("trial_key", "?")
            raise StudyError(f"pretraining job {key} failed: {_last_line(result.error)}; its dependent trials "
                             f"cannot run. Fix the cause and `study resume {name}`.")
    # The record (the trial folders) says which jobs ended, and where their final checkpoints are.
    results = load_results(storage, name)
    finalize_ended_trials(storage, results)
    rows = results.trials.set_index("trial_key")
    complete = True
    for job in missing:
        row = rows.loc[job.trial_key] if job.trial_key in rows.index else None
        if row is not None and row["status"] == TrialState.DIVERGED.value:
            raise StudyError(f"pretraining job {job.trial_key} diverged (non-finite loss) at epoch "
                             f"{row['diverged_epoch']}; lower its lr in `pretraining.{job.source}` and run again")
        if row is None or row["status"] != TrialState.FINISHED.value or not row["checkpoint"]:
            complete = False
            continue
        save_encoder_artifact(storage, job, row["checkpoint"], name)
    return encoders, complete


def run_main(plan: Plan, storage: Storage, name: str, resources: dict, encoders: dict, events: EventLog) -> bool:
    from study.tune.optuna_record import sync_optuna_study
    from study.tune.stage import run_stage

    if plan.search is not None:
        from study.tune.decisions import lost_proposals

        if run_stage(plan, storage, name, "main", None, resources, encoders, events)[1]:
            return False
        results = load_results(storage, name)
        lost = lost_proposals(plan, storage, name, results.rows)
        if lost:
            say(f"[main] {len(lost)} proposal(s) the search decided on have no readable record (a checkpoint cut "
                f"short by a kill): {', '.join(t['trial_key'] for t in lost)}; training them again as proposed")
            if run_stage(plan, storage, name, "main", lost, resources, encoders, events, fresh=True)[1]:
                return False
            results = load_results(storage, name)
        finalize_ended_trials(storage, results)
        audit = audit_study(plan, results.rows)
        if audit.complete:
            sync_optuna_study(plan, storage, name, results.trials, results.epochs)
        return audit.complete
    trials = [{**t.config, "trial_key": t.trial_key, "config_name": t.config_name, "stage": "main"}
              for t in plan.trials]
    if run_stage(plan, storage, name, "main", trials, resources, encoders, events)[1]:
        return False
    finalize_ended_trials(storage, load_results(storage, name))
    # Tune says the stage is done; the plan and the record decide. Trials Tune skipped or forgot
    # run now, each from the newest checkpoint its folder holds (if any).
    results = load_results(storage, name)
    ended = set(results.trials.loc[results.trials["status"].isin([s.value for s in ENDED])
                                   & (results.trials["stage"] == "main"), "trial_key"])
    missing = [trial for trial in trials if trial["trial_key"] not in ended]
    if missing:
        say(f"[main] {len(missing)} planned trial(s) have not run to the end although Tune's state says the "
            f"stage is done: {', '.join(t['trial_key'] for t in missing)}; running them now")
        if run_stage(plan, storage, name, "main", missing, resources, encoders, events, fresh=True)[1]:
            return False
    return True


SLIMMED = {state.value for state in ENDED if state != TrialState.ERRORED}  # an errored trial may be retried


def finalize_ended_trials(storage: Storage, results: StudyResults) -> None:
    """Ended trials keep weights, not a full training state (no optimizer), in their last checkpoint only.

    Trials the scheduler stopped early have their last checkpoint rewritten (on an object store, through a
    local copy), as is any ended trial's whose finalisation a killed driver cut off. Older checkpoints are
    deleted: Tune deletes one only once it has registered the next, and a trial that ended while its driver
    was being killed never gets that far."""
    import tempfile

    import pyarrow.fs as pafs

    from study.storage import open_uri
    from trainables.checkpoint import checkpoint_folders, checkpoint_index, finalize

    for row in results.rows:
        if row["status"] not in SLIMMED or not row.get("checkpoint"):
            continue
        filesystem, path = open_uri(row["checkpoint"])
        path = path.rstrip("/")
        if filesystem.get_file_info(f"{path}/{STATE_FILE}").type != pafs.FileType.NotFound:
            if storage.is_local:
                finalize(path)
            else:
                here = pafs.LocalFileSystem()
                with tempfile.TemporaryDirectory() as local:
                    pafs.copy_files(path, local, source_filesystem=filesystem, destination_filesystem=here)
                    if finalize(local):
                        pafs.copy_files(local, path, source_filesystem=here, destination_filesystem=filesystem)
                        filesystem.delete_file(f"{path}/{STATE_FILE}")
        if not _whole_final_checkpoint(filesystem, path):
            continue  # a cut-off upload, say: the older checkpoints stay
        trial_folder, last = path.rsplit("/", 1)
        for older in checkpoint_folders(filesystem, trial_folder):
            if checkpoint_index(older.rsplit("/", 1)[-1]) < checkpoint_index(last):
                filesystem.delete_dir(older)


def _whole_final_checkpoint(filesystem, path: str) -> bool:
    """Its trial file says final and its weights are there (written under a temporary name, then renamed)."""
    import pyarrow.fs as pafs

    from trainables.checkpoint import FINAL, read_trial_file

    content = read_trial_file(filesystem, path)
    return content is not None and content.get("kind") == FINAL and \
        filesystem.get_file_info(f"{path}/{FINAL_WEIGHTS}").type == pafs.FileType.File


def save_encoder_artifact(storage: Storage, job: PretrainJob, checkpoint: str, study_name: str) -> None:
    """The job's encoder and its epochs, from its final checkpoint, into the storage's shared encoder store."""
    folder = (ARTIFACTS, "encoders", job.key)
    saved = parse_trial_json(read_text_at(join_uri(checkpoint, TRIAL_FILE)), join_uri(checkpoint, TRIAL_FILE))
    storage.copy_in(join_uri(checkpoint, ENCODER_FILE), *folder, ENCODER_FILE)
    storage.write_json({"job": {"source": job.source, "key": job.key, "config": job.config},
                        "trial_key": job.trial_key, "made_by_study": study_name, "records": saved["records"]},
                       *folder, "job.json")
    say(f"[pretrain] saved encoder {job.key} for {job.trial_key}")


def _study_history(storage: Storage, name: str) -> tuple[dict, list]:
    content, notes = read_study_file(storage, name)
    for note in notes:
        say(f"note: {note}")
    return content, list(content.get("history", []))


def _last_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
