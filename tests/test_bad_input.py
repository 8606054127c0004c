"""Bad input through the real `study` command: one line naming what is wrong, exit status 2, no traceback.

Each case runs `study.cli.main([...])` as the console script does and checks the exit status, that the
message names the file, key or value at fault and what was expected, and that no traceback is printed
(`--debug` is the one way to get one; the last tests run the installed command in a subprocess).
No case starts Ray: study files are validated, and datasets checked, before Ray starts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from study.cli import main
from study.errors import StudyError
from tests.study_helpers import free_port, moto_server
from trainables.data import synth_dataset
from trainables.models import known_archs

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "search_spaces" / "smoke.yaml"


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Every case here must fail before Ray starts: starting it is a test failure."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for bad input that should have been refused before")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("SEGSTUDY_PETS_ROOT", raising=False)
    monkeypatch.delenv("SEGSTUDY_CITYSCAPES_ROOT", raising=False)
    yield
    assert not ray.is_initialized()


def fails(capsys, *argv: str) -> str:
    """Run the CLI; it must exit 2 with one `error: ...` message and no traceback. Returns stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, f"exit status {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return err[err.index("error: "):]


# -- datasets ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Small generated trees in the real layouts, copied before each damage."""
    base = tmp_path_factory.mktemp("pristine")
    synth_dataset("pets", base / "pets", train=3, val=2, seed=0, image_size=(40, 60))
    synth_dataset("cityscapes", base / "cityscapes", train=2, val=2, seed=0, image_size=(32, 64))
    return {"pets": base / "pets", "cityscapes": base / "cityscapes"}


def copy_of(pristine, dataset: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine[dataset], tmp_path / dataset))


def a_pet(root: Path, split: str = "trainval") -> tuple[Path, Path]:
    """(image, trimap) of the first pet listed in the split."""
    base = root / "oxford-iiit-pet"
    name = (base / "annotations" / f"{split}.txt").read_text().split()[0]
    return base / "images" / f"{name}.jpg", base / "annotations" / "trimaps" / f"{name}.png"


def check(capsys, dataset: str, root: Path) -> str:
    return fails(capsys, "data", "check", dataset, "--root", root, "--image-size", "32")


def test_missing_dataset_root_shows_the_expected_layout(capsys, tmp_path):
    err = check(capsys, "pets", tmp_path / "nowhere")
    assert f"the folder {tmp_path / 'nowhere'} does not exist; expected this layout:" in err
    assert "oxford-iiit-pet/" in err and "images/<Name>.jpg" in err and "trimaps/<Name>.png" in err
    err = check(capsys, "cityscapes", tmp_path / "nowhere")
    assert f"the folder {tmp_path / 'nowhere'} does not exist; expected this layout:" in err
    assert "leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png" in err
    assert "gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png" in err
    (tmp_path / "a-file").write_text("")
    err = check(capsys, "voc", tmp_path / "a-file")
    assert f"{tmp_path / 'a-file'} is a file, not a folder; expected this layout:" in err


def test_wrong_pets_layout_names_the_missing_folder(capsys, pristine, tmp_path):
    root = copy_of(pristine, "pets", tmp_path)
    shutil.rmtree(root / "oxford-iiit-pet" / "annotations" / "trimaps")
    err = check(capsys, "pets", root)
    assert f"{root / 'oxford-iiit-pet' / 'annotations' / 'trimaps'} is missing; expected this layout:" in err
    assert "trainval.txt, test.txt" in err


def test_wrong_cityscapes_layout_names_the_missing_folder(capsys, pristine, tmp_path):
    root = copy_of(pristine, "cityscapes", tmp_path)
    shutil.rmtree(root / "gtFine" / "val")
    err = check(capsys, "cityscapes", root)
    assert f"{root / 'gtFine' / 'val'} is missing; expected this layout:" in err
    assert "gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png" in err


def test_dataset_folder_itself_as_root_names_the_parent(capsys, pristine, tmp_path):
    root = copy_of(pristine, "pets", tmp_path)
    err = check(capsys, "pets", root / "oxford-iiit-pet")
    assert f"looks like the oxford-iiit-pet folder itself: pass its parent folder, {root}" in err


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def test_truncated_image_is_named_by_data_check(capsys, pristine, tmp_path):
    root = copy_of(pristine, "pets", tmp_path)
    image, _ = a_pet(root)
    truncate(image)
    assert f"error: cannot read image {image}: " in check(capsys, "pets", root)


def test_truncated_image_is_named_by_study_train(capsys, pristine, tmp_path):
    root = copy_of(pristine, "pets", tmp_path)
    image, _ = a_pet(root, "test")
    truncate(image)
    err = fails(capsys, "train", "--arch", "segformer_b0", "--dataset", "pets", "--data-root", root, "--epochs", "1",
                "--batch-size", "2", "--image-size", "32", "--device", "cpu", "--out", tmp_path / "run")
    assert f"error: cannot read image {image}: " in err


def test_mask_of_another_size_names_both_files_and_sizes(capsys, pristine, tmp_path):
    root = copy_of(pristine, "pets", tmp_path)
    image, trimap = a_pet(root)
    Image.new("L", (30, 20), 2).save(trimap)
    err = check(capsys, "pets", root)
    assert f"label {trimap} is 30x20 (width x height) but its image {image} is 60x40" in err


def test_trimap_value_outside_1_to_3_is_named(capsys, pristine, tmp_path):
    root = copy_of(pristine, "pets", tmp_path)
    _, trimap = a_pet(root)
    values = np.asarray(Image.open(trimap)).copy()
    values[0, 0] = 7
    Image.fromarray(values).save(trimap)
    err = check(capsys, "pets", root)
    assert (f"{trimap}: values outside the classes (0-2) and the ignore index (255) after reduce_zero_label "
            f"(value k is class k-1): 7 (1 pixel)") in err


def test_cityscapes_label_id_outside_the_official_table_is_named(capsys, pristine, tmp_path):
    root = copy_of(pristine, "cityscapes", tmp_path)
    label = sorted((root / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))[-1]
    values = np.asarray(Image.open(label)).copy()
    values[1, 2] = 250
    Image.fromarray(values).save(label)
    err = check(capsys, "cityscapes", root)
    assert (f"{label}: values outside the classes (0-18) and the ignore index (255) after label_map: "
            f"250 (1 pixel)") in err


def test_study_run_refuses_bad_data_before_ray_starts(capsys, pristine, tmp_path):
    root = copy_of(pristine, "pets", tmp_path)
    _, trimap = a_pet(root)
    Image.new("L", (60, 40), 9).save(trimap)
    raw = smoke()
    raw["datasets"] = {"pets": {"root": str(root)}}  # no `generate`: the data must exist as it is
    raw["configurations"] = raw["configurations"][1:2]
    raw["tables"] = raw["tables"][1:2]
    del raw["pretraining"]
    err = fails(capsys, "run", write_spec(tmp_path, raw), "--storage", tmp_path / "studies")
    assert f"{trimap}: values outside the classes (0-2) and the ignore index (255)" in err and "9 (2,400 pixels)" in err
    assert not (tmp_path / "studies" / "smoke" / "plan.json").exists()


# -- study files ---------------------------------------------------------------------------
def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def write_spec(tmp_path: Path, raw: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def edited(change) -> dict:
    raw = smoke()
    change(raw)
    return raw


def rename_key(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def empty_space(raw: dict) -> None:
    del raw["configurations"], raw["tables"]
    raw["space"] = {"arch": {"grid": ["segformer_b0"]}, "pretrain": {"grid": ["coco"]}}


SPEC_CASES = {
    "unknown key": (
        lambda raw: rename_key(raw["train"], "epochs", "epoch"),
        ["study.yaml: train.epoch: unknown key; did you mean 'epochs'?"]),
    "unknown top-level key": (
        lambda raw: rename_key(raw, "seeds", "seed"),
        ["study.yaml: seed: unknown key; did you mean 'seeds'?"]),
    "wrong type": (
        lambda raw: raw["train"].update(batch_size="sixteen"),
        ["study.yaml: train.batch_size: expected an integer, got 'sixteen'"]),
    "lr zero": (
        lambda raw: raw["configurations"][2].update(lr=0),
        ["study.yaml: configurations[2].lr: expected a number > 0, got 0"]),
    "lr negative": (
        lambda raw: raw["train"].update(lr=-1e-3),
        ["study.yaml: train.lr: expected a number > 0, got -0.001"]),
    "unknown architecture": (
        lambda raw: raw["configurations"][0].update(arch="unet"),
        ["study.yaml: configurations[0].arch: ", "expected one of ['segformer_b0', ", "'fcn_resnet50', ",
         "or a model factory module:function, got 'unet'"]),
    "architecture x pretraining": (
        lambda raw: raw["configurations"][1].update(pretrain="coco"),
        ["study.yaml: configurations[1].pretrain: configuration 'segformer_scratch': no 'coco' weights exist for "
         "segformer_b0 (the segformer family has: imagenet)"]),
    "empty search space": (
        empty_space,
        ["study.yaml: space: empty search space: nothing left to run (1 dropped: no 'coco' weights exist for "
         "segformer_b0 (the segformer family has: imagenet))"]),
    "pretraining source without a job": (
        lambda raw: raw.pop("pretraining"),
        ["study.yaml: configurations[2].pretrain: configuration 'segformer_cityscapes_finetune': pretrain "
         "'cityscapes' is not 'none', 'imagenet', 'coco', a weights file or a source declared under pretraining "
         "(declared: [])",
         "declare its job: `pretraining: {cityscapes: {dataset: ...}}`",
         "configurations[4].pretrain"]),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_bad_study_file(capsys, tmp_path, case):
    change, expected = SPEC_CASES[case]
    err = fails(capsys, "run", write_spec(tmp_path, edited(change)), "--storage", tmp_path / "studies")
    for text in expected:
        assert text in err
    assert "matches no trial" not in err  # a rejected configuration's table rows do not repeat its problem
    assert not (tmp_path / "studies").exists()  # nothing was written: validation comes first


def test_bad_override_names_the_set_option(capsys, tmp_path):
    err = fails(capsys, "run", SMOKE, "--storage", tmp_path / "studies", "--set", "train.lr=-1")
    assert "smoke.yaml: train.lr: expected a number > 0, got -1.0 (from --set train.lr=-1)" in err


# -- unknown studies ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """A storage holding two real studies, each left as a driver leaves it when stopped as Ray starts.

    `study run` generates the data, builds the caches and writes spec.yaml and plan.json before
    Ray starts; Ctrl-C at that moment (here: ray.init raising KeyboardInterrupt) ends the driver.
    """
    import ray

    base = tmp_path_factory.mktemp("known")
    raw = smoke()
    raw["datasets"]["pets"] = {"root": str(base / "pets"), "generate": {"train": 2, "val": 1, "seed": 0}}
    raw["configurations"] = raw["configurations"][1:2]
    raw["tables"] = raw["tables"][1:2]
    raw["seeds"] = 1
    del raw["pretraining"], raw["datasets"]["cityscapes"]
    spec = write_spec(base, raw, "known.yaml")
    patch = pytest.MonkeyPatch()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    patch.setattr(ray, "init", interrupted)
    try:
        for name in ("smoke-alpha", "smoke-beta"):
            assert main(["run", str(spec), "--name", name, "--storage", str(base / "studies")]) == 130
    finally:
        patch.undo()
    return base / "studies"


@pytest.mark.parametrize("command", [
    ["resume", "nosuch"],
    ["status", "nosuch"],
    ["status", "nosuch", "--json"],
    ["report", "nosuch"],
    ["export", "nosuch", "--out", "OUT"],
])
def test_unknown_study_lists_the_known_ones(capsys, storage, tmp_path, command):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    err = fails(capsys, *argv, "--storage", storage)
    assert f"error: no study named 'nosuch' in storage {storage} (known studies: smoke-alpha, smoke-beta)" in err
    assert not (tmp_path / "out").exists()


def test_unknown_study_suggests_the_closest_name(capsys, storage):
    main(["list", "--storage", str(storage)])
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["smoke-alpha", "smoke-beta"]
    err = fails(capsys, "status", "smoke-alhpa", "--storage", storage)
    assert "(known studies: smoke-alpha, smoke-beta); did you mean 'smoke-alpha'?" in err
    err = fails(capsys, "report", "smoke-alpha", "--compare", "smoke-gamma", "--storage", storage,
                "--out", storage.parent / "report")
    assert "no study named 'smoke-gamma'" in err and "known studies: smoke-alpha, smoke-beta" in err


def test_unknown_study_in_an_empty_storage(capsys, tmp_path):
    err = fails(capsys, "resume", "nosuch", "--storage", tmp_path / "empty")
    assert f"no study named 'nosuch' in storage {tmp_path / 'empty'} (known studies: none)" in err


# -- storage on an S3-compatible object store ---------------------------------------------------
@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A loopback S3 server (moto) without buckets."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture
def aws_credentials(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


@pytest.mark.parametrize("command", [["run", str(SMOKE)], ["status", "smoke"]])
def test_missing_bucket_is_named(capsys, s3_endpoint, aws_credentials, command):
    uri = f"s3://no-such-bucket/studies?endpoint_override={s3_endpoint}&scheme=http"
    err = fails(capsys, *command, "--storage", uri)
    assert err == f"error: --storage {uri!r}: bucket 'no-such-bucket' does not exist; create it first\n"


def test_unreachable_s3_endpoint_is_named(capsys, aws_credentials):
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    uri = f"s3://segstudy/studies?endpoint_override={endpoint}&scheme=http"
    err = fails(capsys, "run", SMOKE, "--storage", uri)
    assert err.startswith(f"error: --storage {uri!r}: cannot open bucket 'segstudy' (")
    assert endpoint in err and "check the endpoint and the credentials" in err


def test_unknown_s3_option_is_named(capsys, aws_credentials):
    uri = "s3://segstudy/studies?endpoint=127.0.0.1:9000"
    err = fails(capsys, "run", SMOKE, "--storage", uri)
    assert f"--storage {uri!r}: not a storage URI pyarrow can open" in err and "'endpoint'" in err


# -- weights ----------------------------------------------------------------------------------
def test_imagenet_weights_absent_offline_name_the_cache_file_and_the_local_path_option(
        capsys, monkeypatch, pristine, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    err = fails(capsys, "train", "--arch", "fcn_resnet50", "--pretrain", "imagenet", "--dataset", "pets",
                "--data-root", pristine["pets"], "--epochs", "1", "--batch-size", "2", "--image-size", "32",
                "--device", "cpu", "--out", tmp_path / "run")
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert f"expected the file {expected}" in err and "Nothing can be downloaded here" in err
    assert "--pretrain /path/to/resnet50.pth" in err and "pretrain: /path/to/resnet50.pth" in err


def test_missing_local_weights_file_is_named(capsys, pristine, tmp_path):
    err = fails(capsys, "train", "--arch", "segformer_b0", "--pretrain", tmp_path / "encoder.pt", "--dataset", "pets",
                "--data-root", pristine["pets"], "--epochs", "1", "--image-size", "32", "--out", tmp_path / "run")
    assert f"pretrain: no weights file at '{tmp_path / 'encoder.pt'}'" in err


# -- the installed command: no traceback, unless --debug ---------------------------------------
def run_installed(*argv: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("study")), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_installed_command_prints_one_line_without_traceback(tmp_path):
    spec = write_spec(tmp_path, edited(lambda raw: raw["configurations"][0].update(arch="unet")))
    process = run_installed("run", str(spec), "--storage", str(tmp_path / "studies"))
    assert process.returncode == 2
    name = edited(lambda raw: None)["configurations"][0]["name"]
    assert process.stderr == (f"error: {spec}: configurations[0].arch: configuration {name!r}: expected one of "
                              f"{list(known_archs())} or a model factory module:function, got 'unet'\n")


def test_debug_shows_the_traceback(capsys, tmp_path):
    with pytest.raises(StudyError, match="no study named 'nosuch'"):
        main(["--debug", "status", "nosuch", "--storage", str(tmp_path)])
    process = run_installed("status", "nosuch", "--storage", str(tmp_path), "--debug")
    assert process.returncode != 0
    assert "Traceback (most recent call last)" in process.stderr
    assert "study.errors.StudyError: no study named 'nosuch'" in process.stderr
