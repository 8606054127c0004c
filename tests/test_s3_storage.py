"""A study on an S3-compatible object store (moto's server on loopback), through the real `study` command.

The storage is named as a user names a non-AWS endpoint: pyarrow's query parameters in the URI
(`s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http`); credentials come from the AWS
environment variables. Bad input (missing bucket, unreachable endpoint) is in test_bad_input.py.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.fs as pafs
import pytest

from study.reading.results import load_results
from study.storage import Storage
from tests.study_helpers import TEST_SPECS, crash_driver_when, moto_server, run_study_cli, start_study_cli
from trainables.checkpoint import STATE_FILE, TRIAL_FILE

pytestmark = pytest.mark.slow

BUCKET = "segstudy"


@pytest.fixture(scope="module")
def s3_storage(tmp_path_factory):
    """The storage URI of a prefix in a fresh bucket on a loopback S3 server; the server stops at the end."""
    with pytest.MonkeyPatch.context() as env, moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        # The driver and Ray's workers inherit these (run_study_cli copies os.environ).
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        env.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(BUCKET)
        yield f"s3://{BUCKET}/studies?endpoint_override={endpoint}&scheme=http"


def test_study_on_s3_is_killed_resumed_and_read_back_from_the_bucket(s3_storage, tmp_path):
    """Killed the moment a main trial's first checkpoint is in the bucket, before Tune's experiment state
    there names it (Tune syncs that state periodically): resume continues the trial from that checkpoint."""
    local = tmp_path / "studies"  # the default storage ($SEGSTUDY_STORAGE in the commands' environment)
    storage = Storage(s3_storage)
    name = "s3tiny"
    # Long enough trials (a checkpoint every 3 of 15 epochs) that the kill lands mid-trial for certain.
    driver = start_study_cli(["run", str(TEST_SPECS / "tiny.yaml"), "--name", name, "--storage", s3_storage,
                              "--set", "train.epochs=15", "--set", "train.val_interval=3"],
                             tmp_path, local, tmp_path / "driver.log")

    def whole_checkpoints() -> list[str]:
        """Main trials with a whole checkpoint in the bucket: its training state and its trial.json (a kill
        during the upload of a first checkpoint leaves a partial one, from which no resume can continue)."""
        found = []
        for trial in storage.list_dirs(name, "main"):
            for folder in storage.list_dirs(name, "main", trial):
                if folder.startswith("checkpoint_") and \
                        {STATE_FILE, TRIAL_FILE} <= set(storage.list_files(name, "main", trial, folder)):
                    found.append(trial)
                    break
        return found

    def a_main_checkpoint_in_the_bucket():
        try:
            return bool(whole_checkpoints())
        except OSError:
            return False

    crash_driver_when(driver, a_main_checkpoint_in_the_bucket, tmp_path / "driver.log",
                      "a main trial's first checkpoint in the bucket", interval=0.1)
    checkpointed = whole_checkpoints()
    log = (tmp_path / "driver.log").read_text()
    assert "Traceback" not in log, log[-5000:]
    assert storage.read_json(name, "study.json")["state"] == "running"  # killed: nobody said otherwise
    status = json.loads(run_study_cli(["status", name, "--json", "--storage", s3_storage], tmp_path, local).stdout)
    assert status["state"] == "interrupted"  # the driver is gone

    resumed = run_study_cli(["resume", name, "--storage", s3_storage], tmp_path, local, timeout=400)
    assert f"study {name} finished" in resumed.stderr
    assert "[main] restoring the experiment at s3://" in resumed.stderr
    assert "[pretrain] reusing encoder" in resumed.stderr  # made before the kill, found in the bucket

    results = load_results(storage, name)
    assert results.state.value == "finished"
    main = results.trials[results.trials["stage"] == "main"]
    pretrain = results.trials[results.trials["stage"] == "pretrain"]
    planned = sorted(t.trial_key for t in results.plan.trials)
    assert sorted(main["trial_key"]) == planned and len(planned) == 2  # each planned trial once
    assert set(main["status"]) == {"finished"} and (main["epochs_run"] == main["epochs"]).all()
    assert len(pretrain) == 1 and pretrain.iloc[0]["status"] == "finished" and not pretrain.iloc[0]["reused"]
    assert len(storage.list_dirs(name, "main")) == 2  # one Tune trial folder per planned trial
    for directory in checkpointed:  # cut off by the kill: it went on from its checkpoint in the bucket
        lines = [json.loads(line) for line in storage.read_text(name, "main", directory, "result.json").splitlines()]
        starts = [line["epoch"] for line in lines if line["iterations_since_restore"] == 1]
        assert starts and starts[-1] > 3, (directory, starts)  # the last attempt began after a checkpoint
    # Paths point into the bucket, the endpoint kept in the URI.
    query = s3_storage[s3_storage.index("?"):]
    assert all(p.startswith(f"s3://{BUCKET}/studies/{name}/") and p.endswith(query) for p in results.trials["path"])
    assert all(c.startswith(f"s3://{BUCKET}/studies/{name}/") and c.endswith(query) for c in main["checkpoint"])

    status = json.loads(run_study_cli(["status", name, "--json", "--storage", s3_storage], tmp_path, local).stdout)
    assert status["state"] == "finished" and status["stages"] == {"pretrain": {"finished": 1}, "main": {"finished": 2}}
    assert run_study_cli(["list", "--storage", s3_storage], tmp_path, local).stdout.split() == [name, "finished"]

    run_study_cli(["report", name, "--out", str(tmp_path / "report"), "--storage", s3_storage], tmp_path, local)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "not drawn" not in report and "failed, see the notes" not in report  # masks: weights read from S3
    assert (tmp_path / "report" / "figures" / "predicted-masks.png").stat().st_size > 0

    run_study_cli(["export", name, "--out", str(tmp_path / "export"), "--storage", s3_storage], tmp_path, local)
    trials = pd.read_parquet(tmp_path / "export" / "trials.parquet")
    assert sorted(trials.loc[trials["stage"] == "main", "trial_key"]) == planned
    assert set(trials["status"]) == {"finished"}

    assert not local.exists(), sorted(str(p) for p in local.rglob("*"))  # nothing in the local default storage
    assert not (tmp_path / f"report-{name}").exists()
