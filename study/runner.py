"""Run a planned study on Ray Tune: one Tune experiment per stage, embedded Ray or a cluster.

Stages: pretraining jobs (each encoder made once per storage, keyed by content
hash) and then the main trials (a grid, or an Optuna search). `run_study` starts a
study, `resume_study` continues one from what its folder holds: the plan written
before any trial started, and Tune's experiment state for each stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from study.errors import StudyError
from study.plan import Plan, PlannedTrial, PretrainJob, SearchPlan, make_plan
from study.spec import StudySpec, load_spec
from study.storage import ARTIFACTS, Storage, split_uri
from trainables.data import SPLITS, dataset_fingerprint, load_split, synth_dataset

ENCODER_FILE = "encoder.pt"
INTERRUPTED_EXIT = 130


# -- entry points -------------------------------------------------------------
def run_study(spec: StudySpec, storage: Storage, name: str | None = None, address: str | None = None) -> int:
    name = name or spec.name
    with study_lock(storage, name):  # first: a study being run is named as such, not as merely existing
        if storage.exists(name, "plan.json"):
            raise StudyError(
                f"a study named {name!r} already exists in {storage.root}: continue it with "
                f"`{resume_command(storage, name)}`, or pick another --name"
            )
        generate_missing_datasets(spec)
        plan = make_plan(spec, dataset_fingerprint, study_name=name)
        build_caches(plan)
        storage.write_text(spec.to_yaml(), name, "spec.yaml")
        storage.write_json(plan_to_json(plan), name, "plan.json")
        _say(f"study {name}: {describe_plan(plan)}; storage {storage.uri(name)}")
        return execute(spec, plan, storage, name, address)


def resume_study(storage: Storage, name: str, address: str | None = None) -> int:
    storage.require_study(name)
    state = storage.read_json(name, "study.json", default={})
    if state.get("state") == "finished" and not check_against_plan(storage, name, quiet=True).incomplete:
        _say(f"study {name} is already finished; nothing to resume (see `study status {name}`)")
        return 0
    with study_lock(storage, name):
        spec = load_stored_spec(storage, name)
        plan = plan_from_json(storage.read_json(name, "plan.json"))
        generate_missing_datasets(spec)
        build_caches(plan)
        _say(f"resuming study {name}: {describe_plan(plan)}")
        return execute(spec, plan, storage, name, address)


def resume_command(storage: Storage, name: str) -> str:
    """What to type to continue the study (a URI's query needs quoting for the shell)."""
    return f"study resume {name} --storage {shlex.quote(storage.root)}"


def load_stored_spec(storage: Storage, name: str) -> StudySpec:
    if storage.is_local:
        return load_spec(storage.path(name, "spec.yaml"))
    with tempfile.TemporaryDirectory() as directory:
        local = Path(directory) / "spec.yaml"
        local.write_text(storage.read_text(name, "spec.yaml"))
        return load_spec(local)


# -- the two stages -----------------------------------------------------------
def execute(spec: StudySpec, plan: Plan, storage: Storage, name: str, address: str | None) -> int:
    history = storage.read_json(name, "study.json", default={}).get("history", [])
    history.append({"started": time.time(), "host": socket.gethostname(), "address": address or "local"})
    storage.write_json({"state": "running", "history": history}, name, "study.json")
    started_ray = init_ray(address)
    try:
        resources = trial_resources(spec)
        encoders, complete = run_pretraining(spec, plan, storage, name, resources)
        if complete:
            complete = run_main(spec, plan, storage, name, resources, encoders)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    history[-1]["ended"] = time.time()
    if not complete:
        storage.write_json({"state": "interrupted", "history": history}, name, "study.json")
        _say(f"study {name} was interrupted; finished trials are kept. Continue it with:\n"
             f"    {resume_command(storage, name)}")
        return INTERRUPTED_EXIT
    storage.write_json({"state": "finished", "history": history}, name, "study.json")
    audit = check_against_plan(storage, name)
    if audit.incomplete:
        storage.write_json({"state": "incomplete", "history": history, "problems": audit.problems()}, name, "study.json")
        _say(f"study {name} is incomplete: `{resume_command(storage, name)}` runs what is missing")
        return 1
    _say(f"study {name} finished. See `study status {name}`, `study report {name}`, `study export {name}`.")
    return 0


def check_against_plan(storage: Storage, name: str, quiet: bool = False):
    """Each planned trial ran exactly once? Prints the outcome by state and anything amiss."""
    from study.audit import audit_study
    from study.results import load_results

    results = load_results(storage, name)
    audit = audit_study(results)
    if quiet:
        return audit
    ran = results.trials[results.trials["trial_id"].notna()]
    for stage in ("pretrain", "main"):
        counts = ran.loc[ran["stage"] == stage, "status"].value_counts()
        if len(counts):
            _say(f"[{stage}] " + ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in counts.items()))
    for _, row in ran[ran["status"] == "errored"].iterrows():
        _say(f"  errored {row['trial_key']} after {row.get('attempts')} attempt(s): {row.get('error')}")
    for _, row in ran[ran["status"] == "diverged"].iterrows():
        _say(f"  diverged {row['trial_key']} at epoch {row.get('diverged_epoch')}")
    for problem in audit.problems():
        _say(f"check against the plan: {problem}")
    return audit


def run_pretraining(spec, plan: Plan, storage: Storage, name: str, resources: dict) -> tuple[dict, bool]:
    from trainables.tune_adapter import encoder_key

    encoders = {}
    missing = []
    for job in plan.pretrain_jobs:
        key = encoder_key(job.source, job.config["arch"], job.config["segformer_stem"])
        encoders[key] = storage.uri(ARTIFACTS, "encoders", job.key, ENCODER_FILE)
        if storage.exists(ARTIFACTS, "encoders", job.key, ENCODER_FILE):
            _say(f"[pretrain] reusing encoder {job.key} for {key}")
        else:
            missing.append(job)
    if not missing:
        return encoders, True
    trials = [{**job.config, "trial_key": job.trial_key, "config_name": f"pretrain_{job.source}", "stage": "pretrain"}
              for job in missing]
    grid, interrupted = run_stage(spec, storage, name, "pretrain", trials, resources, encoders={})
    complete = not interrupted
    by_trial_key = {job.trial_key: job for job in missing}
    for result in grid:
        job = by_trial_key[result.config["trial"]["trial_key"]]
        if result.error is not None:
            raise StudyError(f"pretraining job {job.trial_key} failed: {_last_line(result.error)}; "
                             f"its dependent trials cannot run. Fix the cause and `study resume {name}`.")
        if result.metrics.get("diverged"):
            raise StudyError(f"pretraining job {job.trial_key} diverged (non-finite loss) at epoch "
                             f"{result.metrics.get('epoch')}; lower its lr in `pretraining.{job.source}` and run again")
        if result.checkpoint is None or result.metrics.get("epoch") != job.config["epochs"]:
            complete = False
            continue
        save_encoder_artifact(storage, job, result, name)
    return encoders, complete


def run_main(spec, plan: Plan, storage: Storage, name: str, resources: dict, encoders: dict) -> bool:
    if plan.search is not None:
        interrupted = run_stage(spec, storage, name, "main", None, resources, encoders, search=plan.search)[1]
        complete = not interrupted and count_ended(storage, name, "main") >= plan.search.num_samples
        if complete:
            sync_optuna_study(spec, plan.search, storage, name)
        return complete
    trials = [{**t.config, "trial_key": t.trial_key, "config_name": t.config_name, "stage": "main"}
              for t in plan.trials]
    if run_stage(spec, storage, name, "main", trials, resources, encoders)[1]:
        return False
    # Tune says the stage is done; the plan decides. Trials Tune skipped or forgot run now.
    ended = ended_keys(storage, name, "main")
    missing = [trial for trial in trials if trial["trial_key"] not in ended]
    if missing:
        _say(f"[main] {len(missing)} planned trial(s) have not run to the end although Tune's state says the "
             f"stage is done: {', '.join(t['trial_key'] for t in missing)}; running them now")
        if run_stage(spec, storage, name, "main", missing, resources, encoders, fresh=True)[1]:
            return False
    return True


def count_ended(storage: Storage, name: str, stage: str) -> int:
    """Trials that reached an end state, as our callback recorded them.

    Not Tune's count: after Ctrl-C Tune reports the trials it cut off as terminated.
    """
    from study.progress import ENDED_STATES, trials_file

    states = storage.read_json(name, trials_file(stage), default={})
    return sum(1 for entry in states.values() if entry.get("state") in ENDED_STATES)


def ended_keys(storage: Storage, name: str, stage: str) -> set[str]:
    """Trial keys that ended, by our callback's record, and whose folder still holds their results."""
    from study.progress import ENDED_STATES, trials_file

    states = storage.read_json(name, trials_file(stage), default={})
    return {entry["trial_key"] for entry in states.values()
            if entry.get("state") in ENDED_STATES and storage.exists(name, stage, entry["dir"], "result.json")}


def run_stage(spec, storage: Storage, name: str, stage: str, trials: list | None, resources: dict, encoders: dict,
              search: SearchPlan | None = None, fresh: bool = False, repair: bool = True):
    """One Tune experiment, restored from its folder when an earlier driver started it (unless `fresh`).

    Returns (Tune's results, whether the user interrupted it).
    """
    from ray import tune

    from study.progress import StudyProgress, trials_file
    from trainables.tune_adapter import StudyContext, train_trial

    context = StudyContext(
        base=dict(search.base_config) if search else {},
        variants={variant_label(v): v for v in search.variants} if search else {},
        encoders=encoders,
    )
    trainable = tune.with_resources(tune.with_parameters(train_trial, context=context), resources)
    experiment, filesystem = tune_location(storage, name, stage)
    if not fresh and tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        _say(f"[{stage}] restoring the experiment at {storage.uri(name, stage)}")
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem)
        # The restored run config is the pickled one: point our callback at where the study is now.
        for callback in tuner._local_tuner.get_run_config().callbacks or []:
            if isinstance(callback, StudyProgress):
                callback.states_uri = storage.uri(name, trials_file(stage))
        grid, interrupted = fit_watched(tuner)
        if repair and not interrupted and restore_lost_checkpoints(grid, storage, stage):
            return run_stage(spec, storage, name, stage, trials, resources, encoders, search, repair=False)
        return grid, interrupted

    scheduler = make_scheduler(spec, stage)
    tune_config = dict(
        max_concurrent_trials=spec.max_concurrent or default_concurrency(resources),
        reuse_actors=True,
        scheduler=scheduler,
        trial_dirname_creator=_trial_dirname,
        trial_name_creator=_trial_dirname,
    )
    if search is None:
        param_space = {"trial": tune.grid_search(trials)}
    else:
        param_space = {}
        tune_config.update(search_alg=make_optuna_search(spec, search, storage, name), num_samples=search.num_samples)
    storage_path, filesystem = tune_location(storage, name)
    run_config = tune.RunConfig(
        name=stage,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_miou",
                                                checkpoint_score_order="max"),
        callbacks=[StudyProgress(stage, storage.uri(name, trials_file(stage)))],
        verbose=0,
    )
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune.TuneConfig(**tune_config),
                       run_config=run_config)
    return fit_watched(tuner)


LOST_CHECKPOINT = re.compile(r"Could not recover from checkpoint as it does not exist on storage anymore\..*?path: (\S+)")


def restore_lost_checkpoints(grid, storage: Storage, stage: str) -> int:
    """Trials that failed to resume because their recorded checkpoint is gone: put their newest one there.

    Tune records a trial's latest checkpoint in the experiment state one asynchronous sync
    after it has deleted the one before (num_to_keep), so a driver killed in between leaves a
    state naming a deleted folder, and the restored trial fails every attempt. The trial's
    newest checkpoint is a later point of the same run: copied under the recorded name, the
    trial continues from it. Returns how many trials were mended.
    """
    import pyarrow.fs as pafs

    mended = 0
    for result in grid:
        found = LOST_CHECKPOINT.search(str(result.error or ""))
        if not found:
            continue
        lost = found.group(1)
        folder = lost.rsplit("/", 1)[0]
        kept = sorted(info.path for info in storage.fs.get_file_info(pafs.FileSelector(folder))
                      if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"))
        if not kept:
            continue
        storage.fs.create_dir(lost, recursive=True)
        pafs.copy_files(kept[-1], lost, source_filesystem=storage.fs, destination_filesystem=storage.fs)
        _say(f"[{stage}] {folder.rsplit('/', 1)[-1]}: its recorded checkpoint was already replaced; "
             f"resuming it from its newest one ({kept[-1].rsplit('/', 1)[-1]})")
        mended += 1
    return mended


def tune_location(storage: Storage, *parts: str):
    """(path, filesystem) of a storage folder for Tune's `storage_path`/`storage_filesystem` arguments.

    A URI's options (endpoint_override, scheme, region, ...) live in its filesystem: Tune gets that
    filesystem and the bare path on it, since it would append its folders after the URI's query.
    """
    if storage.is_local:
        return storage.uri(*parts), None
    return storage.path(*parts), storage.fs


class TuneLogWatch(logging.Filter):
    """Drops Tune's log lines that the study says better itself, and notes an interruption.

    A failed trial's traceback is in its folder's error.txt and its last line in our
    progress output; Tune's resume hint names Tuner.restore, ours `study resume`.
    """

    QUIET = ("Trial task failed", "Trials did not complete", "Experiment has been interrupted")
    LOGGERS = ("ray.tune.tune", "ray.tune.execution.tune_controller")

    def __init__(self):
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Experiment has been interrupted"):
            self.interrupted = True
        return not message.startswith(self.QUIET)


def fit_watched(tuner):
    watch = TuneLogWatch()
    loggers = [logging.getLogger(name) for name in TuneLogWatch.LOGGERS]
    for logger in loggers:
        logger.addFilter(watch)
    try:
        grid = tuner.fit()
    finally:
        for logger in loggers:
            logger.removeFilter(watch)
    return grid, watch.interrupted


def make_scheduler(spec, stage: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    settings = spec.scheduler
    if stage == "pretrain" or settings.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", metric=settings.metric, mode=settings.mode,
                         grace_period=settings.grace_period, reduction_factor=settings.reduction_factor,
                         max_t=int(spec.train_settings.get("epochs", 30)))


def make_optuna_search(spec, search: SearchPlan, storage: Storage, name: str):
    import optuna

    from study.searcher import StudyOptunaSearch

    url = optuna_storage_url(search, storage, name)
    return StudyOptunaSearch(
        space=variant_space(search), metric=spec.scheduler.metric, mode=spec.scheduler.mode,
        sampler=optuna.samplers.TPESampler(seed=search.seed),
        study_name=name, storage=optuna.storages.RDBStorage(url) if url else None,
    )


def optuna_storage_url(search: SearchPlan, storage: Storage, name: str) -> str | None:
    """The study file's Optuna storage, else an SQLite file in a local study folder (else in memory)."""
    if search.storage is None and storage.is_local:
        return f"sqlite:///{storage.path(name, 'optuna.db')}"
    return search.storage


def variant_space(search: SearchPlan):
    from study.searcher import VariantSpace

    return VariantSpace(tuple(variant_label(v) for v in search.variants), tuple(search.float_dims.items()))


def sync_optuna_study(spec, search: SearchPlan, storage: Storage, name: str) -> None:
    """After the sweep: each Tune trial once in the Optuna study, with its final state and value."""
    import optuna

    from study.progress import ENDED_STATES
    from study.results import load_results
    from study.searcher import reconcile_optuna_study

    url = optuna_storage_url(search, storage, name)
    if url is None:
        return
    trials = load_results(storage, name).trials
    ended = trials[(trials["stage"] == "main") & trials["status"].isin(ENDED_STATES)]
    tune_trials = []
    for _, row in ended.iterrows():
        directory = split_uri(row["path"])[0].rstrip("/").rsplit("/", 1)[-1]
        first = json.loads(storage.read_text(name, "main", directory, "result.json").splitlines()[0])
        tune_trials.append({"trial_id": row["trial_id"], "config": first["config"], "status": row["status"],
                            "value": row.get(f"final_{spec.scheduler.metric}")})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    outcome = reconcile_optuna_study(optuna.storages.RDBStorage(url), name, variant_space(search),
                                     spec.scheduler.metric, spec.scheduler.mode, tune_trials)
    _say(f"[optuna] {outcome}")


def variant_label(variant: dict) -> str:
    return "/".join(f"{key}={variant[key]}" for key in sorted(variant))


# -- Ray and resources ----------------------------------------------------------
def init_ray(address: str | None) -> bool:
    """Join `address` (or RAY_ADDRESS); else start an embedded Ray. True when we started it."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    # Our progress lines replace Tune's tables; Tune's snapshot warning is about the forced
    # state snapshot at each checkpoint, which is what makes resume exact.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        _say(f"connecting to the Ray cluster at {address}")
        ray.init(address=address, log_to_driver=False)
        return False
    # address="local": never join a stale cluster that `ray start` recorded on this machine.
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def default_concurrency(resources: dict) -> int:
    """As many trials as the cluster's CPUs (and GPUs) hold; Tune runs searcher trials one by one otherwise."""
    import ray

    available = ray.cluster_resources()
    limits = [available.get("CPU", 1) // resources["cpu"]]
    if resources["gpu"]:
        limits.append(available.get("GPU", 0) // resources["gpu"])
    return max(1, int(min(limits)))


def trial_resources(spec) -> dict:
    import ray

    cpu = float(spec.resources.cpu)
    gpu = float(spec.resources.gpu)
    if gpu and not ray.cluster_resources().get("GPU"):
        _say(f"the study asks for {gpu} GPU per trial but the cluster has none: running trials on CPU")
        gpu = 0.0
    return {"cpu": cpu, "gpu": gpu}


# -- datasets ---------------------------------------------------------------------
def generate_missing_datasets(spec: StudySpec) -> None:
    """Create the synthetic datasets a study declares, when their folder is missing or empty.

    A dataset without `generate` is never replaced by generated data.
    """
    for dataset in spec.used_datasets():
        root = Path(spec.dataset_root(dataset))
        generate = spec.generated(dataset)
        if generate is not None and not (root.is_dir() and any(root.iterdir())):
            _say(f"generating the synthetic {dataset} dataset in {root} "
                 f"({generate['train']} train, {generate['val']} val images)")
            synth_dataset(dataset, root, train=generate["train"], val=generate["val"], seed=generate.get("seed", 0))


def build_caches(plan: Plan) -> None:
    """Build each split's preprocessed cache once, on the driver, before Ray starts.

    Bad data fails fast with the dataset's own message, and trials on this node
    find their caches ready instead of building them side by side.
    """
    configs = [job.config for job in plan.pretrain_jobs] + [trial.config for trial in plan.trials]
    if plan.search is not None:
        configs.append(plan.search.base_config)
    needs = set()
    for config in configs:
        train_split, val_split = SPLITS[config["dataset"]]
        common = (config["dataset"], config["data_root"], tuple(config["image_size"]), config.get("cache_dir"))
        needs.add((*common, train_split, config.get("max_train_samples")))
        needs.add((*common, val_split, config.get("max_val_samples")))
    for dataset, root, image_size, cache_dir, split, max_samples in sorted(needs, key=str):
        load_split(dataset, root, split, image_size, cache_dir, max_samples=max_samples)


# -- the study lock -------------------------------------------------------------
LOCAL_LOCK, OBJECT_LOCK = "driver.lock", "lock"


@contextmanager
def study_lock(storage: Storage, name: str):
    """One driver per study: a second `run` or `resume` of it refuses, naming the first.

    On a filesystem, an flock held while the driver lives: the kernel frees it when the
    process ends, however it ends, and two drivers started at once cannot both take it.
    An object store has no locks: a lock object names the driver, and is taken over once
    that process is gone (when it was on this machine; another machine's is respected).
    """
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    if storage.is_local:
        with _file_lock(Path(storage.path(name, LOCAL_LOCK)), name, me):
            yield
        return
    owner = storage.read_json(name, OBJECT_LOCK, default=None)
    if owner and _lock_alive(owner):
        raise StudyError(_locked(name, owner))
    storage.write_json(me, name, OBJECT_LOCK)
    try:
        yield
    finally:
        if storage.read_json(name, OBJECT_LOCK, default=None) == json.loads(json.dumps(me)):
            storage.fs.delete_file(storage.path(name, OBJECT_LOCK))


@contextmanager
def _file_lock(path: Path, name: str, me: dict):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    # Never deleted: removing a lock file lets a late opener lock the old inode beside a new one.
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(_locked(name, _lock_owner(path))) from None
        handle.truncate(0)
        handle.write(json.dumps(me))
        handle.flush()
        yield  # closing the file releases the lock


def _lock_owner(path: Path) -> dict:
    """The lock holder's record; it writes it just after taking the lock, so wait a moment for it."""
    deadline = time.time() + 2
    while True:
        try:
            return json.loads(path.read_text())
        except ValueError:
            if time.time() > deadline:
                return {}
            time.sleep(0.05)


def _locked(name: str, owner: dict) -> str:
    who = f"process {owner['pid']} on {owner['host']} (since {time.ctime(owner['since'])})" if owner else \
        "another process"
    return f"study {name!r} is already being run by {who}; wait for it, or stop it and then `study resume {name}`"


def _lock_alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine: we cannot tell, so respect it
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- plan (de)serialisation and helpers ----------------------------------------
def plan_to_json(plan: Plan) -> dict:
    return dataclasses.asdict(plan)


def plan_from_json(data: dict) -> Plan:
    search = data.get("search")
    return Plan(
        study_name=data["study_name"],
        pretrain_jobs=[PretrainJob(**job) for job in data["pretrain_jobs"]],
        trials=[PlannedTrial(**trial) for trial in data["trials"]],
        search=SearchPlan(**{**search, "float_dims": {k: tuple(v) for k, v in search["float_dims"].items()}})
        if search else None,
        dropped=list(data.get("dropped", [])),
    )


def describe_plan(plan: Plan) -> str:
    main = f"{len(plan.trials)} trials" if plan.search is None else f"an Optuna search of {plan.search.num_samples} trials"
    return f"{len(plan.pretrain_jobs)} pretraining job(s), then {main}"


def save_encoder_artifact(storage: Storage, job: PretrainJob, result, study_name: str) -> None:
    folder = (ARTIFACTS, "encoders", job.key)
    with result.checkpoint.as_directory() as directory:
        storage.upload(Path(directory) / ENCODER_FILE, *folder, ENCODER_FILE)
    records = result.metrics_dataframe.to_dict(orient="records") if result.metrics_dataframe is not None else []
    storage.write_json({"job": dataclasses.asdict(job), "trial_key": job.trial_key, "made_by_study": study_name, "trial_id": result.metrics.get("trial_id"),
                        "epochs": records}, *folder, "job.json")
    _say(f"[pretrain] saved encoder {job.key} for {job.trial_key}")


def _trial_dirname(trial) -> str:
    config = trial.config
    if "trial" in config:
        return config["trial"]["trial_key"]
    return f"search-{trial.trial_id}"


def _last_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
