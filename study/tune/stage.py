"""One Ray Tune experiment per stage: Ray start-up, the Tuner (built or restored), schedulers, the searcher.

`run_stage` runs the trials of one stage of a plan (a grid of planned trials, or an Optuna
search) in the stage's folder, restoring the experiment that an earlier driver started
there, and returns Tune's results and whether the user interrupted it.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from study.errors import StudyError
from study.folder.events import EventLog
from study.planning.plan import Plan
from study.storage import Storage
from study.tune.callback import StageTotals, StudyProgress, attach
from study.tune.pickle_guard import check_stage_folder, tuner_names
from trainables.trial import StudyContext, trial_dirname

# Tune's automatic loggers (CSV, TensorBoard) stay off: result.json is the record; TensorBoard files are
# written when the study file asks for them (tracking.tensorboard), with hparams (study/tune/tracking.py).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Our progress lines replace Tune's tables; Tune's snapshot warning is about the forced
# state snapshot at each checkpoint, which is what makes resume exact.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


CONNECT_TIMEOUT_VARIABLE = "SEGSTUDY_CONNECT_TIMEOUT"
CONNECT_TIMEOUT_DEFAULT = 15.0


def cluster_address(address: str | None) -> str | None:
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str | None) -> None:
    """A `host:port` (or ray://host:port) cluster answers within $SEGSTUDY_CONNECT_TIMEOUT seconds, or one line.

    Ray's own connection attempts can wait minutes on an address that does not answer; this
    check runs before anything of the study is written.
    """
    address = cluster_address(address)
    if not address or address in ("auto", "local"):
        return
    import socket

    timeout = connect_timeout()
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise StudyError(f"--address {address}: no Ray cluster answers there within {timeout:g} s "
                         f"({error.strerror or error}); is `ray start --head` running? "
                         f"(${CONNECT_TIMEOUT_VARIABLE} sets the wait)") from None


def connect_timeout() -> float:
    text = os.environ.get(CONNECT_TIMEOUT_VARIABLE, str(CONNECT_TIMEOUT_DEFAULT))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise StudyError(f"${CONNECT_TIMEOUT_VARIABLE}={text!r}: expected seconds, more than 0 and at most 3600")
    return value


def init_ray(address: str | None, dashboard: bool = False) -> bool:
    """Join `address` (or RAY_ADDRESS); else start an embedded Ray. True when we started it.

    `dashboard`: start Ray's dashboard with the embedded Ray (check_dashboard first), or name the cluster's, and
    print its URL.

    A failure to start or join is one line (StudyError), whatever Ray raises.
    """
    import ray

    from study import signals

    address = cluster_address(address)
    try:
        if address:
            say(f"connecting to the Ray cluster at {address}")
            context = ray.init(address=address, log_to_driver=False)
            started = False
        else:
            # address="local": never join a stale cluster that `ray start` recorded on this machine.
            context = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                               log_to_driver=False, configure_logging=False)
            started = True
        signals.install()  # Ray's core replaces our SIGTERM handler with one that aborts the process
    except (KeyboardInterrupt, StudyError):
        raise
    except Exception as error:  # Ray raises many types here (ConnectionError, RuntimeError, ValueError, ...)
        what = f"join the Ray cluster at {address}" if address else "start a local Ray"
        text = " ".join(str(error).split())[:300] or type(error).__name__
        raise StudyError(f"cannot {what}: {text}") from None
    if dashboard:
        url = getattr(context, "dashboard_url", None)
        # Ray 2.60 turns on token authentication by default (it sets RAY_AUTH_MODE=token): the page asks for it.
        token = (" (Ray's token authentication is on: the page asks for the token in ~/.ray/auth_token)"
                 if os.environ.get("RAY_AUTH_MODE") == "token" else "")
        say(f"Ray dashboard: http://{url}{token}" if url else
            "the Ray cluster has no dashboard (start it with ray[default] installed and --include-dashboard=true)")
    return started


def check_dashboard(address: str | None) -> None:
    """`study run --dashboard` with an embedded Ray needs ray[default]: say so before anything starts."""
    if cluster_address(address):
        return  # the cluster's dashboard, if it has one
    try:
        import ray.dashboard.optional_deps  # noqa: F401 (what Ray itself imports to decide)
    except ImportError as error:
        raise StudyError(f"--dashboard: Ray's dashboard needs ray[default] (pip install 'ray[default]'); this "
                         f"installation lacks it ({error})") from None


def shutdown_ray() -> None:
    import ray

    ray.shutdown()


def trial_resources(plan: Plan) -> dict:
    """Each trial's share of the cluster; a study that needs a GPU the cluster lacks is refused (one line)."""
    import ray

    cpu, gpu = plan.execution.cpu, plan.execution.gpu
    cluster = ray.cluster_resources()
    if cpu > cluster.get("CPU", 0):
        raise StudyError(f"resources.cpu: each trial asks for {cpu:g} CPUs but the Ray cluster has "
                         f"{cluster.get('CPU', 0):g} in all; no trial could start")
    if gpu and not cluster.get("GPU"):
        cuda = [c for c in plan.configs() if str(c.get("device", "auto")).startswith("cuda")]
        if cuda:
            raise StudyError(f"device: trials ask for device {cuda[0]['device']}, but the Ray cluster has no GPU")
        say(f"the study asks for {gpu} GPU per trial but the cluster has none: running trials on CPU")
        gpu = 0.0
    return {"cpu": cpu, "gpu": gpu}


def default_concurrency(resources: dict) -> int:
    """As many trials as the cluster's CPUs (and GPUs) hold; Tune runs searcher trials one by one otherwise."""
    import ray

    available = ray.cluster_resources()
    limits = [available.get("CPU", 1) // resources["cpu"]]
    if resources["gpu"]:
        limits.append(available.get("GPU", 0) // resources["gpu"])
    return max(1, int(min(limits)))


def stopped_trials(rows: list[dict], stage: str) -> tuple[str, ...]:
    """Trial keys of the stage that the scheduler stopped early, as the study's record (`rows`: StudyResults.rows)
    says. Tune's experiment state is saved periodically: a trial stopped after its last save is RUNNING there,
    and a restore would train it on from its checkpoint against the scheduler's decision."""
    from study.planning.record import TrialState

    return tuple(sorted(row["trial_key"] for row in rows
                        if row["stage"] == stage and row["status"] == TrialState.EARLY_STOPPED.value))


def run_stage(plan: Plan, storage: Storage, name: str, stage: str, trials: list | None, resources: dict,
              encoders: dict, events: EventLog, fresh: bool = False, repair: bool = True):
    """One Tune experiment, restored from its folder when an earlier driver started it (unless `fresh`).

    `trials`: the grid's trial configs ({TrainConfig fields, trial_key, config_name, stage}); None for
    the plan's search. Returns (Tune's results, whether the user interrupted it).
    """
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler

    from study.folder.ledger import LEDGER_FILE
    from study.reading.results import load_results
    from study.tune.adapters import StudyScheduler, StudySearcher
    from study.tune.decisions import prepare_decisions
    from trainables.tune_adapter import train_trial

    search = plan.search if trials is None else None
    experiment, filesystem = tune_location(storage, name, stage)
    restoring = not fresh and tune.Tuner.can_restore(experiment, storage_filesystem=filesystem)
    if restoring:
        for note in check_stage_folder(storage, name, stage):  # Tune unpickles its saved state: nothing unexpected
            say(f"note: {note}")
    # A stage begun by a segstudy that kept no ledger restores with the searcher and scheduler it began with.
    legacy = restoring and f"{StudyScheduler.__module__}.{StudyScheduler.__name__}" not in \
        tuner_names(storage, name, stage)
    concurrency = plan.execution.max_concurrent or default_concurrency(resources)
    results = load_results(storage, name) if restoring or storage.exists(name, LEDGER_FILE) else None
    decisions = prepare_decisions(storage, name, plan, stage, results, concurrency, legacy)
    stopped = set(stopped_trials(results.rows, stage)) if restoring else set()
    stopped |= set(decisions.ledger.stopped if decisions is not None else ())
    if fresh and trials is not None:  # trials run again because their record is missing: they train, even when
        stopped -= {trial["trial_key"] for trial in trials}  # stopped early (then up to that epoch again)
    context = StudyContext(stage_uri=storage.uri(name, stage), base=dict(search.base_config) if search else {},
                           variants=search.labels if search else {}, encoders=encoders, stopped=tuple(sorted(stopped)),
                           datasets={dataset: plan.declaration(dataset).to_dict() for dataset in plan.datasets})
    trainable = tune.with_resources(tune.with_parameters(train_trial, context=context), resources)
    attach(stage, events, StageTotals(trials=search.num_samples if search else len(trials),
                                      epochs=int(search.base_config["epochs"]) if search else None,
                                      concurrency=concurrency))
    if restoring:
        say(f"[{stage}] restoring the experiment at {storage.uri(name, stage)}")
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem)
        grid, interrupted = fit_watched(tuner)
        if repair and not interrupted and restore_lost_checkpoints(grid, storage, stage):
            return run_stage(plan, storage, name, stage, trials, resources, encoders, events, repair=False)
        return grid, interrupted

    execution = plan.execution
    tune_config = dict(
        max_concurrent_trials=concurrency,
        reuse_actors=True,
        scheduler=StudyScheduler(stage) if decisions is not None else FIFOScheduler(),
        trial_dirname_creator=_trial_dirname,
        trial_name_creator=_trial_dirname,
    )
    if search is None:
        param_space = {"trial": tune.grid_search(trials)}
    else:
        param_space = {}
        tune_config.update(search_alg=StudySearcher(stage), num_samples=search.num_samples)
    storage_path, filesystem = tune_location(storage, name)
    run_config = tune.RunConfig(
        name=stage,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=tune.FailureConfig(max_failures=execution.max_failures),
        # The latest checkpoint only: a finished trial's last one holds its final (and best) weights.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[JsonLoggerCallback(), StudyProgress(stage), *stage_trackers(plan, stage, context)],
        verbose=0,
    )
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune.TuneConfig(**tune_config),
                       run_config=run_config)
    return fit_watched(tuner)


def stage_trackers(plan: Plan, stage: str, context: StudyContext) -> list:
    """The study file's trackers (MLflow, W&B, TensorBoard) as Tune callbacks for one stage."""
    if not plan.execution.tracking.any:
        return []
    from study.tune.tracking import TrialFacts, study_id, tracking_callbacks

    facts = TrialFacts(study=plan.study_name, study_id=study_id(plan.study_name, plan.created), stage=stage,
                       context=StudyContext(base=context.base, variants=context.variants))
    return tracking_callbacks(plan.execution.tracking, facts)


LOST_CHECKPOINT = re.compile(
    r"Could not recover from checkpoint as it does not exist on storage anymore\..*?path: (\S+)")


def restore_lost_checkpoints(grid, storage: Storage, stage: str) -> int:
    """Trials that failed to resume because their recorded checkpoint is gone: put their newest one there.

    Tune records a trial's latest checkpoint in the experiment state one asynchronous sync
    after it has deleted the one before (num_to_keep), so a driver killed in between leaves a
    state naming a deleted folder, and Tune fails the restored trial before it runs. The trial's
    newest checkpoint is a later point of the same run: copied under the recorded name, the
    trial continues from it. This matches Tune's error text (Ray has no public signal for it);
    tests/test_faults.py fails if a Ray upgrade rewords it. Returns how many trials were mended.
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
        say(f"[{stage}] {folder.rsplit('/', 1)[-1]}: its recorded checkpoint was already replaced; "
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
    progress output; Tune's resume hint names Tuner.restore, ours `study resume`. What Tune logs with a
    traceback (a failed sync of the experiment state, which the next sync retries: a file Tune renamed while
    it was being copied) is folded into one line.
    """

    QUIET = ("Trial task failed", "Trials did not complete", "Experiment has been interrupted",
             # Tune's timing warnings ("... may be a performance bottleneck. Please consider reporting results
             # less frequently"): a trial reports once per epoch, and a tracker's first result waits for its
             # logging actor (W&B) to start; nothing a study's user can act on.
             "The `", "Processing trial results took")
    LOGGERS = ("ray.tune.tune", "ray.tune.execution.tune_controller", "ray.tune.utils.util",
               "ray.tune.execution.experiment_state")

    def __init__(self):
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Experiment has been interrupted"):
            self.interrupted = True
        if message.startswith(self.QUIET):
            return False
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text = " ".join(str(error).split())[:300]
            record.msg, record.args = f"{record.getMessage().rstrip(': ')}: {type(error).__name__}: {text}", None
            record.exc_info, record.exc_text = None, None
        return True


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


def _trial_dirname(trial) -> str:
    return trial_dirname(trial.config, trial.trial_id)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
