import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from study.errors import SpecError
from study.plan import make_plan
from study.spec import load_spec, spec_from_dict

SPECS = Path(__file__).resolve().parents[1] / "search_spaces"
FINGERPRINT = lambda dataset, root: f"fp-{dataset}"  # noqa: E731


def plan_of(name: str):
    return make_plan(load_spec(SPECS / f"{name}.yaml", environ={}), FINGERPRINT)


def test_shipped_grid_studies_plan_to_the_expected_trials():
    report = plan_of("report")
    assert len(report.trials) == 18 and len(report.pretrain_jobs) == 1
    assert {t.config_name for t in report.trials} == {
        "fcn_scratch", "fcn_imagenet", "segformer_scratch", "segformer_cityscapes_finetune",
        "segformer_cityscapes_frozen", "segformer_cityscapes_frozen_lr5e-4"}
    assert sorted({t.config["seed"] for t in report.trials}) == [0, 1, 2]
    job = report.pretrain_jobs[0]
    assert (job.config["dataset"], job.config["epochs"], job.config["batch_size"], job.config["optimizer"]) == (
        "cityscapes", 31, 64, "adamw")
    assert job.config["export_encoder"] == "last"

    as_run = plan_of("report_as_run")
    assert len(as_run.trials) == 18 and len(as_run.pretrain_jobs) == 1
    scratch = next(t.config for t in as_run.trials if t.config_name == "segformer_scratch")
    assert (scratch["lr"], scratch["amsgrad"], scratch["scheduler"], scratch["step_size"], scratch["gamma"]) == (
        6e-5, False, "step", 20, 0.5)
    job = as_run.pretrain_jobs[0]
    assert (job.config["optimizer"], job.config["scheduler"], job.config["gamma"], job.config["segformer_stem"]) == (
        "adam", "step", 0.1, "small_input")

    smoke = plan_of("smoke")
    assert len(smoke.trials) == 10 and len(smoke.pretrain_jobs) == 1


def test_search_study_enumerates_only_valid_variants():
    plan = plan_of("search")
    assert plan.trials == [] and plan.search.num_samples == 40
    variants = plan.search.variants
    assert not any(v["arch"] == "segformer_b0" and v["pretrain"] == "imagenet" for v in variants)
    assert not any(v["freeze"] == "encoder" and v["pretrain"] == "none" for v in variants)
    assert not any(v["arch"] == "fcn_resnet50" and v["segformer_stem"] != "paper" for v in variants)
    assert len(variants) == len({tuple(sorted(v.items())) for v in variants}) == 9
    assert plan.search.float_dims == {"lr": ("loguniform", 1e-4, 3e-3)}
    assert sorted(job.config["segformer_stem"] for job in plan.pretrain_jobs) == ["paper", "small_input"]


def test_pretraining_key_changes_with_settings_and_data_only():
    spec = load_spec(SPECS / "smoke.yaml", environ={})
    key = make_plan(spec, FINGERPRINT).pretrain_jobs[0].key
    assert make_plan(spec, FINGERPRINT).pretrain_jobs[0].key == key
    assert make_plan(spec, lambda d, r: "other data").pretrain_jobs[0].key != key
    longer = load_spec(SPECS / "smoke.yaml", overrides=["pretraining.cityscapes.epochs=3"], environ={})
    assert make_plan(longer, FINGERPRINT).pretrain_jobs[0].key != key
    elsewhere = load_spec(SPECS / "smoke.yaml", overrides=["datasets.cityscapes.root=/elsewhere"], environ={})
    assert make_plan(elsewhere, FINGERPRINT).pretrain_jobs[0].key == key  # where the data is does not matter


def test_environment_overrides_a_dataset_root(tmp_path):
    spec = load_spec(SPECS / "report.yaml", environ={"SEGSTUDY_PETS_ROOT": str(tmp_path)})
    assert spec.dataset_root("pets") == str(tmp_path)
    assert make_plan(spec, FINGERPRINT).trials[0].config["data_root"] == str(tmp_path)


def valid() -> dict:
    return yaml.safe_load((SPECS / "smoke.yaml").read_text())


def error_of(raw, overrides=()) -> str:
    with pytest.raises(SpecError) as caught:
        spec_from_dict(raw, "study.yaml", overrides, environ={})
    return str(caught.value)


def test_unknown_key_suggests_the_closest():
    raw = valid()
    raw["trian"] = raw.pop("train")
    message = error_of(raw)
    assert "study.yaml: trian: unknown key; did you mean 'train'?" in message
    raw = valid()
    raw["train"]["epocs"] = 3
    assert "train.epocs: unknown key; did you mean 'epochs'?" in error_of(raw)


@pytest.mark.parametrize("path, value, expected", [
    ("train.epochs", "ten", "train.epochs: expected an integer, got 'ten'"),
    ("train.amsgrad", "yes please", "train.amsgrad: expected true or false"),
    ("train.lr", -1, "lr: expected a number > 0, got -1"),
    ("train.lr", 0, "lr: expected a number > 0, got 0"),
    ("seeds", 0, "seeds: expected a number of seeds >= 1"),
    ("max_concurrent", 0, "max_concurrent: expected an integer >= 1, got 0"),
    ("searcher.type", "random", "searcher.type: expected one of ['grid', 'optuna'], got 'random'"),
    ("resources.cpu", 0, "resources.cpu: expected a number > 0"),
])
def test_wrong_values_name_their_key_path(path, value, expected):
    raw = valid()
    node = raw
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    assert expected in error_of(raw)


def test_unknown_architecture():
    raw = valid()
    raw["configurations"][0]["arch"] = "unet"
    assert "configurations[0]: arch: expected one of ['fcn_resnet50', 'segformer_b0'], got 'unet'" in error_of(raw)


def test_invalid_architecture_and_pretraining_combination():
    raw = valid()
    raw["configurations"][1]["pretrain"] = "imagenet"  # segformer_scratch
    message = error_of(raw)
    assert "configurations[1]: configuration 'segformer_scratch'" in message
    assert "'imagenet' has weights only for fcn_resnet50" in message


def test_pretraining_source_without_a_job():
    raw = valid()
    del raw["pretraining"]
    message = error_of(raw)
    assert "pretrain 'cityscapes' names no pretraining job" in message


def test_empty_search_space():
    raw = valid()
    del raw["configurations"]
    del raw["tables"]
    raw["space"] = {"arch": {"grid": ["segformer_b0"]}, "pretrain": {"grid": ["imagenet"]}}
    message = error_of(raw)
    assert "space: empty search space" in message and "imagenet" in message


def test_every_problem_is_reported_at_once():
    raw = valid()
    raw["train"]["epochs"] = "x"
    raw["seeds"] = -1
    message = error_of(raw)
    assert "train.epochs" in message and "seeds" in message and "more problem" in message


def test_table_rows_must_match_a_configuration():
    raw = valid()
    raw["tables"][0]["rows"][0]["match"] = {"config_name": "nope"}
    assert "tables[0].rows[0].match: {'config_name': 'nope'} matches no configuration" in error_of(raw)


def test_overrides_apply_and_bad_ones_name_themselves(tmp_path):
    spec = load_spec(SPECS / "smoke.yaml", overrides=["train.epochs=2", "configurations.0.lr=1e-4"], environ={})
    assert spec.train["epochs"] == 2
    assert dict(spec.configurations)["fcn_scratch"]["lr"] == 1e-4
    assert "--set 'epochs'" in error_of(valid(), ["epochs"])
    assert "configurations.9 is not an index" in error_of(valid(), ["configurations.9.lr=1"])


def test_file_errors(tmp_path):
    with pytest.raises(SpecError, match="no such study file"):
        load_spec(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntrain: [1, 2\n")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_spec(broken)


def mutate(raw: dict, path: list, value):
    node = raw
    for part in path[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return raw
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        node[path[-1]] = value
    return raw


KEYS = st.sampled_from(["train", "datasets", "configurations", "space", "pretraining", "tables", "seeds", "searcher",
                        "scheduler", "resources", "epochs", "lr", "arch", "pretrain", "freeze", "pets", "cityscapes",
                        "rows", "match", "generate", "root", "image_size", "name", "exclude", "grid", "type", 0, 1])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 100) | st.floats(allow_nan=True) | st.text(max_size=8)
    | st.sampled_from(["segformer_b0", "fcn_resnet50", "imagenet", "cityscapes", "encoder", "optuna", "asha", "1e-3"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(KEYS, min_size=1, max_size=4), VALUES), min_size=1, max_size=3))
def test_random_study_files_load_or_raise_spec_error(mutations):
    raw = copy.deepcopy(valid())
    for path, value in mutations:
        raw = mutate(raw, path, value)
    try:
        spec = spec_from_dict(raw, "fuzz.yaml", environ={})
    except SpecError:
        return
    make_plan(spec, FINGERPRINT)  # a spec that loads also plans
