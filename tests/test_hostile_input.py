"""Hostile input through the real `study` command: no code from a study folder or a user file runs, no name
escapes its folder, and whatever the input, one line and exit status 2 (never a traceback or a hang).

Cases start no Ray: ray.init is made to fail loudly (as in test_bad_input.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml

from study.cli import main
from study.planning.plan import PLAN_VERSION
from tests.fake_study import fake_trial, write_fake_study
from tests.study_helpers import free_port
from tests.test_bad_input import SMOKE, fails, smoke, write_spec
from trainables.checkpoint import FINAL_WEIGHTS, CheckpointError, load_training_state, write_trial_json
from trainables.errors import WeightsError
from trainables.models.transfer import load_encoder_file


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for input that should have been refused before")

    monkeypatch.setattr(ray, "init", refuse)
    for variable in ("SEGSTUDY_PETS_ROOT", "SEGSTUDY_CITYSCAPES_ROOT", "RAY_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)


# -- no code from a study folder or a user file runs ---------------------------------------------
class Planted:
    """A pickle that, once unpickled, writes a marker file: what a hostile study folder would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Planted(marker)}, path)
    return path


def test_a_planted_pickle_never_runs_anywhere_a_file_is_loaded(capsys, tmp_path, pristine_pets):
    marker = tmp_path / "MARKER"
    # 1. a training state (what `study train --resume` and a resumed trial load)
    run = tmp_path / "run"
    plant(run / "checkpoint" / "state.pt", marker)
    write_trial_json(run / "checkpoint", {"kind": "training", "epoch": 1, "records": []})
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="not a training state this tool can load safely"):
        load_training_state(run / "checkpoint")
    err = fails(capsys, "train", "--data-root", pristine_pets, "--epochs", "1", "--image-size", "32",
                "--device", "cpu", "--out", run, "--resume")
    assert "state.pt: not a training state this tool can load safely" in err
    # 2. an encoder or backbone file given as `pretrain`
    encoder = plant(tmp_path / "encoder.pt", marker)
    with pytest.raises(WeightsError, match="not a readable PyTorch state dict"):
        load_encoder_file(encoder)
    err = fails(capsys, "train", "--data-root", pristine_pets, "--pretrain", encoder, "--epochs", "1",
                "--image-size", "32", "--device", "cpu", "--out", tmp_path / "run2")
    assert f"pretrain: {encoder} is not a readable PyTorch state dict" in err
    # 3. a trial's stored weights, read by report (and by every command that loads a model)
    from trainables.config import TrainConfig
    from trainables.models import build_model

    weights = build_model(TrainConfig(arch="segformer_b0")).state_dict()
    trials = [fake_trial("a", 0, [0.5], arch="segformer_b0", weights=weights)]
    trials[0]["settings"].update(data_root=str(pristine_pets), image_size=[32, 32])
    storage = write_fake_study(tmp_path / "studies", "s", trials)
    final = next((tmp_path / "studies" / "s" / "main").glob(f"*/checkpoint_*/{FINAL_WEIGHTS}"))
    plant(final, marker)
    assert main(["report", "s", "--storage", str(storage.root), "--out", str(tmp_path / "report")]) == 0
    assert "not a readable safetensors file" in (tmp_path / "report" / "report.md").read_text()
    # 4. a resumed trial meets a planted checkpoint in its folder: skipped, named, never run
    from trainables.tune_adapter import newest_checkpoint

    trial = tmp_path / "trial"
    plant(trial / "checkpoint_000003" / "state.pt", marker)
    write_trial_json(trial / "checkpoint_000003", {"kind": "training", "epoch": 3, "records": []})
    local = tmp_path / "local"
    local.mkdir()
    assert newest_checkpoint(None, str(trial), str(local)) is None
    assert not marker.exists()


@pytest.fixture(scope="module")
def pristine_pets(tmp_path_factory):
    from trainables.data import synth_dataset

    root = tmp_path_factory.mktemp("pets")
    synth_dataset("pets", root, train=3, val=2, seed=0, image_size=(32, 32))
    return root


# -- nothing escapes its folder ---------------------------------------------------------------
BAD_NAMES = ["../x", "a/b", ".", "..", "_artifacts", "", ".hidden", "x" * 300, "a\nb"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_no_study_name_escapes_the_storage(capsys, tmp_path, name):
    storage = tmp_path / "deep" / "studies"
    before = sorted(tmp_path.rglob("*"))
    err = fails(capsys, "run", SMOKE, "--name", name, "--storage", storage)
    assert "expected letters, digits and _ . + = -" in err
    for command in (["status", name], ["resume", name], ["report", name], ["export", name, "--out", tmp_path / "o"]):
        err = fails(capsys, *command, "--storage", storage)
        assert "study name" in err and "expected letters, digits" in err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("where", ["configurations.0.name", "pretraining", "name", "tables"])
def test_names_in_a_study_file_follow_the_same_rule(capsys, tmp_path, where):
    raw = smoke()
    if where == "pretraining":
        raw["pretraining"]["../up"] = raw["pretraining"].pop("cityscapes")
    elif where == "name":
        raw["name"] = "../up"
    elif where == "tables":
        raw["tables"][0]["name"] = "../up"
    else:
        raw["configurations"][0]["name"] = "../up"
    err = fails(capsys, "run", write_spec(tmp_path, raw), "--storage", tmp_path / "studies")
    assert "'../up'" in err and "letters, digits" in err
    assert not (tmp_path / "studies").exists() and not (tmp_path / "up").exists()


def test_a_split_list_naming_a_file_outside_the_dataset_is_refused(capsys, tmp_path, pristine_pets):
    root = Path(shutil.copytree(pristine_pets, tmp_path / "pets"))
    listing = root / "oxford-iiit-pet" / "annotations" / "trainval.txt"
    listing.write_text("../../../../etc/passwd 1 1 1\n" + listing.read_text())
    err = fails(capsys, "data", "check", "pets", "--root", root, "--image-size", "32")
    assert f"{listing}, line 1: '../../../../etc/passwd' is not a file stem under" in err
    listing.write_bytes(b"Abyssinian_1 1 1 1\n\xff\xfe\n")
    err = fails(capsys, "data", "check", "pets", "--root", root, "--image-size", "32")
    assert f"{listing}: not UTF-8 text" in err


# -- refused before Ray, within seconds --------------------------------------------------------
def test_an_unreachable_cluster_is_one_line_and_leaves_no_study(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGSTUDY_CONNECT_TIMEOUT", "2")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    err = fails(capsys, "run", SMOKE, "--address", address, "--storage", tmp_path / "studies")
    assert f"--address {address}: no Ray cluster answers there within 2 s" in err
    assert not (tmp_path / "studies").exists()
    with socket.socket() as blackhole:  # answers, but is not Ray: Ray's own error, in one line
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen()
    monkeypatch.setenv("SEGSTUDY_CONNECT_TIMEOUT", "forever")
    err = fails(capsys, "run", SMOKE, "--address", "127.0.0.1:1", "--storage", tmp_path / "studies")
    assert "$SEGSTUDY_CONNECT_TIMEOUT='forever': expected seconds" in err


@pytest.mark.parametrize("change, expected", [
    ({"seeds": [2**32]}, "seeds: expected a number of seeds from 1 to 1000"),
    ({"train": {"dataset": "pets", "image_size": [100000, 100000]}}, "train.image_size: expected (height, width) of 16 "
                                                                      "to 4096 pixels"),
    ({"seeds": 1000}, "more than 2,000; if you mean it, pass `study run --allow-large`"),
    ({"train": {"dataset": "pets", "device": "cuda"}}, "resources.gpu: expected a GPU share per trial"),
    ({"train": {"dataset": "pets", "device": "gpu0"}}, "train.device: expected auto, cpu, cuda or cuda:N"),
])
def test_settings_that_would_fail_in_every_trial_are_refused(capsys, tmp_path, change, expected):
    raw = smoke()
    raw.update(change)
    err = fails(capsys, "run", write_spec(tmp_path, raw), "--storage", tmp_path / "studies")
    assert expected in err


def test_a_cuda_device_this_machine_lacks_is_refused_before_ray(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    raw = smoke()
    raw["train"]["device"] = "cuda"
    raw["resources"] = {"cpu": 1, "gpu": 1}
    err = fails(capsys, "run", write_spec(tmp_path, raw), "--storage", tmp_path / "studies")
    assert "device: trials ask for cuda, but this machine has 0 CUDA device(s)" in err


@pytest.mark.parametrize("text, expected", [
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"b{i}: &b{i} [*a, *a, *a, *a]\n" for i in range(40)),
     "more than 100 YAML aliases"),
    ("x: " + "[" * 100 + "]" * 100, "nested more than 32 levels deep"),
    ("description: '" + "x" * (2 << 20) + "'", "expected at most 1,048,576"),
    ("[1, 2", "not valid YAML at line 1"),
])
def test_study_files_are_read_within_limits(capsys, tmp_path, text, expected):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    err = fails(capsys, "run", path, "--storage", tmp_path / "studies")
    assert expected in err


def test_nested_aliases_under_the_alias_limit_are_refused_by_what_they_expand_to(capsys, tmp_path):
    # 70 aliases (under the limit of 100) that build 10 ** 7 nodes: refused from the events, before any is built
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    path = tmp_path / "study.yaml"
    path.write_text("\n".join(levels) + "\n")
    err = fails(capsys, "run", path, "--storage", tmp_path / "studies")
    assert "more than 100,000 YAML nodes once its aliases are expanded (line 5)" in err
    assert err.count("\n") == 1


def test_a_study_file_that_is_not_utf8_or_a_folder(capsys, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x00")
    assert "not UTF-8 text (byte 8)" in fails(capsys, "run", path)
    assert "a folder, not a study file" in fails(capsys, "run", tmp_path)


# -- one line, exit 2, everywhere ----------------------------------------------------------------
def test_paths_that_cannot_be_used_are_named(capsys, tmp_path, pristine_pets):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "is a file, not a folder of studies" in fails(capsys, "list", "--storage", a_file)
    assert "is a file, not a folder of studies" in fails(capsys, "status", "x", "--storage", a_file)
    storage = write_fake_study(tmp_path / "studies", "s", [fake_trial("a", 0, [0.5])])
    for command in (["report", "s", "--out", a_file], ["export", "s", "--out", a_file]):
        err = fails(capsys, *command, "--storage", storage.root)
        assert f"--out {a_file}: a file is there; expected a folder" in err
    err = fails(capsys, "data", "synth", "pets", "--root", a_file)
    assert f"{a_file} is a file, not a folder" in err
    err = fails(capsys, "train", "--data-root", pristine_pets, "--out", a_file)
    assert f"--out {a_file}: a file is there" in err
    err = fails(capsys, "train", "--data-root", pristine_pets, "--seed", "-1", "--out", tmp_path / "t")
    assert "seed: expected an integer from 0 to 4294967295, got -1" in err
    err = fails(capsys, "train", "--data-root", pristine_pets, "--device", "tpu", "--out", tmp_path / "t")
    assert "device: expected auto, cpu, cuda or cuda:N, got 'tpu'" in err
    assert "--epochs: invalid int value: 'x'" in fails(capsys, "train", "--data-root", pristine_pets, "--epochs", "x",
                                                        "--out", tmp_path / "t")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in fails(capsys, "export", "s", "--out", locked / "x", "--storage", storage.root)


def test_damaged_json_anywhere_in_a_study_folder_is_one_line(capsys, tmp_path):
    storage = write_fake_study(tmp_path / "studies", "s", [fake_trial("a", 0, [0.5])])
    folder = tmp_path / "studies" / "s"
    (folder / "study.json").write_text("{")
    (folder / "events.jsonl").write_bytes(b"\xff\n{")
    result = next(folder.glob("main/*/result.json"))
    result.write_bytes(b"\xff\xfe")
    assert main(["list", "--storage", str(storage.root)]) == 0
    assert main(["status", "s", "--json", "--storage", str(storage.root)]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert len(summary["notes"]) >= 3
    (folder / "plan.json").write_text(json.dumps({"version": PLAN_VERSION}))
    assert "plan.json is damaged" in fails(capsys, "status", "s", "--storage", storage.root)
    (folder / "plan.json").write_text(json.dumps({"version": PLAN_VERSION + 1}))
    newer = fails(capsys, "status", "s", "--storage", storage.root)
    assert f"a plan of format {PLAN_VERSION + 1}; this segstudy reads formats" in newer
    (folder / "plan.json").write_bytes(b"\xff")
    assert "not UTF-8" in fails(capsys, "export", "s", "--out", tmp_path / "out", "--storage", storage.root)


def test_a_spec_with_a_yaml_override_that_is_not_a_mapping(capsys, tmp_path):
    err = fails(capsys, "run", SMOKE, "--set", "train=[1, 2]", "--storage", tmp_path / "studies")
    assert "train: expected a mapping" in err
    assert yaml  # (imported for the shared helpers)


def test_sighup_and_sigterm_stop_a_command_like_ctrl_c(capsys, tmp_path, monkeypatch):
    """Outside a Tune run a stopping signal interrupts the command and exits 128 + its number."""
    import signal

    from study import cli, signals

    def hangs_up(args):
        os.kill(os.getpid(), signal.SIGHUP)
        raise AssertionError("the signal should have interrupted the command")

    monkeypatch.setattr(signals, "_received", [])
    monkeypatch.setattr(cli, "cmd_list", hangs_up)
    try:
        assert main(["list", "--storage", str(tmp_path)]) == 129
    finally:
        for number in signals.STOPPING:
            signal.signal(number, signal.SIG_DFL)
    assert "interrupted" in capsys.readouterr().err
