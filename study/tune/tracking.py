"""Trials in MLflow, Weights & Biases and TensorBoard, from the study file's `tracking:` section.

Ray Tune's own logger callbacks do the logging (MLflowLoggerCallback, WandbLoggerCallback,
TBXLoggerCallback), each subclassed only where the stock callback cannot do what a study needs:

- one run per trial (pretraining jobs too), named by its trial key, tagged with the study, its
  stage and configuration; params/config = the trial's typed settings (TrainConfig), not Tune's
  raw config ({"trial": {...}} or {"variant": ..., "lr": ...});
- metrics per epoch, step = epoch: the epoch's record (trainables/records.py: losses, mIoU,
  per-class IoU, lr, images/s); validation metrics on validated epochs only (between
  validations a trial reports the last validated values to Tune, for ASHA);
- a resumed trial continues its run: the stock MLflow callback opens a new run per driver (its
  run ids live in the driver's memory), so ours finds the trial's run by its tags; W&B gets a run
  id derived from the study and trial key with resume="allow"; TensorBoard writes a new event
  file in the same run folder. Epochs that a resumed trial trains again (from a checkpoint
  older than its last report) are not logged twice, and epochs that a killed driver never saw
  (the trial trained on until the kill) are logged from the trial's newest checkpoint;
- TensorBoard: hparams as session start/end summaries only, so TensorBoard's HParams tab builds
  one experiment from all trials (the stock callback writes an experiment summary per trial,
  and TensorBoard then takes one trial's values as the whole domain).

A tracker that fails while the study runs says so in one line and the study goes on: the
study's record is the trial folders, not the trackers. tests/test_tune_layer.py fails loudly
when a Ray upgrade changes what these subclasses rely on.

Tune pickles callbacks into the experiment (tuner.pkl) and `study resume` unpickles them, so
each keeps only its settings in its pickled state (`__getstate__`), as StudyProgress does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import netrc
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.logger import TBXLoggerCallback

from study.errors import StudyError
from study.planning.spec import TrackingSpec
from study.tune.callback import trial_ended_state
from study.tune.trial_files import local_trial_folder, saved_records
from trainables.records import FIELDS as RECORD_FIELDS
from trainables.records import VAL_PREFIX
from trainables.trial import StudyContext, resolve_trial

# MLflow's client prints each ended run's URL to stdout; the study names the server once when it starts.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

INSTALL = "pip install 'segstudy[tracking]'"
# What each tracker imports, and the package that brings it.
PACKAGES = {"mlflow": ("mlflow", "mlflow-skinny"), "wandb": ("wandb", "wandb"), "tensorboard": ("tensorboardX",
                                                                                               "tensorboardX")}
# The epoch record's numbers, logged per epoch (validated / diverged are flags, not metrics).
RECORD_NUMBERS = tuple(name for name in RECORD_FIELDS if name not in ("validated", "diverged", "val_iou"))
IOU_PREFIX = "val_iou_"
WANDB_DEFAULT_URL = "https://api.wandb.ai"
TIMEOUT_S = 5.0


# -- before Ray starts ----------------------------------------------------------------
def check_tracking(tracking: TrackingSpec, where: str) -> str | None:
    """Each tracker's package is installed and its server answers; a StudyError naming the key otherwise.

    `tracking`: the plan's (defaults filled in); `where` names the study file in messages. Returns a line saying
    where the trials are tracked (None: nowhere).
    """
    if not tracking.any:
        return None
    for key, wanted in (("mlflow", tracking.mlflow), ("wandb", tracking.wandb), ("tensorboard", tracking.tensorboard)):
        module, package = PACKAGES[key]
        if wanted and not _importable(module):
            raise StudyError(f"{where}: tracking.{key}: the {package} package is not installed; {INSTALL}")
    said = []
    if tracking.mlflow is not None:
        uri = tracking.mlflow.tracking_uri
        _check_mlflow(uri, where)
        said.append(f"MLflow at {uri}, experiment {tracking.mlflow.experiment}")
    if tracking.wandb is not None:
        if tracking.wandb.mode == "online":
            _check_wandb_online(where)
        said.append(f"W&B {tracking.wandb.mode}, project {tracking.wandb.project}")
    if tracking.tensorboard:
        said.append("TensorBoard event files in each trial's folder")
    return "tracking: " + "; ".join(said)


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _check_mlflow(uri: str, where: str) -> None:
    scheme = uri.partition(":")[0]
    if scheme in ("http", "https"):
        probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            urllib.request.urlopen(probe, timeout=TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return  # it answers (perhaps asking for credentials, which MLflow's own variables give)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise StudyError(f"{where}: tracking.mlflow.tracking_uri: no MLflow tracking server answers at {uri} "
                             f"({reason}); start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`) or fix the "
                             f"URI") from None
    elif scheme == "sqlite":
        folder = os.path.dirname(uri[len("sqlite:///"):]) or "."
        if not os.path.isdir(folder):
            raise StudyError(f"{where}: tracking.mlflow.tracking_uri: the folder of the database {uri} does not "
                             f"exist: {folder}")


def _check_wandb_online(where: str) -> None:
    base = os.environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_URL
    host = urllib.parse.urlparse(base).hostname or ""
    keyed = any(os.environ.get(v) for v in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_SETUP_API_KEY_HOOK"))
    if not keyed:
        try:
            keyed = netrc.netrc().authenticators(host) is not None
        except (OSError, netrc.NetrcParseError):
            keyed = False
    if not keyed:
        raise StudyError(f"{where}: tracking.wandb: online mode needs a W&B login (`wandb login`, or WANDB_API_KEY); "
                         f"or set tracking.wandb.mode: offline")
    parsed = urllib.parse.urlparse(base)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=TIMEOUT_S).close()
    except OSError as error:
        raise StudyError(f"{where}: tracking.wandb: the W&B server at {base} does not answer ({error}); "
                         f"or set tracking.wandb.mode: offline") from None


# -- what every tracker says about a trial --------------------------------------------
@dataclass(frozen=True)
class TrialFacts:
    """Who a trial is and what to log of it, the same for every tracker."""

    study: str
    study_id: str  # tells this study from another of the same name (a run found again must be this study's)
    stage: str
    context: StudyContext  # the searcher's base settings and variants (no paths: the folder may move)

    def describe(self, trial) -> tuple[dict, dict]:
        """(identity: trial_key, config_name, stage; the typed settings, TrainConfig.to_dict())."""
        identity, settings = resolve_trial(trial.config, self.context, trial.trial_id)
        identity["stage"] = identity.get("stage") or self.stage
        return identity, settings.to_dict()

    def tags(self, identity: dict) -> dict:
        return {"study": self.study, "stage": identity["stage"], "config_name": identity["config_name"],
                "trial_key": identity["trial_key"], "segstudy.study_id": self.study_id}

    def run_id(self, identity: dict) -> str:
        """A W&B run id per study and trial: the same after a resume, whatever id Tune gives the trial."""
        return hashlib.sha256(f"{self.study_id}|{identity['stage']}|{identity['trial_key']}".encode()).hexdigest()[:24]


def study_id(study_name: str, created: float) -> str:
    return hashlib.sha256(f"{study_name}|{created!r}".encode()).hexdigest()[:12]


def epoch_metrics(result: dict) -> dict[str, float]:
    """The epoch's record as numbers; validation metrics only on a validated epoch, non-finite values left out."""
    validated = bool(result.get("validated"))
    metrics = {}
    for key, value in result.items():
        if key not in RECORD_NUMBERS and not key.startswith(IOU_PREFIX):
            continue
        if key.startswith(VAL_PREFIX) and not validated:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        metrics[key] = float(value)
    return metrics


def result_epoch(result: dict) -> int | None:
    epoch = result.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def epochs_to_log(trial, result: dict, logged: int) -> list[tuple[int, dict]]:
    """(epoch, metrics) to log for a result, after the `logged` epochs the tracker's run already holds.

    Nothing for an epoch logged already (a resumed trial trains again from a checkpoint older than its last
    report). Epochs missing before this one are taken from the trial's newest checkpoint: a driver killed
    while the trial trained on never saw them (the study's record takes them from there too), and a tracker
    starting afresh in a new driver (W&B, TensorBoard) logs the whole history again.
    """
    epoch = result_epoch(result)
    if epoch is None or epoch <= logged:
        return []
    earlier = [r for r in saved_records(trial) if logged < r["epoch"] < epoch] if epoch > logged + 1 else []
    return [(record["epoch"], epoch_metrics(record)) for record in earlier] + [(epoch, epoch_metrics(result))]


class _Guard:
    """A tracker failure is one line on stderr (once per tracker and kind), never the end of the study."""

    def __init__(self, name: str):
        self.name = name
        self.said: set[str] = set()

    @contextmanager
    def __call__(self, what: str):
        try:
            yield
        except Exception as error:  # noqa: BLE001 (any tracker failure: the study goes on)
            if what not in self.said:
                self.said.add(what)
                text = str(error).strip().splitlines()
                print(f"[tracking] {self.name}: {what} failed ({type(error).__name__}: "
                      f"{text[-1][:200] if text else ''}); the study goes on", file=sys.stderr, flush=True)


# -- MLflow ---------------------------------------------------------------------------
class StudyMLflowLogger(MLflowLoggerCallback):
    """MLflowLoggerCallback with one run per trial across resumes, the trial's typed settings as params, the
    epoch record as metrics at step = epoch (one batch per epoch), and the study's tags."""

    def __init__(self, facts: TrialFacts, tracking_uri: str, experiment: str):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment)
        self.facts = facts
        self._runtime()

    def _runtime(self) -> None:
        self.guard = _Guard("MLflow")
        self.client = None  # set up in setup(); None: MLflow could not be reached, nothing is logged
        self.logged: dict = {}  # trial -> the last epoch its run holds
        self._trial_runs: dict = {}

    def __getstate__(self) -> dict:
        return {"facts": self.facts, "tracking_uri": self.tracking_uri, "experiment": self.experiment_name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["facts"], state["tracking_uri"], state["experiment"])

    def setup(self, *args, **kwargs):
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its INFO lines (database set-up) in our progress
        with self.guard("connecting"):
            super().setup(*args, **kwargs)  # the experiment, created if it does not exist
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.tracking_uri)

    def log_trial_start(self, trial):
        if self.client is None or trial in self._trial_runs:  # a retry in this driver: the same run
            return
        with self.guard("starting a run"):
            from mlflow.entities import Param

            identity, settings = self.facts.describe(trial)
            tags = self.facts.tags(identity)
            found = self.client.search_runs(
                [self.mlflow_util.experiment_id], max_results=1,
                filter_string=f"tags.`segstudy.study_id` = '{self.facts.study_id}' and "
                              f"tags.stage = '{identity['stage']}' and tags.trial_key = '{identity['trial_key']}'")
            if found:  # a trial resumed by a later driver continues its run
                run_id = found[0].info.run_id
                self.logged[trial] = int(found[0].data.metrics.get("epoch", 0))
                self.client.update_run(run_id, status="RUNNING")
            else:
                run_id = self.client.create_run(self.mlflow_util.experiment_id, run_name=identity["trial_key"],
                                                tags=tags).info.run_id
                self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(settings.items())])
            self._trial_runs[trial] = run_id

    def log_trial_result(self, iteration, trial, result):
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        if trial not in self._trial_runs:
            return
        with self.guard("logging metrics"):
            from mlflow.entities import Metric

            for epoch, metrics in epochs_to_log(trial, result, self.logged.get(trial, 0)):
                now = int(time.time() * 1000)
                self.client.log_batch(self._trial_runs[trial], metrics=[Metric(k, v, now, epoch)
                                                                        for k, v in metrics.items()])
                self.logged[trial] = epoch

    def log_trial_end(self, trial, failed: bool = False):
        run_id = self._trial_runs.pop(trial, None)
        self.logged.pop(trial, None)
        if run_id is None:
            return
        with self.guard("ending a run"):
            planned = trial.config.get("trial", {}).get("epochs") or self.facts.context.base.get("epochs")
            state = "errored" if failed else trial_ended_state(trial, planned).value
            self.client.set_tag(run_id, "status", state)
            self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


# -- Weights & Biases -----------------------------------------------------------------
class StudyWandbLogger(WandbLoggerCallback):
    """WandbLoggerCallback with a run per trial that a resume continues (a run id derived from the study and the
    trial key, resume="allow"), the trial's typed settings as config, the study as group, the stage as job type,
    and the epoch record as history at step = epoch. Offline runs need no API key."""

    def __init__(self, facts: TrialFacts, project: str, entity: str | None, mode: str):
        super().__init__(project=project, entity=entity, mode=mode)
        self.facts, self.entity, self.mode = facts, entity, mode
        self.guard = _Guard("W&B")
        self.logged: dict = {}

    def __getstate__(self) -> dict:
        return {"facts": self.facts, "project": self.project, "entity": self.entity, "mode": self.mode}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["facts"], state["project"], state["entity"], state["mode"])

    def setup(self, *args, **kwargs):
        if self.mode != "offline":  # Ray's setup insists on an API key, which offline runs do not need
            with self.guard("logging in"):
                super().setup(*args, **kwargs)

    def log_trial_start(self, trial):
        with self.guard("starting a run"):
            identity, settings = self.facts.describe(trial)
            tags = [self.facts.study, identity["stage"], identity["config_name"]]
            folder = local_trial_folder(trial)
            where = {}
            if folder is not None:
                os.makedirs(folder, exist_ok=True)
                where["dir"] = folder
            self._start_logging_actor(
                trial, [], id=self.facts.run_id(identity), name=identity["trial_key"], resume="allow",
                allow_val_change=True, group=self.facts.study, job_type=identity["stage"], project=self.project,
                config={**settings, **self.facts.tags(identity)}, tags=[t for t in tags if len(t) <= 64],
                **where, **self.kwargs)

    def log_trial_result(self, iteration, trial, result):
        with self.guard("logging metrics"):
            for epoch, metrics in epochs_to_log(trial, result, self.logged.get(trial, 0)):
                # the logging actor logs at step = training_iteration: the epoch here
                super().log_trial_result(iteration, trial, {**metrics, "training_iteration": epoch})
                self.logged[trial] = epoch

    def log_trial_end(self, trial, failed: bool = False):
        self.logged.pop(trial, None)
        if trial in self._trial_queues:
            with self.guard("ending a run"):
                super().log_trial_end(trial, failed)


# -- TensorBoard ----------------------------------------------------------------------
class StudyTensorBoardLogger(TBXLoggerCallback):
    """TBXLoggerCallback writing the epoch record as scalars at step = epoch, and the trial's typed settings as
    hparams (session start when it starts, session end when it ends) so that the HParams tab compares trials."""

    def __init__(self, facts: TrialFacts):
        super().__init__()
        self.facts = facts
        self.guard = _Guard("TensorBoard")
        self.logged: dict = {}

    def __getstate__(self) -> dict:
        return {"facts": self.facts}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["facts"])

    def log_trial_start(self, trial):
        with self.guard("starting a run"):
            folder = local_trial_folder(trial)
            if folder is None:
                super().log_trial_start(trial)  # a writer in Tune's staging folder, uploaded with the trial's folder
            else:  # as the stock callback, in the trial's folder itself (after a resume: a new event file there)
                if trial in self._trial_writer:
                    self._trial_writer[trial].close()
                else:  # a trial resumed by a later driver: its earlier event files hold these epochs already
                    self.logged[trial] = logged_epochs(folder)
                os.makedirs(folder, exist_ok=True)
                self._trial_writer[trial] = self._summary_writer_cls(folder, flush_secs=30)
                self._trial_result[trial] = {}
            from tensorboardX.summary import hparams

            identity, settings = self.facts.describe(trial)
            _, session_start, _ = hparams(hparam_values({**settings, "config_name": identity["config_name"],
                                                         "stage": identity["stage"]}), {})
            self._trial_writer[trial].file_writer.add_summary(session_start)
            self._trial_writer[trial].flush()

    def log_trial_result(self, iteration, trial, result):
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        if trial not in self._trial_writer:
            return
        with self.guard("logging metrics"):
            from tensorboardX.proto.summary_pb2 import Summary
            from tensorboardX.summary import scalar

            writer = self._trial_writer[trial]
            for epoch, metrics in epochs_to_log(trial, result, self.logged.get(trial, 0)):
                # One event per epoch: a driver killed while the writer writes leaves an epoch whole or absent
                # (a cut-off record is dropped by the reader), so logged_epochs never counts a part of one.
                values = [value for key, number in metrics.items() for value in scalar(key, number).value]
                writer.file_writer.add_summary(Summary(value=values), global_step=epoch)
                self.logged[trial] = epoch
            writer.flush()

    def log_trial_end(self, trial, failed: bool = False):
        self.logged.pop(trial, None)
        writer = self._trial_writer.pop(trial, None)
        self._trial_result.pop(trial, None)
        if writer is None:
            return
        with self.guard("ending a run"):
            from tensorboardX.proto.api_pb2 import Status
            from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
            from tensorboardX.summary import hparams

            session_end = hparams({}, {})[2]  # tensorboardX's session end says success: say failure for an error
            content = session_end.value[0].metadata.plugin_data
            data = HParamsPluginData.FromString(content.content)
            data.session_end_info.status = Status.Value("STATUS_FAILURE" if failed else "STATUS_SUCCESS")
            content.content = data.SerializeToString()
            writer.file_writer.add_summary(session_end)
            writer.close()


def logged_epochs(folder: str) -> int:
    """The last epoch that the event files in a trial's folder hold (0: none, or TensorBoard cannot be read)."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError:  # tensorboardX writes; TensorBoard (the tracking extra) reads
        return 0
    last = 0
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith("events.out.tfevents."):
            try:
                for event in EventFileLoader(os.path.join(folder, name)).Load():
                    if any(value.tag == "epoch" for value in event.summary.value):
                        last = max(last, int(event.step))
            except Exception:  # noqa: BLE001 (a damaged file: log everything again rather than fail)
                continue
    return last


def hparam_values(settings: dict) -> dict:
    """TensorBoard hparams take strings, numbers and booleans: a pair such as image_size becomes "32x32"."""
    values = {}
    for key, value in settings.items():
        if isinstance(value, (list, tuple)):
            value = "x".join(map(str, value))
        if value is not None:
            values[key] = value
    return values


# -- what a stage gets ------------------------------------------------------------------
def tracking_callbacks(tracking: TrackingSpec, facts: TrialFacts) -> list:
    callbacks = []
    if tracking.mlflow is not None:
        callbacks.append(StudyMLflowLogger(facts, tracking.mlflow.tracking_uri, tracking.mlflow.experiment))
    if tracking.wandb is not None:
        callbacks.append(StudyWandbLogger(facts, tracking.wandb.project, tracking.wandb.entity, tracking.wandb.mode))
    if tracking.tensorboard:
        callbacks.append(StudyTensorBoardLogger(facts))
    return callbacks
