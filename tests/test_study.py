"""End-to-end studies on a real local Ray, driven through the `study` command."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from study.reading.results import load_results
from study.storage import Storage
from tests.study_helpers import SPECS, TEST_SPECS, free_port, kill_group, run_study_cli, study_env, wait_for
from trainables.checkpoint import ENCODER_FILE, load_weights

pytestmark = pytest.mark.slow


def encoder_of(weights_file: str) -> dict:
    weights = load_weights(weights_file)
    return {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}


def artifact_encoder(uri: str) -> dict:
    from trainables.models.transfer import load_encoder_file

    return load_encoder_file(uri)


def test_smoke_study_end_to_end(tmp_path):
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "studies"
    # the demo's study file, one seed instead of two (suite time); MLflow without a server: a database file
    mlflow_db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = run_study_cli(["run", str(SPECS / "smoke.yaml"), "--name", "smoke", "--set", "seeds=1",
                         "--set", f"tracking.mlflow.tracking_uri={mlflow_db}"], tmp_path, storage)
    assert "study smoke finished" in run.stderr

    results = load_results(Storage(storage), "smoke")
    plan = results.plan
    main = results.trials[results.trials["stage"] == "main"]
    pretrain = results.trials[results.trials["stage"] == "pretrain"]
    assert results.state == "finished" and results.notes == ()
    assert sorted(main["trial_key"]) == sorted(t.trial_key for t in plan.trials)
    assert set(main["status"]) == {"finished"}
    assert (main["epochs_run"] == main["epochs"]).all()
    # the pretraining stage ran once
    assert len(pretrain) == 1 and pretrain.iloc[0]["status"] == "finished" and not pretrain.iloc[0]["reused"]
    job = plan.pretrain_jobs[0]
    artifact = Storage(storage).uri("_artifacts", "encoders", job.key, ENCODER_FILE)
    # one torch thread per trial: each was given one CPU (resources.cpu), so packed trials do not fight
    assert set(results.trials.loc[results.trials["trial_id"].notna(), "run_threads"]) == {1}
    # a frozen encoder ends bit-identical to the pretrained one it was loaded from
    pretrained = artifact_encoder(artifact)
    frozen = main[(main["pretrain"] == "cityscapes") & (main["freeze"] == "encoder")]
    assert len(frozen) > 0
    for weights in frozen["weights_final"]:
        trained = encoder_of(weights)
        assert trained.keys() == pretrained.keys()
        assert all(torch.equal(trained[k], pretrained[k]) for k in pretrained)

    # progress, not on a terminal: what each trial is, done/total with an ETA, the end in the project's words
    planned = len(plan.trials)
    assert "[main] started fcn_scratch-s0 (configuration fcn_scratch, lr 0.001)" in run.stderr
    summaries = [line for line in run.stderr.splitlines() if re.match(rf"\[main\] \d+/{planned} done", line)]
    assert any(re.search(r"ETA \d+(s|m\d\ds|h\d\dm)$", line) for line in summaries[:-1]), summaries
    assert summaries[-1].startswith(f"[main] {planned}/{planned} done ({planned} finished), 0 running; best val mIoU ")
    assert "[pretrain] 1/1 done (1 finished)" in run.stderr and "pending]" not in run.stderr
    # MLflow: a run per trial (pretraining included), the trial's settings as params, val mIoU at each validation
    client = MlflowClient(tracking_uri=mlflow_db)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("smoke").experiment_id])}
    assert sorted(runs) == sorted(results.trials["trial_key"])
    for row in results.trials.to_dict("records"):
        mlflow_run = runs[row["trial_key"]]
        assert mlflow_run.data.tags["stage"] == row["stage"] and mlflow_run.data.params["lr"] == str(row["lr"])
        steps = [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "val_miou")]
        assert sorted(steps) == [e for e in range(1, row["epochs"] + 1) if e % 2 == 0 or e == row["epochs"]]

    status = run_study_cli(["status", "smoke", "--json"], tmp_path, storage)
    summary = json.loads(status.stdout)
    assert summary["state"] == "finished" and summary["stages"]["main"] == {"finished": len(main)}
    assert summary["best"]["best_val_miou"] == pytest.approx(main["best_val_miou"].max())
    assert run_study_cli(["list"], tmp_path, storage).stdout.split() == ["smoke", "finished"]
    again = run_study_cli(["resume", "smoke"], tmp_path, storage)
    assert "already finished" in again.stderr


def test_second_study_reuses_the_pretrained_encoder_and_names_clash(tmp_path, finished_tiny_study):
    storage = tmp_path / "studies"
    shutil.copytree(finished_tiny_study, storage)  # holds study "t" and the encoder its pretraining made
    spec = str(TEST_SPECS / "tiny.yaml")
    second = run_study_cli(["run", spec, "--name", "second"], tmp_path, storage)
    assert "[pretrain] reusing encoder" in second.stderr
    results = load_results(Storage(storage), "second")
    pretrain = results.trials[results.trials["stage"] == "pretrain"]
    assert len(pretrain) == 1 and bool(pretrain.iloc[0]["reused"]) and pretrain.iloc[0]["epochs_run"] == 2
    assert not Storage(storage).exists("second", "pretrain")  # no pretraining trial ran for it
    clash = run_study_cli(["run", spec, "--name", "second"], tmp_path, storage, check=False)
    assert clash.returncode == 2 and "already exists" in clash.stderr and "study resume second" in clash.stderr


def test_study_spreads_trials_over_a_two_node_cluster(tmp_path):
    ray = Path(sys.executable).with_name("ray")
    port = free_port()
    env = study_env(tmp_path / "studies")
    env["RAY_AUTH_MODE"] = "token"
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    nodes = []
    try:
        head = subprocess.Popen([str(ray), "start", "--head", f"--port={port}", "--num-cpus=1", "--block",
                                 "--include-dashboard=false", f"--temp-dir={temp}"], env=env,
                                stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        nodes.append(head)
        address = f"127.0.0.1:{port}"
        wait_for(lambda: "Ray runtime started" in (tmp_path / "head.log").read_text(), 120, what="the head node")
        worker = subprocess.Popen([str(ray), "start", f"--address={address}", "--num-cpus=1", "--block"], env=env,
                                  stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        nodes.append(worker)
        wait_for(lambda: "Ray runtime started" in (tmp_path / "worker.log").read_text(), 120, what="the second node")

        def both_cpus() -> bool:  # the second node's CPU known to the head, or both trials may run on the first
            status = subprocess.run([str(ray), "status", f"--address={address}"], env=env, capture_output=True,
                                    text=True, timeout=60, check=False)
            return "/2.0 CPU" in status.stdout

        wait_for(both_cpus, 120, interval=1, what="the cluster's two CPUs")
        # two trials, one CPU each, on two one-CPU nodes
        run_study_cli(["run", str(TEST_SPECS / "single.yaml"), "--name", "c", "--address", address,
                       "--set", "seeds=2", "--set", "train.epochs=4", "--set", "max_concurrent=2"],
                      tmp_path, tmp_path / "studies", env=env)
    finally:
        for node in reversed(nodes):
            kill_group(node, signal.SIGTERM, grace=20)
            kill_group(node)
        shutil.rmtree(temp, ignore_errors=True)
    results = load_results(Storage(tmp_path / "studies"), "c")
    assert set(results.trials["status"]) == {"finished"} and len(results.trials) == 2
    nodes = {json.loads(line)["node_id"] for path in results.trials["path"]
             for line in (Path(path) / "result.json").read_text().splitlines()}
    assert len(nodes) == 2
