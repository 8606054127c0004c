"""Models out of a study: `study best`, `load_model`, `study predict` and `study export-model`.

The model tests start from a copy of the session's finished tiny study (tests/conftest.py: two
SegFormer trials at 32x32 on generated pets data); `best` is tested on fake studies with chosen
metrics (tests/fake_study.py), which need no training. Bad input goes through the real command
(`fails`: exit 2, one `error:` line, no traceback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from study.api import load_model, load_study
from study.cli import main
from study.planning.plan import PLAN_FILE
from tests.fake_study import fake_trial, table, write_fake_study
from tests.study_helpers import run_study_cli
from tests.test_bad_input import fails
from trainables.config import TrainConfig
from trainables.data import palette
from trainables.models import build_model

BEST, OTHER = "segformer_frozen-s0", "segformer_scratch-s0"  # the tiny study's main trials, best first


@pytest.fixture
def study(tmp_path, finished_tiny_study) -> Path:
    """A copy of the finished tiny study "t": returns the storage folder."""
    storage = tmp_path / "studies"
    shutil.copytree(finished_tiny_study, storage)
    return storage


def pets_root(storage: Path) -> Path:
    plan = json.loads((storage / "t" / PLAN_FILE).read_text())
    return Path(plan["trials"][0]["config"]["data_root"]) / "oxford-iiit-pet"


def validation_images(storage: Path) -> list[Path]:
    """The validation split's images in the split's order (sorted by path), as the trials validated them."""
    root = pets_root(storage)
    names = [line.split()[0] for line in (root / "annotations" / "test.txt").read_text().splitlines()]
    return sorted(root / "images" / f"{name}.jpg" for name in names)


def trial_row(storage: Path, key: str) -> dict:
    trials, _ = load_study("t", storage)
    return trials[trials["trial_key"] == key].iloc[0].to_dict()


# -- predict -----------------------------------------------------------------------------------
@pytest.mark.slow  # starts from the finished tiny study: one Ray run per session
def test_predict_on_the_validation_images_reproduces_the_recorded_val_miou(study, tmp_path, capsys):
    images = validation_images(study)
    trimaps = pets_root(study) / "annotations" / "trimaps"
    out = tmp_path / "predicted"
    # as a user runs it: the study's best trial, the weights of its best epoch
    done = run_study_cli(["predict", "t", "--images", *map(str, images), "--out", str(out), "--masks", str(trimaps),
                          "--device", "cpu"], tmp_path, study)
    summary = json.loads((out / "predictions.json").read_text())
    row = trial_row(study, BEST)
    assert summary["trial_key"] == BEST and summary["which"] == "best"
    # one confusion matrix over the split at the working resolution, exactly as the trial validated
    assert summary["overall"]["working"]["images"] == len(images) == 12
    assert summary["overall"]["working"]["miou"] == row["best_val_miou"] == summary["recorded_val_miou"]
    assert f"{row['best_val_miou']:.6f} at 32x32" in done.stdout
    assert 0 <= summary["overall"]["original"]["miou"] <= 1
    assert f"predict: {len(images)}/{len(images)} images" in done.stderr  # progress
    colours = np.array(palette("pets", 3), dtype=np.uint8)
    for image_path, entry in zip(images, summary["images"]):
        with Image.open(image_path) as original:
            size = original.size
        with Image.open(entry["mask"]) as mask:
            assert mask.mode == "P" and mask.size == size  # the original size, class ids coded in the palette
            ids = np.asarray(mask)
            assert np.array_equal(np.array(mask.getpalette()[:9], dtype=np.uint8).reshape(3, 3), colours)
        assert ids.max() <= 2 and Path(entry["mask"]).name == image_path.stem + ".png"
        with Image.open(entry["overlay"]) as overlay:
            assert overlay.size == (2 * size[0], size[1])  # side by side
        assert set(entry["miou_present"]) == {"working", "original"}
        assert image_path.name in done.stdout  # a per-image line

    # the other trial's last weights, in this process (one thread, as the trial validated)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["predict", "t", "--storage", str(study), "--trial", OTHER, "--which", "last", "--images",
                     *map(str, images), "--out", str(tmp_path / "other"), "--masks", str(trimaps)]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    summary = json.loads((tmp_path / "other" / "predictions.json").read_text())
    assert summary["trial_key"] == OTHER and summary["which"] == "last"
    assert summary["overall"]["working"]["miou"] == trial_row(study, OTHER)["final_val_miou"]


@pytest.mark.slow  # starts from the finished tiny study: one Ray run per session
def test_an_unreadable_image_is_named_and_skipped_and_the_command_fails_at_the_end(study, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for image in validation_images(study)[:3]:
        shutil.copy(image, folder)
    (folder / "broken.jpg").write_text("not a JPEG")
    (folder / "notes.txt").write_text("a file that is not an image by its suffix")
    text_file = tmp_path / "listed.png"
    text_file.write_text("named on the command line, so it is tried")
    out = tmp_path / "out"
    error = fails(capsys, "predict", "t", "--storage", study, "--images", folder, text_file, "--out", out)
    assert "2 of 5 image(s) could not be read and were skipped" in error
    assert "broken.jpg" in error and "listed.png" in error
    assert len(list((out / "masks").iterdir())) == 3 and len(list((out / "overlays").iterdir())) == 3
    summary = json.loads((out / "predictions.json").read_text())
    assert {Path(f["image"]).name for f in summary["failed"]} == {"broken.jpg", "listed.png"}
    # an output folder inside the image folder: its earlier outputs are not taken for images
    for _ in range(2):
        assert main(["predict", "t", "--storage", str(study), "--images", str(folder), "--out",
                     str(folder / "out")]) == 2
        assert "1 of 4 image(s) could not be read" in capsys.readouterr().err  # broken.jpg only, both times


# -- load_model and export-model ----------------------------------------------------------------
ISOLATED = """
import importlib.util, sys
sys.path.append(SITE)  # torch's site-packages, without its .pth files (an editable segstudy install is one)
found = [name for name in ("study", "trainables") if importlib.util.find_spec(name) is not None]
assert not found, f"importable here: {found}; sys.path {sys.path}"
import torch
program = torch.export.load(PROGRAM).module()
for batch in (1, 5):
    with torch.no_grad():
        torch.save(program(torch.load(f"in{batch}.pt", weights_only=True)), f"out{batch}.pt")
print("modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("study", "trainables")))
"""


@pytest.mark.slow  # starts from the finished tiny study: one Ray run per session
def test_the_exported_program_runs_with_torch_alone_and_equals_load_model(study, tmp_path):
    program = tmp_path / "export" / "model.pt2"
    run_study_cli(["export-model", "t", "--out", str(program)], tmp_path, study)
    sidecar = json.loads(program.with_suffix(".json").read_text())
    loaded = load_model("t", storage=study)
    row = trial_row(study, BEST)
    assert loaded.trial_key == sidecar["trial_key"] == BEST and loaded.which == sidecar["which"] == "best"
    assert loaded.model.training is False and loaded.input_size == (32, 32)
    assert sidecar["class_names"] == list(loaded.class_names) == ["pet", "background", "border"]
    assert sidecar["input"]["shape"] == ["batch", 3, 32, 32] and sidecar["input"]["range"] == [0.0, 1.0]
    assert sidecar["settings"] == loaded.settings and sidecar["settings"]["freeze"] == "encoder"
    assert sidecar["metrics"]["best_val_miou"] == row["best_val_miou"] == loaded.val_miou

    work = tmp_path / "isolated"  # nothing of the project here or on the path
    work.mkdir()
    inputs = {batch: torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) for batch in (1, 5)}
    for batch, images in inputs.items():
        torch.save(images, work / f"in{batch}.pt")
    site = os.path.dirname(os.path.dirname(torch.__file__))
    script = f"SITE = {site!r}\nPROGRAM = {str(program)!r}\n" + ISOLATED
    # -I: no PYTHONPATH, no user site, no script folder on the path; -S: no site-packages .pth files
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=work, capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "modules: []" in done.stdout
    for batch, images in inputs.items():
        exported = torch.load(work / f"out{batch}.pt", weights_only=True)
        with torch.no_grad():
            expected = loaded.model(loaded.normalize(images))
        assert exported.shape == (batch, 3, 32, 32)
        assert (exported - expected).abs().max().item() <= 1e-5

    # the plain state dict rebuilds the same model in code
    from safetensors.torch import load_file

    rebuilt = build_model(TrainConfig.from_dict({**sidecar["settings"], "pretrain": "none", "freeze": "none"}))
    rebuilt.load_state_dict(load_file(program.with_suffix(".safetensors")))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(loaded.normalize(inputs[5]).contiguous()).argmax(1),
                           loaded.model(loaded.normalize(inputs[5])).argmax(1))


# -- best ----------------------------------------------------------------------------------------
WEIGHTS = {"stand_in": torch.zeros(1)}  # `best` reads where weights are, not what they hold


def best(capsys, storage: Path, name: str, *args: str) -> dict:
    assert main(["best", name, "--storage", str(storage), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_best_picks_the_right_trial_by_each_metric_with_ties_broken_by_trial_key(tmp_path, capsys):
    trials = [
        fake_trial("late_peak", 0, [0.50, 0.70], weights=WEIGHTS),  # final 0.70 (and lowest val loss)
        fake_trial("early_peak", 0, [0.80, 0.60], weights=WEIGHTS),  # best 0.80, final 0.60
        fake_trial("b_tied", 0, [0.80, 0.55], weights=WEIGHTS),  # best 0.80 too: ties with early_peak
        fake_trial("errored", 0, [0.95], status="errored", error="RuntimeError: boom", epochs_planned=4),
        fake_trial("diverged", 0, [0.99, 0.2], diverge=True, weights=WEIGHTS),
    ]
    storage = write_fake_study(tmp_path / "studies", "known", trials)
    chosen = best(capsys, storage.root, "known")
    assert chosen["trial_key"] == "b_tied-s0" and chosen["ties"] == ["early_peak-s0"]  # "b_tied" < "early_peak"
    assert chosen["value"] == 0.80 and chosen["which"] == "best" and chosen["epoch"] == 2
    assert chosen["weights"].endswith("best.safetensors")  # its best epoch is not its last
    assert chosen["candidates"] == 3  # errored and diverged trials are not candidates
    chosen = best(capsys, storage.root, "known", "--by", "final_val_miou")
    assert chosen["trial_key"] == "late_peak-s0" and chosen["which"] == "last" and chosen["epoch"] == 4
    assert chosen["weights"].endswith("final.safetensors")
    chosen = best(capsys, storage.root, "known", "--by", "final_val_loss")
    assert chosen["trial_key"] == "late_peak-s0" and chosen["mode"] == "min"
    assert main(["best", "known", "--storage", str(storage.root)]) == 0
    text = capsys.readouterr().out
    assert "b_tied-s0" in text and "tied with early_peak-s0" in text and "weights of its best validated epoch" in text


def test_best_of_a_table_row_is_its_best_seed(tmp_path, capsys):
    trials = [fake_trial("a", seed, [0.5 + 0.1 * seed], weights=WEIGHTS) for seed in range(3)]
    trials += [fake_trial("b", seed, [0.9 - 0.1 * seed], weights=WEIGHTS) for seed in range(3)]
    tables = (table("main", [("row A", {"config_name": "a"}), ("row B", {"config_name": "b"})]),
              table("only_a", [("A again", {"config_name": "a"})]))
    storage = write_fake_study(tmp_path / "studies", "rows", trials, tables=tables)
    assert best(capsys, storage.root, "rows", "--table", "main", "--row", "row A")["trial_key"] == "a-s2"
    chosen = best(capsys, storage.root, "rows", "--table", "main", "--row", "row B")
    assert chosen["trial_key"] == "b-s0" and chosen["scope"] == "table main, row 'row B'" and chosen["candidates"] == 3
    assert best(capsys, storage.root, "rows", "--table", "main")["trial_key"] == "b-s0"
    assert best(capsys, storage.root, "rows", "--table", "only_a")["trial_key"] == "a-s2"
    error = fails(capsys, "best", "rows", "--storage", storage.root, "--table", "main", "--row", "row C")
    assert "no row 'row C'" in error and "'row A', 'row B'" in error
    error = fails(capsys, "best", "rows", "--storage", storage.root, "--table", "other")
    assert "no table 'other'" in error and "main, only_a" in error
    error = fails(capsys, "best", "rows", "--storage", storage.root, "--row", "row A")
    assert "--row needs --table" in error and "main, only_a" in error
    error = fails(capsys, "best", "rows", "--storage", storage.root, "--by", "val_miou")
    assert "unknown metric 'val_miou'" in error and "best_val_miou" in error and "final_val_loss" in error


def test_a_running_study_gives_its_ended_trials_and_names_the_others(tmp_path, capsys):
    segformer = build_model(TrainConfig(arch="segformer_b0", dataset="pets")).state_dict()
    trials = [fake_trial("done", 0, [0.4, 0.5], arch="segformer_b0", weights=segformer),
              fake_trial("going", 0, [0.9], arch="segformer_b0", status="running", epochs_planned=4),
              fake_trial("waiting", 0, [])]
    storage = write_fake_study(tmp_path / "studies", "live", trials, state="running")
    chosen = best(capsys, storage.root, "live")
    assert chosen["trial_key"] == "done-s0" and chosen["not_ended"] == ["going-s0 (running)", "waiting-s0 (pending)"]
    assert "going-s0 (running)" in chosen["notes"][0]
    loaded = load_model("live", storage=storage.root, which="last")
    assert loaded.trial_key == "done-s0" and loaded.epoch == 4 and "going-s0 (running)" in loaded.notes[0]
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(image)
    assert loaded.predict([image]).shape == (1, 64, 64)
    error = fails(capsys, "predict", "live", "--storage", storage.root, "--trial", "going-s0", "--images", image,
                  "--out", tmp_path / "out")
    assert "trial going-s0 of study live is running" in error and "trials with stored weights: done-s0" in error
    error = fails(capsys, "export-model", "live", "--storage", storage.root, "--trial", "nope-s0",
                  "--out", tmp_path / "m.pt2")
    assert "no trial 'nope-s0'" in error and "done-s0" in error


def test_a_study_with_no_finished_trial_says_so(tmp_path, capsys):
    trials = [fake_trial("going", 0, [0.9], status="running", epochs_planned=4),
              fake_trial("broken", 0, [0.3], status="errored", error="RuntimeError: boom", epochs_planned=4)]
    storage = write_fake_study(tmp_path / "studies", "early", trials, state="running")
    error = fails(capsys, "best", "early", "--storage", storage.root)
    assert "study early has no finished trial" in error and "1 running" in error and "1 errored" in error
    (tmp_path / "empty").mkdir()
    error = fails(capsys, "predict", "early", "--storage", storage.root, "--images", tmp_path / "empty",
                  "--out", tmp_path / "o")
    assert "no image files" in error


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.slow  # starts from the finished tiny study: one Ray run per session
def test_bad_input_to_predict_and_export_model(study, tmp_path, capsys):
    image = validation_images(study)[0]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    error = fails(capsys, "predict", "t", "--storage", study, "--images", image, "--out", blocker / "out")
    assert f"--out {blocker / 'out'}: cannot be written" in error
    error = fails(capsys, "export-model", "t", "--storage", study, "--out", blocker / "model.pt2")
    assert f"--out {blocker / 'model.pt2'}: cannot be written" in error
    error = fails(capsys, "export-model", "t", "--storage", study, "--out", tmp_path / "model.onnx")
    assert "expected a file name ending in .pt2" in error
    error = fails(capsys, "predict", "t", "--storage", study, "--images", image, "--out", tmp_path, "--batch-size", 0)
    assert "--batch-size: expected an integer >= 1, got 0" in error
    error = fails(capsys, "predict", "t", "--storage", study, "--images", tmp_path / "missing.jpg", "--out", tmp_path)
    assert "missing.jpg: no such file or folder" in error
    error = fails(capsys, "predict", "t", "--storage", study, "--trial", "segformer_scracth-s0", "--images", image,
                  "--out", tmp_path / "o")
    assert "no trial 'segformer_scracth-s0'" in error and OTHER in error
    error = fails(capsys, "predict", "t", "--storage", study, "--images", image, "--out", tmp_path / "o",
                  "--masks", tmp_path / "no-masks")
    assert "--masks" in error and "not a folder" in error
    error = fails(capsys, "predict", "nope", "--storage", study, "--images", image, "--out", tmp_path / "o")
    assert "no study named 'nope'" in error

    weights = Path(trial_row(study, BEST)["weights_best"])
    weights.unlink()  # a missing checkpoint
    error = fails(capsys, "predict", "t", "--storage", study, "--images", image, "--out", tmp_path / "o")
    assert f"trial {BEST}, best weights" in error and str(weights) in error and "cannot be read" in error
    error = fails(capsys, "export-model", "t", "--storage", study, "--out", tmp_path / "m.pt2")
    assert str(weights) in error
