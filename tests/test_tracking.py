"""Trials in MLflow, W&B and TensorBoard (the study file's `tracking:` section), and the terminal's progress.

Real components on loopback only: an MLflow tracking server started here, W&B in offline mode read
back from its run files, TensorBoard's own event reader, and `study run` under a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from study.errors import SpecError, StudyError
from study.planning.plan import Plan, PlanError, make_plan
from study.planning.spec import TrackingSpec, load_spec
from tests.study_helpers import (
    TEST_SPECS,
    crash_driver_when,
    driver_views,
    free_port,
    kill_group,
    run_study_cli,
    start_study_cli,
    study_env,
    wait_for,
)

SPEC = TEST_SPECS / "tracked.yaml"


# -- the study file and the plan (no Ray) -------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("tracking.mlfow={}", "tracking.mlfow: unknown key; did you mean 'mlflow'?"),
    ("tracking.mlflow.tracking_uri=ftp://host/x", "tracking.mlflow.tracking_uri: expected an MLflow tracking URI"),
    ("tracking.mlflow.tracking_uri=http:host", "tracking.mlflow.tracking_uri: expected an MLflow tracking URI"),
    ("tracking.mlflow.experimnt=x", "tracking.mlflow.experimnt: unknown key; did you mean 'experiment'?"),
    ("tracking.wandb.mode=sometimes", "tracking.wandb.mode: expected one of ['online', 'offline'], got 'sometimes'"),
    ("tracking.wandb.project=a/b", "tracking.wandb.project: expected a W&B name"),
    ("tracking.tensorboard=yes please", "tracking.tensorboard: expected true or false, got 'yes please'"),
    ("tracking=[mlflow]", "tracking: expected a mapping, got a list"),
])
def test_the_tracking_section_is_validated_with_key_paths(override, message):
    with pytest.raises(SpecError) as error:
        load_spec(SPEC, overrides=[override])
    assert str(error.value).startswith(f"{SPEC}: {message}"), str(error.value)
    assert "\n" not in str(error.value)


def test_the_plan_carries_the_trackers_with_their_defaults_and_reads_them_strictly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative sqlite file resolves against the working directory
    spec = load_spec(SPEC, overrides=["tracking.mlflow.tracking_uri=sqlite:///runs/m.db"])
    assert spec.tracking.mlflow.tracking_uri == f"sqlite:///{tmp_path}/runs/m.db"
    assert f"tracking_uri: sqlite:///{tmp_path}/runs/m.db" in spec.to_yaml()  # the spec as run keeps it absolute
    plan = make_plan(spec, lambda dataset, root: "same data", study_name="renamed")
    tracking = plan.execution.tracking
    assert (tracking.mlflow.experiment, tracking.wandb.project, tracking.wandb.mode, tracking.tensorboard) == \
        ("renamed", "renamed", "offline", True)
    assert Plan.from_json(plan.to_json(), "plan.json") == plan
    data = json.loads(plan.to_json())
    data["execution"]["tracking"]["wandb"]["colour"] = "blue"
    with pytest.raises(PlanError, match=r"plan.json is damaged .*tracking.wandb: expected the keys"):
        Plan.from_json(json.dumps(data), "plan.json")
    del data["execution"]["tracking"]
    with pytest.raises(PlanError, match="plan.json is damaged .*tracking"):
        Plan.from_json(json.dumps(data), "plan.json")
    data["version"] = 2  # planned before tracking existed: read as a plan without trackers
    assert Plan.from_json(json.dumps(data), "plan.json").execution.tracking == TrackingSpec()


# -- refused before Ray starts --------------------------------------------------------
def refused(tmp_path, *overrides, env_update=None, args=()) -> str:
    env = study_env(tmp_path / "studies")
    env.update(env_update or {})
    started = time.time()
    run = run_study_cli(["run", str(SPEC), *args, *[f"--set={o}" for o in overrides]], tmp_path, tmp_path / "studies",
                        check=False, env=env, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr  # one line: no traceback, no Ray start-up
    assert not (tmp_path / "studies" / "tracked" / "plan.json").exists()  # nothing was planned, nothing ran
    assert time.time() - started < 60
    return lines[0]


def closed_port() -> int:
    port = free_port()  # bound once and released: nothing listens there now
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return port


def test_a_tracking_server_that_is_down_is_one_line_before_ray_starts(tmp_path, monkeypatch):
    port = closed_port()
    line = refused(tmp_path, f"tracking.mlflow.tracking_uri=http://127.0.0.1:{port}")
    assert f"{SPEC}: tracking.mlflow.tracking_uri: no MLflow tracking server answers at http://127.0.0.1:{port}" in line

    # W&B online: the same check, called here as `study run` and `study resume` call it
    from study.tune.tracking import check_tracking

    tracking = load_spec(SPEC, overrides=["tracking.mlflow=null", "tracking.wandb.mode=online"]).tracking
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(StudyError, match=r"^x.yaml: tracking.wandb: online mode needs a W&B login \(`wandb login`, "
                                         r"or WANDB_API_KEY\); or set tracking.wandb.mode: offline$"):
        check_tracking(tracking, "x.yaml")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(StudyError, match=f"^x.yaml: tracking.wandb: the W&B server at http://127.0.0.1:{port} does "
                                         f"not answer"):
        check_tracking(tracking, "x.yaml")


def test_a_tracker_that_is_not_installed_is_named(tmp_path):
    shadow = tmp_path / "no-wandb"
    (shadow / "wandb").mkdir(parents=True)  # as if wandb were not installed: importing it fails
    (shadow / "wandb" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'wandb'\", "
                                                  "name='wandb')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}
    line = refused(tmp_path, env_update=env)
    assert line == (f"error: {SPEC}: tracking.wandb: the wandb package is not installed; "
                    f"pip install 'segstudy[tracking]'")


def test_the_dashboard_without_ray_default_is_one_line(tmp_path):
    try:
        import ray.dashboard.optional_deps  # noqa: F401
        pytest.skip("ray[default] is installed here: the dashboard would start")
    except ImportError:
        pass
    line = refused(tmp_path, "tracking=null", args=["--dashboard"])
    assert "--dashboard: Ray's dashboard needs ray[default] (pip install 'ray[default]')" in line


# -- one study, every tracker, killed and resumed -------------------------------------
@contextmanager
def mlflow_server(folder: Path):
    """`mlflow server` on a free loopback port, with a SQLite backend, in its own process group."""
    port = free_port()
    log = folder / "mlflow-server.log"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                               f"sqlite:///{folder / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"],
                              cwd=folder, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                              env=env)
    uri = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            import urllib.request

            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
        except OSError:
            return False
        return True

    try:
        wait_for(answers, timeout=240, interval=1, what="the MLflow tracking server")
        yield uri
    finally:
        kill_group(server, signal.SIGTERM, grace=10)
        kill_group(server)


def run_in_pty(args: list[str], cwd: Path, storage: Path, timeout: float = 600) -> tuple[int, str]:
    """The `study` command with a pseudo-terminal as its stdout and stderr, as in a user's terminal."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=cwd, env=study_env(storage),
                               stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, start_new_session=True)
    os.close(secondary)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the terminal closes once the command and everything it started have exited
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=timeout)
    finally:
        kill_group(process)
    reader.join(timeout=30)
    os.close(primary)
    return returncode, b"".join(chunks).decode(errors="replace")


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`): the LevelDB log format W&B writes, each record one
    of W&B's own protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    position, parts = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if position + 7 + length > len(data):
            return  # cut short: a run whose process was killed mid-write
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind == 0:
            continue
        parts += chunk
        if kind in (1, 4):  # a full record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_run(folder: Path) -> dict:
    """{id, name, group, job_type, tags, config, steps: {step: {metric: value}}} of an offline run folder."""
    run = {"steps": {}}
    for record in wandb_records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name, group=record.run.run_group,
                       job_type=record.run.job_type, tags=list(record.run.tags),
                       config={item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "history":
            items = {"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                     for item in record.history.item}
            run["steps"][record.history.step.num] = items
    return run


def tensorboard_run(folder: Path) -> tuple[dict, dict]:
    """({scalar tag: [steps]}, {hparam: value}) of a trial's folder, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(folder))
    events.Reload()
    scalars = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    hparams, ends = {}, 0
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        assert not data.HasField("experiment")  # TensorBoard builds the experiment from all trials' sessions
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                hparams[key] = getattr(value, value.WhichOneof("kind"))
        ends += data.HasField("session_end_info")
    return scalars, {**hparams, "_ended": ends}


def tensorboard_epoch_events(folder: Path) -> dict[int, set[str]]:
    """{epoch: the scalar tags of the one event that holds its "epoch" scalar}, over the folder's event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            tags = {value.tag for value in event.summary.value}
            if "epoch" in tags:
                found[event.step] = tags
    return found


@pytest.mark.slow
def test_trackers_follow_a_study_killed_and_resumed_and_the_terminal_shows_its_progress(tmp_path):
    """One pretraining job and one trial with MLflow (a server), W&B (offline) and TensorBoard; the driver is
    SIGKILLed mid-trial and the study resumed in a pseudo-terminal: the cut-off trial's runs continue."""
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "studies"
    with mlflow_server(tmp_path) as uri:
        log = tmp_path / "driver.log"
        driver = start_study_cli(["run", str(SPEC), "--name", "tk", "--set", f"tracking.mlflow.tracking_uri={uri}"],
                                 tmp_path, storage, log)
        crash_driver_when(driver, lambda: any(v.state.value == "running" and (v.last_epoch or 0) in (3, 5)
                                              for v in driver_views(storage / "tk")),
                          log, "the trial one epoch past a checkpoint")
        assert f"tracking: MLflow at {uri}, experiment tk; W&B offline, project tk; TensorBoard" in log.read_text()
        returncode, screen = run_in_pty(["resume", "tk"], tmp_path, storage)
        assert returncode == 0, screen[-5000:]

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("tk")
        runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
        histories = {(run.info.run_name, name): sorted(client.get_metric_history(run.info.run_id, name),
                                                       key=lambda m: (m.step, m.timestamp))
                     for run in runs.values() for name in ("val_miou", "train_loss", "val_iou_2", "lr",
                                                           "images_per_second")}
    plan = Plan.from_json((storage / "tk" / "plan.json").read_text(), "plan.json")
    main_key, job = plan.trials[0].trial_key, plan.pretrain_jobs[0]
    # MLflow: one run per trial, the cut-off one continued rather than duplicated
    assert sorted(runs) == sorted([main_key, job.trial_key])
    main = runs[main_key]
    assert main.info.status == "FINISHED" and main.data.tags["status"] == "finished"
    assert {k: main.data.tags[k] for k in ("study", "stage", "config_name", "trial_key")} == \
        {"study": "tk", "stage": "main", "config_name": "segformer_finetuned", "trial_key": main_key}
    assert runs[job.trial_key].data.tags["stage"] == "pretrain"
    settings = plan.trials[0].config
    assert {k: main.data.params[k] for k in ("lr", "epochs", "arch", "pretrain", "batch_size")} == \
        {k: str(settings[k]) for k in ("lr", "epochs", "arch", "pretrain", "batch_size")}
    history = {name: [m.step for m in metrics] for (run, name), metrics in histories.items() if run == main_key}
    assert history["val_miou"] == history["val_iou_2"] == [2, 4, 6, 8]  # one step per validation
    assert history["train_loss"] == history["lr"] == history["images_per_second"] == list(range(1, 9))
    record = [json.loads(line) for line in (storage / "tk" / "main" / main_key / "result.json").read_text()
              .splitlines()]
    assert any(line.get("iterations_since_restore") == 1 and line["epoch"] > 1 for line in record)  # it did resume
    assert histories[main_key, "val_miou"][-1].value == \
        pytest.approx([line["val_miou"] for line in record if line["epoch"] == 8][-1])

    # W&B (offline): run folders in the trial's folder, one run id per trial across both drivers
    folders = sorted((storage / "tk" / "main" / main_key / "wandb").glob("offline-run-*"))
    assert len(folders) == 2, folders  # the killed driver's and the resumed one's: offline-run-<time>-<run id>
    after = wandb_run(folders[1])
    assert {f.name.rsplit("-", 1)[1] for f in folders} == {after["id"]} and after["name"] == main_key
    assert (after["group"], after["job_type"]) == ("tk", "main") and "segformer_finetuned" in after["tags"]
    assert after["config"]["lr"] == settings["lr"] and after["config"]["trial_key"] == main_key
    # the whole history, the epochs before the resume taken from the checkpoint it resumed from
    assert sorted(after["steps"]) == list(range(1, 9))
    assert [step for step, values in sorted(after["steps"].items()) if "val_miou" in values] == [2, 4, 6, 8]
    assert after["steps"][8]["val_miou"] == pytest.approx(histories[main_key, "val_miou"][-1].value)
    pretrain_runs = [wandb_run(f) for f in (storage / "tk" / "pretrain" / job.trial_key / "wandb")
                     .glob("offline-run-*")]
    assert [r["job_type"] for r in pretrain_runs] == ["pretrain"] and pretrain_runs[0]["id"] != after["id"]

    # TensorBoard: scalars per epoch and hparams in each trial's folder
    scalars, hparams = tensorboard_run(storage / "tk" / "main" / main_key)
    assert scalars["val_miou"] == [2, 4, 6, 8] and scalars["train_loss"] == list(range(1, 9))
    assert (hparams["lr"], hparams["arch"], hparams["config_name"], hparams["image_size"]) == \
        (pytest.approx(settings["lr"]), "segformer_b0", "segformer_finetuned", "32x32")
    assert hparams["_ended"] == 1
    assert tensorboard_run(storage / "tk" / "pretrain" / job.trial_key)[1]["stage"] == "pretrain"
    # each epoch is one event: a driver killed while TensorBoard's writer writes cannot leave a part of one,
    # which the resumed driver would take for the whole and not write again (seen: val_miou lost at epoch 2)
    epoch_events = tensorboard_epoch_events(storage / "tk" / "main" / main_key)
    assert sorted(epoch_events) == list(range(1, 9))
    assert all({"epoch", "train_loss", "lr"} <= tags for tags in epoch_events.values())
    assert all(("val_miou" in tags) == (epoch % 2 == 0) for epoch, tags in epoch_events.items())

    # the terminal: a live status line redrawn in place, then the plain summary
    assert "\r\x1b[2K[main] " in screen and "ETA" in screen
    assert "[main] 1/1 done (1 finished), 0 running; best val mIoU" in screen
    assert "study tk finished" in screen
