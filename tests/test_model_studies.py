"""Model families through the real `study` command: a grid over every architecture (and a user's factory),
built-in and file weights found on the driver, copied once into the storage and read by the trials,
models.yaml with ASHA, and what cannot work refused before Ray starts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from study.reading.results import load_results
from study.storage import Storage
from tests.study_helpers import REPO, SPECS, run_study_cli, study_env
from trainables.checkpoint import load_weights
from trainables.data import synth_dataset
from trainables.models import known_archs

pytestmark = pytest.mark.slow
FACTORY = "tests.factory_models:tiny"


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pets")
    synth_dataset("pets", root, train=8, val=4, seed=0)
    return root


def write_study(root: Path, data: Path, space: dict, **extra) -> Path:
    raw = {"name": "archs", "datasets": {"pets": {"root": str(data)}},
           "train": {"dataset": "pets", "image_size": [32, 32], "epochs": 1, "batch_size": 4, "val_interval": 1,
                     "device": "cpu"},
           "space": space, "seeds": 1, "max_concurrent": 2, **extra}
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def env_with(storage: Path, **variables) -> dict:
    """The study's environment with the repository importable (the factory lives in tests/), as on every node."""
    return {**study_env(storage), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            **variables}


def test_a_grid_over_every_architecture_and_a_factory(tmp_path, pets):
    archs = [*known_archs(), FACTORY]
    spec = write_study(tmp_path, pets, {"arch": {"grid": archs}})
    storage = tmp_path / "studies"
    run = run_study_cli(["run", str(spec)], tmp_path, storage, env=env_with(storage))
    assert "study archs finished" in run.stderr
    results = load_results(Storage(storage), "archs")
    main = results.trials.set_index("arch")
    assert sorted(main.index) == sorted(archs) and set(main["status"]) == {"finished"}
    assert results.plan.factories[FACTORY]["sha256"]  # the plan names the factory's source
    done = run_study_cli(["report", "archs", "--out", str(tmp_path / "report")], tmp_path, storage,
                         env=env_with(storage))
    text = (tmp_path / "report" / "report.md").read_text()
    assert "segformer_b3 (paper stem)" in text and "lraspp_mobilenet_v3_large" in text, done.stdout
    # the user's model is exported and predicted like any other
    key = main.loc[FACTORY, "trial_key"]
    run_study_cli(["export-model", "archs", "--trial", key, "--out", str(tmp_path / "model.pt2")], tmp_path, storage,
                  env=env_with(storage))
    assert (tmp_path / "model.pt2").stat().st_size > 0
    images = sorted((pets / "oxford-iiit-pet" / "images").glob("*.jpg"))[:2]
    run_study_cli(["predict", "archs", "--trial", key, "--images", *map(str, images), "--out",
                   str(tmp_path / "predicted")], tmp_path, storage, env=env_with(storage))
    assert len(list((tmp_path / "predicted" / "masks").rglob("*.png"))) == 2


def hub_files(tmp_path: Path) -> dict:
    """Weights files of the right shapes (random values) where the families look: torch's hub cache for
    torchvision, the Hugging Face hub cache for MiT-B0. Returns the environment pointing at them."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    from trainables.config import TrainConfig
    from trainables.models import build_model
    from trainables.models.mit_weights import to_dialect

    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(mobilenet_v3_large().state_dict(), checkpoints / "mobilenet_v3_large-5c1a4163.pth")
    torch.save(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).state_dict(),
               checkpoints / "lraspp_mobilenet_v3_large-d234d4ea.pth")
    encoder = build_model(TrainConfig(arch="segformer_b0", num_classes=3)).encoder.state_dict()
    snapshot = tmp_path / "hf" / "hub" / "models--nvidia--mit-b0" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    hf = {f"segformer.encoder.{k}": v.contiguous() for k, v in to_dialect(encoder, "Hugging Face").items()}
    save_file(hf, str(snapshot / "model.safetensors"))
    return {"TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf")}


def test_built_in_weights_are_copied_once_into_the_storage_and_read_by_the_trials(tmp_path, pets):
    variables = hub_files(tmp_path)
    spec = write_study(tmp_path, pets, {}, configurations=[
        {"name": "lraspp-imagenet", "arch": "lraspp_mobilenet_v3_large", "pretrain": "imagenet", "freeze": "encoder"},
        {"name": "lraspp-coco", "arch": "lraspp_mobilenet_v3_large", "pretrain": "coco", "freeze": "encoder"},
        {"name": "segformer-imagenet", "arch": "segformer_b0", "pretrain": "imagenet", "freeze": "encoder"}])
    storage = tmp_path / "studies"
    env = {**env_with(storage), **variables}
    env.pop("HF_HUB_CACHE", None)  # it would win over HF_HOME
    run = run_study_cli(["run", str(spec)], tmp_path, storage, env=env)
    assert "study archs finished" in run.stderr
    copies = {p.name: p for p in (storage / "_artifacts" / "weights").rglob("*.*")}
    assert sorted(copies) == ["lraspp_mobilenet_v3_large-d234d4ea.pth", "mobilenet_v3_large-5c1a4163.pth",
                              "model.safetensors"]
    results = load_results(Storage(storage), "archs")
    final = {row["config_name"]: load_weights(row["weights_final"]) for row in results.trials.to_dict("records")}
    # a frozen encoder ends as it was loaded: equal to the file's backbone
    coco = torch.load(copies["lraspp_mobilenet_v3_large-d234d4ea.pth"], weights_only=True)
    for key, value in final["lraspp-coco"].items():
        if key.startswith("encoder."):
            assert np.array_equal(value.numpy(), coco["backbone." + key[len("encoder."):]].numpy()), key
    mobilenet = torch.load(copies["mobilenet_v3_large-5c1a4163.pth"], weights_only=True)
    assert np.array_equal(final["lraspp-imagenet"]["encoder.0.0.weight"].numpy(),
                          mobilenet["features.0.0.weight"].numpy())
    assert not np.array_equal(final["lraspp-coco"]["encoder.0.0.weight"].numpy(),
                              final["lraspp-imagenet"]["encoder.0.0.weight"].numpy())


def test_missing_weights_and_a_broken_factory_are_named_before_ray_starts(tmp_path, pets, capsys, monkeypatch):
    from study.cli import main

    storage = tmp_path / "studies"
    spec = write_study(tmp_path, pets, {}, configurations=[
        {"name": "a", "arch": "deeplabv3_resnet50", "pretrain": "coco"}])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nowhere"))
    assert main(["run", str(spec), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    expected = tmp_path / "nowhere" / "hub" / "checkpoints" / "deeplabv3_resnet50_coco-cd0a2569.pth"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"expected the file {expected}" in errors[0]
    spec = write_study(tmp_path, pets, {}, configurations=[
        {"name": "b", "arch": "tests.factory_models:one_class_too_many"}])
    assert main(["run", str(spec), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "the model factory tests.factory_models:one_class_too_many gives (1, 4, " in err
    foreign = tmp_path / "foreign.pth"  # a state dict, but of no model of this arch: named once, before Ray starts
    torch.save({"conv.weight": torch.zeros(2, 3, 1, 1)}, foreign)
    spec = write_study(tmp_path, pets, {}, configurations=[
        {"name": "c", "arch": "lraspp_mobilenet_v3_large", "pretrain": str(foreign)}])
    assert main(["run", str(spec), "--storage", str(storage)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{foreign}" in errors[0] and "conv.weight" in errors[0], errors
    assert not Storage(storage).is_study("archs")


def test_models_yaml_searches_families_with_their_recipes_under_asha(tmp_path):
    storage = tmp_path / "studies"
    # no ImageNet or COCO files on this machine: the search keeps to untrained encoders
    run = run_study_cli(["run", str(SPECS / "models.yaml"), "--set", "space.pretrain=none",
                         "--set", "searcher.num_samples=4", "--set", "train.epochs=2"], tmp_path, storage)
    assert "study models finished" in run.stderr
    results = load_results(Storage(storage), "models")
    main = results.trials[results.trials["stage"] == "main"]
    assert len(main) == 4 and set(main["status"]) <= {"finished", "early_stopped"}
    for row in main.to_dict("records"):  # each family trained with its own recipe
        recipe = ("adamw", 10.0, True) if row["arch"].startswith("segformer") else ("sgd", 1.0, False)
        assert (row["optimizer"], row["head_lr_mult"], row["no_decay_norms"]) == recipe, row["trial_key"]
        assert row["scheduler"] == "poly" and row["loss"] in ("ce", "ce_dice", "focal")


@pytest.mark.parametrize("change", ["edited", "deleted"])
def test_a_factory_changed_after_planning_is_named(tmp_path, monkeypatch, change):
    from study.folder.files import factory_notes
    from study.planning.plan import make_plan
    from study.planning.spec import load_spec

    module = f"my_nets_{change}"  # a module of its own per case: imported modules stay in sys.modules
    package = tmp_path / f"{module}.py"
    package.write_text((REPO / "tests" / "factory_models.py").read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "pets"
    spec = write_study(tmp_path, data, {}, configurations=[{"name": "mine", "arch": f"{module}:tiny"}])
    plan = make_plan(load_spec(spec), lambda declaration, root: "fixed")
    assert plan.factories[f"{module}:tiny"]["source"] == str(package) and factory_notes(plan) == []
    if change == "edited":
        package.write_text(package.read_text() + "\n# a change after planning\n")
    else:
        package.unlink()
    note, = factory_notes(plan)
    assert note.startswith(f"the model factory {module}:tiny's source {package} ")
    assert ("was changed after the study was planned" if change == "edited" else "is gone") in note
