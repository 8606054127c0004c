"""Study files: the shipped ones plan as the seed report needs, and every mistake is a SpecError naming its key."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study.errors import SpecError
from study.planning.plan import make_plan
from study.planning.spec import load_spec, spec_from_dict

SPECS = Path(__file__).resolve().parents[1] / "search_spaces"


def fingerprint(dataset: str, root: str) -> str:
    return f"content-of-{dataset}"


def plan_of(name: str, overrides=(), data=fingerprint):
    return make_plan(load_spec(SPECS / f"{name}.yaml", overrides, environ={}), data)


def smoke() -> dict:
    return yaml.safe_load((SPECS / "smoke.yaml").read_text())


def error_of(raw, overrides=()) -> str:
    with pytest.raises(SpecError) as caught:
        spec_from_dict(raw, "study.yaml", overrides, environ={})
    return str(caught.value)


def set_path(raw: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return raw


# -- the shipped study files ---------------------------------------------------------
REPORT_ROWS = {"fcn_scratch", "fcn_imagenet", "segformer_scratch", "segformer_cityscapes_finetune",
               "segformer_cityscapes_frozen", "segformer_cityscapes_frozen_lr5e-4"}


def test_report_plans_six_configurations_times_three_seeds_after_one_pretraining_job():
    plan = plan_of("report")
    assert len(plan.trials) == 18 and plan.search is None and plan.dropped == []
    assert {t.config_name for t in plan.trials} == REPORT_ROWS
    assert {t.config["seed"] for t in plan.trials} == {0, 1, 2}
    assert len({t.trial_key for t in plan.trials}) == 18
    assert "segformer_cityscapes_frozen_lr5e-4-s1" in {t.trial_key for t in plan.trials}
    frozen = next(t.config for t in plan.trials if t.trial_key == "segformer_cityscapes_frozen_lr5e-4-s1")
    assert (frozen["pretrain"], frozen["freeze"], frozen["lr"], frozen["optimizer"], frozen["amsgrad"]) == (
        "cityscapes", "encoder", 5e-4, "adamw", True)
    assert (frozen["image_size"], frozen["epochs"], frozen["batch_size"], frozen["val_interval"]) == \
        ([64, 64], 30, 64, 2)
    assert (frozen["scheduler"], frozen["gamma"]) == ("exponential", 0.98)
    [job] = plan.pretrain_jobs
    assert (job.source, job.config["dataset"], job.config["arch"], job.config["segformer_stem"]) == (
        "cityscapes", "cityscapes", "segformer_b0", "paper")
    assert (job.config["epochs"], job.config["batch_size"], job.config["optimizer"], job.config["scheduler"]) == (
        31, 64, "adamw", "exponential")
    assert job.config["export_encoder"] == "last" and job.config["seed"] == 0
    assert plan.job_for("cityscapes", {"arch": "segformer_b0", "segformer_stem": "paper"}) == job
    assert Path(job.config["data_root"]).is_absolute()


def test_report_as_run_uses_the_seed_codes_settings():
    plan = plan_of("report_as_run")
    assert len(plan.trials) == 18 and {t.config_name for t in plan.trials} == REPORT_ROWS
    configs = {t.config_name: t.config for t in plan.trials}
    scratch = configs["segformer_scratch"]
    assert (scratch["optimizer"], scratch["lr"], scratch["amsgrad"], scratch["scheduler"], scratch["step_size"],
            scratch["gamma"]) == ("adamw", 6e-5, False, "step", 20, 0.5)
    for name in ("segformer_cityscapes_finetune", "segformer_cityscapes_frozen", "segformer_cityscapes_frozen_lr5e-4"):
        config = configs[name]
        assert (config["optimizer"], config["amsgrad"], config["weight_decay"], config["scheduler"],
                config["step_size"], config["gamma"], config["segformer_stem"]) == (
            "adam", False, 0.0, "step", 10, 0.1, "small_input")
    assert configs["segformer_cityscapes_frozen_lr5e-4"]["lr"] == 5e-4
    fcn_rows = {t.trial_key: t.config for t in plan.trials if t.config["arch"] == "fcn_resnet50"}
    assert fcn_rows == {t.trial_key: t.config for t in plan_of("report").trials if t.config["arch"] == "fcn_resnet50"}
    [job] = plan.pretrain_jobs
    assert (job.config["optimizer"], job.config["lr"], job.config["amsgrad"], job.config["weight_decay"],
            job.config["scheduler"], job.config["step_size"], job.config["gamma"], job.config["epochs"]) == (
        "adam", 1e-3, False, 0.0, "step", 10, 0.1, 31)
    assert (job.config["segformer_stem"], job.config["export_encoder"]) == ("small_input", "last")


def test_smoke_is_report_without_the_imagenet_row_on_generated_data():
    spec = load_spec(SPECS / "smoke.yaml", environ={})
    plan = make_plan(spec, fingerprint)
    assert len(plan.trials) == 10 and len(plan.pretrain_jobs) == 1
    assert {t.config_name for t in plan.trials} == REPORT_ROWS - {"fcn_imagenet"}
    assert spec.generated("pets") == {"train": 32, "val": 16, "seed": 0}
    assert spec.generated("cityscapes") == {"train": 24, "val": 8, "seed": 0}
    assert spec.dataset_root("pets") == str(Path.cwd() / "data/smoke/pets")
    assert spec.used_datasets() == ["cityscapes", "pets"]
    assert plan.pretrain_jobs[0].config["epochs"] == 2


def test_search_offers_only_valid_variants_and_one_pretraining_job_per_stem():
    plan = plan_of("search")
    assert plan.trials == [] and plan.search.num_samples == 40 and plan.execution.searcher.seed == 0
    # Optuna's sampler arguments are pinned in the plan, not left to the installed Optuna's defaults
    assert (plan.execution.searcher.multivariate, plan.execution.searcher.constant_liar) == (True, True)
    variants = plan.search.variants
    assert not any(v["arch"] == "segformer_b0" and v["pretrain"] == "imagenet" for v in variants)
    assert not any(v["freeze"] == "encoder" and v["pretrain"] == "none" for v in variants)
    assert not any(v["arch"] == "fcn_resnet50" and v["pretrain"] == "cityscapes" for v in variants)
    assert not any(v["arch"] == "fcn_resnet50" and v["segformer_stem"] != "paper" for v in variants)
    assert len(variants) == len({tuple(sorted(v.items())) for v in variants}) == 9
    assert plan.search.float_dims == {"lr": ["loguniform", 1e-4, 3e-3]}
    assert plan.search.base_config["epochs"] == 30 and plan.search.base_config["image_size"] == [64, 64]
    assert sorted(job.config["segformer_stem"] for job in plan.pretrain_jobs) == ["paper", "small_input"]
    assert len({job.key for job in plan.pretrain_jobs}) == 2
    assert any("excluded by `exclude`" in why for why in plan.dropped)  # SegFormer x ImageNet, as the seed


def test_smoke_search_is_segformer_only():
    plan = plan_of("smoke_search")
    assert len(plan.search.variants) == 6 and plan.search.base_config["arch"] == "segformer_b0"
    assert plan.search.num_samples == 6 and len(plan.pretrain_jobs) == 2


def test_spec_as_run_loads_back_to_the_same_study_from_any_folder(tmp_path, monkeypatch):
    spec = load_spec(SPECS / "smoke.yaml", ["train.epochs=2"], environ={"SEGSTUDY_PETS_ROOT": "/data/pets"})
    stored = tmp_path / "spec.yaml"
    stored.write_text(spec.to_yaml())
    assert "# --set train.epochs=2" in stored.read_text()
    monkeypatch.chdir(tmp_path)
    again = load_spec(stored, environ={})
    assert again.configurations == spec.configurations and again.tables == spec.tables
    assert again.dataset_root("pets") == "/data/pets"


# -- datasets, overrides, pretraining keys ------------------------------------------------
def test_dataset_root_precedence_is_environment_then_set_then_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_spec(SPECS / "smoke.yaml", environ={}).dataset_root("pets") == str(tmp_path / "data/smoke/pets")
    by_set = load_spec(SPECS / "smoke.yaml", ["datasets.pets.root=elsewhere"], environ={})
    assert by_set.dataset_root("pets") == str(tmp_path / "elsewhere")
    by_env = load_spec(SPECS / "smoke.yaml", ["datasets.pets.root=elsewhere"],
                       environ={"SEGSTUDY_PETS_ROOT": "/data/pets"})
    assert by_env.dataset_root("pets") == "/data/pets"
    assert make_plan(by_env, fingerprint).trials[0].config["data_root"] == "/data/pets"
    declared = load_spec(SPECS / "smoke.yaml", ["datasets.pets.env=PETS"], environ={"PETS": "/p"})
    assert declared.dataset_root("pets") == "/p"


def test_overrides_reach_lists_and_new_keys():
    spec = load_spec(SPECS / "smoke.yaml", ["configurations[0].lr=1e-4", "configurations.1.epochs=3",
                                            "searcher.num_samples=4", "max_concurrent=null"], environ={})
    configs = {c.name: c.config for c in spec.configurations}
    assert configs["fcn_scratch"]["lr"] == 1e-4 and configs["segformer_scratch"]["epochs"] == 3
    assert spec.searcher.num_samples == 4 and spec.max_concurrent is None


def test_pretraining_key_changes_with_what_shapes_the_encoder_only():
    key = plan_of("smoke").pretrain_jobs[0].key
    assert len(key) == 16 and plan_of("smoke").pretrain_jobs[0].key == key
    assert plan_of("smoke", data=lambda dataset, root: "other content").pretrain_jobs[0].key != key
    for changed in ("pretraining.cityscapes.epochs=3", "pretraining.cityscapes.lr=5e-4",
                    "pretraining.cityscapes.seed=1"):
        assert plan_of("smoke", [changed]).pretrain_jobs[0].key != key, changed
    for same in ("datasets.cityscapes.root=/elsewhere", "pretraining.cityscapes.device=cpu",
                 "pretraining.cityscapes.num_threads=2", "train.epochs=2"):
        assert plan_of("smoke", [same]).pretrain_jobs[0].key == key, same


def test_cross_product_drops_invalid_and_excluded_combinations_and_says_why():
    raw = smoke()
    del raw["configurations"], raw["tables"]
    raw["space"] = {"arch": {"grid": ["fcn_resnet50", "segformer_b0"]}, "pretrain": {"grid": ["none", "cityscapes"]},
                    "freeze": {"grid": ["none", "encoder"]}, "segformer_stem": {"grid": ["paper", "small_input"]}}
    raw["exclude"] = [{"segformer_stem": "small_input", "freeze": "encoder"}]
    spec = spec_from_dict(raw, "study.yaml", environ={})
    names = [c.name for c in spec.configurations]
    assert names == ["fcn_resnet50-none-none-paper", "segformer_b0-none-none-paper",
                     "segformer_b0-none-none-small_input",
                     "segformer_b0-cityscapes-none-paper", "segformer_b0-cityscapes-none-small_input",
                     "segformer_b0-cityscapes-encoder-paper"]
    dropped = " | ".join(spec.dropped)
    assert "excluded by `exclude`" in dropped and "needs a pretrained encoder" in dropped
    assert "makes segformer_b0 encoders, not fcn_resnet50" in dropped
    assert "same settings as an earlier configuration" in dropped  # the fcn stems
    assert make_plan(spec, fingerprint).dropped == list(spec.dropped)


# -- mistakes -----------------------------------------------------------------------
def test_unknown_keys_suggest_the_closest_known_one():
    raw = smoke()
    raw["trian"] = raw.pop("train")
    assert "study.yaml: trian: unknown key; did you mean 'train'?" in error_of(raw)
    raw = set_path(smoke(), "train.epocs", 3)
    assert "train.epocs: unknown key; did you mean 'epochs'?" in error_of(raw)
    raw = set_path(smoke(), "scheduler.grace_perod", 3)
    assert "scheduler.grace_perod: unknown key; did you mean 'grace_period'?" in error_of(raw)
    raw = set_path(smoke(), "train.data_root", "/x")
    assert "train.data_root: not set here: data_root comes from datasets.<name>.root" in error_of(raw)


@pytest.mark.parametrize("path, value, expected", [
    ("train.epochs", "ten", "train.epochs: expected an integer, got 'ten'"),
    ("train.amsgrad", "yes please", "train.amsgrad: expected true or false, got 'yes please'"),
    ("train.image_size", "big", "train.image_size: expected N or [height, width] in pixels, got 'big'"),
    ("train.lr", "fast", "train.lr: expected a number, got 'fast'"),
    ("configurations.2.lr", -1, "configurations[2].lr: expected a number > 0, got -1"),
    ("train.lr", 0, "train.lr: expected a number > 0, got 0"),
    ("train.epochs", 0, "train.epochs: expected an integer from 1 to 100000, got 0"),
    ("seeds", 0, "seeds: expected a number of seeds from 1 to 1000 or a list of at most 1000 distinct integers"),
    ("seeds", [1, 1], "seeds: expected a number of seeds from 1 to 1000 or a list of at most 1000 distinct integers"),
    ("seeds", [2**32], "seeds: expected a number of seeds from 1 to 1000 or a list of at most 1000 distinct integers "
                       "from 0 to 4294967295, got a list [4294967296]"),
    ("max_concurrent", 0, "max_concurrent: expected an integer from 1 to 100,000, got 0"),
    ("searcher.type", "random", "searcher.type: expected one of ['grid', 'optuna'], got 'random'"),
    ("scheduler.type", "ashe", "scheduler.type: expected one of ['fifo', 'asha'], got 'ashe'; did you mean 'asha'?"),
    ("resources.cpu", 0, "resources.cpu: expected a number > 0 and <= 1024, got 0"),
    ("resources.gpu", 1.5, "resources.gpu: expected a fraction of one GPU or a whole number of GPUs, got 1.5"),
    ("datasets.pets.generate.train", 0, "datasets.pets.generate.train: expected an integer from 1 to 100,000, got 0"),
    ("train.image_size", 100000, "train.image_size: expected (height, width) of 16 to 4096 pixels each"),
    ("searcher.num_samples", 10**9, "searcher.num_samples: expected an integer from 1 to 100,000"),
    ("train", [1, 2], "train: expected a mapping, got a list [1, 2]"),
    ("configurations.0.name", "a/b", "configurations[0].name: expected a configuration name of letters"),
    ("configurations.1.name", "fcn_scratch", "configurations[1].name: 'fcn_scratch' is already the name of "
                                             "configurations[0]"),
    ("tables.0.columns", ["val_miou", "test_miou"], "tables[0].columns: expected one of ['train_loss', 'train_miou', "
                                                    "'val_loss', 'val_miou', 'best_val_miou'], got 'test_miou'"),
    ("tables.0.rows.0.match", {"colour": "red"}, "tables[0].rows[0].match.colour: unknown key; expected one of "
                                                 "['trial_key', 'stage', 'config_name', 'status', 'arch', "),
    ("tables.0.rows.0.match", {"batch_size": "big"}, "tables[0].rows[0].match.batch_size: expected an integer"),
    ("tables.0.rows.0.match", {"optimizer": "rmsprop"}, "tables[0].rows[0].match.optimizer: expected one of "
                                                        "['adamw', 'adam', 'sgd'], got 'rmsprop'"),
    ("tables.0.rows.0.match", {"config_name": "nope"},
     "tables[0].rows[0].match: {'config_name': 'nope'} matches no trial of this study"),
    ("datasets.kitti", {"root": "x"}, "datasets.kitti.format: required: one of ['folder', 'parquet', 'pets', "),
    ("datasets.kitti", {"root": "x", "format": "folder", "mask_suffix": ".jpg"},
     "datasets.kitti.mask_suffix: "),
    ("train.dataset", "cityscape", "train.dataset: 'cityscape' is not declared under datasets (declared: "
                                   "['cityscapes', 'pets']); did you mean 'cityscapes'?"),
    ("pretraining.cityscapes.export_encoder", "none", "pretraining.cityscapes.export_encoder: expected last or best"),
    ("space", {"lr": {"loguniform": [1e-4, 1e-3]}}, "space.lr.loguniform: loguniform needs a searcher "
                                                    "(searcher.type: optuna)"),
])
def test_a_wrong_value_names_its_key_path_and_what_was_expected(path, value, expected):
    assert expected in error_of(set_path(smoke(), path, value))


def test_unknown_architecture():
    message = error_of(set_path(smoke(), "configurations.0.arch", "unet"))
    assert "study.yaml: configurations[0].arch: configuration 'fcn_scratch': expected one of [" in message
    assert "'fcn_resnet50', " in message and "or a model factory module:function, got 'unet'" in message


def test_segformer_with_coco_weights_is_an_error_for_an_explicit_configuration():
    message = error_of(set_path(smoke(), "configurations.1.pretrain", "coco"))  # segformer_scratch
    assert ("configurations[1].pretrain: configuration 'segformer_scratch': no 'coco' weights exist for segformer_b0 "
            "(the segformer family has: imagenet)") in message


def test_freezing_without_a_pretrained_encoder_is_an_error():
    message = error_of(set_path(smoke(), "configurations.3.pretrain", "none"))
    assert "configurations[3].freeze: configuration 'segformer_cityscapes_frozen': freeze 'encoder' needs" in message


def test_a_pretrain_source_without_a_pretraining_job():
    raw = smoke()
    del raw["pretraining"]
    message = error_of(raw)
    assert ("configurations[2].pretrain: configuration 'segformer_cityscapes_finetune': pretrain 'cityscapes' is not "
            "'none', 'imagenet', 'coco', a weights file or a source declared under pretraining (declared: [])"
            ) in message
    raw = set_path(smoke(), "configurations.2.pretrain", "cityscape")
    assert "did you mean 'cityscapes'?" in error_of(raw)


def test_an_invalid_pretraining_job_is_caught_before_planning():
    message = error_of(set_path(smoke(), "pretraining.cityscapes.lr", -1))
    assert "study.yaml: pretraining.cityscapes.lr: expected a number > 0, got -1" in message
    message = error_of(set_path(smoke(), "pretraining.cityscapes.arch", "fcn_resnet50"))
    assert ("configuration 'segformer_cityscapes_finetune': pretraining 'cityscapes' makes fcn_resnet50 encoders"
            in message)


def test_empty_search_space_says_why():
    raw = smoke()
    del raw["configurations"], raw["tables"]
    raw["space"] = {"arch": {"grid": ["segformer_b0"]}, "pretrain": {"grid": ["coco"]}}
    message = error_of(raw)
    assert "study.yaml: space: empty search space: nothing left to run (1 dropped: no 'coco' weights" in message
    raw["space"] = {}
    assert "configurations: empty search space" in error_of(raw)


def test_optuna_studies_take_one_seed_and_no_explicit_configurations():
    raw = yaml.safe_load((SPECS / "smoke_search.yaml").read_text())
    assert "seeds: an optuna study runs one seed" in error_of(raw, ["seeds=2"])
    assert "configurations: an optuna study samples `space`" in error_of(raw, ["configurations=[{name: a}]"])
    assert "space.freeze.uniform: uniform is for number settings such as lr" in error_of(
        raw, ["space.freeze={uniform: [0, 1]}"])
    assert "space.lr.loguniform: expected [low, high] with 0 < low < high, got a list [0, 1]" in error_of(
        raw, ["space.lr={loguniform: [0, 1]}"])
    assert "space.gamma: expected weight_decay" not in error_of(raw, ["space.gamma={uniform: [0.5, 2.0]}"])
    assert "space.gamma: expected a number in (0, 1], got 2.0" in error_of(raw, ["space.gamma={uniform: [0.5, 2.0]}"])


def test_asha_grace_period_must_fit_the_epochs():
    raw = yaml.safe_load((SPECS / "smoke_search.yaml").read_text())
    assert "scheduler.grace_period: expected at most train.epochs (4), got 5" in \
        error_of(raw, ["scheduler.grace_period=5"])


def test_every_problem_is_reported_at_once():
    raw = set_path(set_path(smoke(), "train.epochs", "x"), "seeds", -1)
    message = error_of(raw)
    assert message.startswith("study.yaml: train.epochs: expected an integer, got 'x' (and 1 more problem(s) below)")
    assert "\n  study.yaml: seeds: expected" in message


def test_bad_overrides_name_themselves():
    assert "study.yaml: --set 'epochs': expected KEY.PATH=VALUE" in error_of(smoke(), ["epochs"])
    assert "--set 'configurations.9.lr=1': configurations.9 is not an index of a list of 5" in error_of(
        smoke(), ["configurations.9.lr=1"])
    assert "--set 'name.x=1': name is a value, not a mapping" in error_of(smoke(), ["name.x=1"])
    assert "train.epochs: expected an integer, got 'many' (from --set train.epochs=many)" in error_of(
        smoke(), ["train.epochs=many"])


def test_file_errors(tmp_path):
    with pytest.raises(SpecError, match="missing.yaml: no such study file"):
        load_spec(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntrain: [1, 2\n")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML at line 3, column 1"):
        load_spec(broken)
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: x\ntrain: {}\ntrain: {}\n")
    with pytest.raises(SpecError, match=r"twice.yaml: not valid YAML at line 3, column 1: duplicate key 'train'"):
        load_spec(twice)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SpecError, match="empty.yaml: expected a mapping of study keys at the top level, got nothing"):
        load_spec(empty)


# -- robustness --------------------------------------------------------------------------
KEYS = st.sampled_from(["train", "datasets", "configurations", "space", "pretraining", "tables", "seeds", "searcher",
                        "scheduler", "resources", "exclude", "epochs", "lr", "arch", "pretrain", "freeze", "dataset",
                        "segformer_stem", "image_size", "pets", "cityscapes", "rows", "match", "columns", "generate",
                        "root", "env", "name", "grid", "choice", "loguniform", "type", "num_samples", 0, 1, 2])
LEAVES = (st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True, allow_infinity=True)
          | st.text(max_size=6) | st.sampled_from(["segformer_b0", "fcn_resnet50", "imagenet", "cityscapes", "none",
                                                   "encoder", "optuna", "asha", "1e-3", "small_input", "pets"]))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=6)


SOURCES = [yaml.safe_load((SPECS / f"{name}.yaml").read_text()) for name in ("smoke", "smoke_search")]


@st.composite
def mutated_study(draw) -> dict:
    """A shipped study file with 1-3 values replaced or added at random depths."""
    raw = copy.deepcopy(draw(st.sampled_from(SOURCES)))
    for _ in range(draw(st.integers(1, 3))):
        node = raw
        while True:
            if isinstance(node, dict):
                key = draw(st.sampled_from(sorted(node, key=str)) | KEYS) if node else draw(KEYS)
            elif node:
                key = draw(st.integers(0, len(node) - 1))
            else:
                break
            child = node.get(key) if isinstance(node, dict) else node[key]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            node[key] = draw(VALUES)
            break
    return raw


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_study())
def test_random_study_files_load_or_raise_spec_error(raw):
    try:
        spec = spec_from_dict(raw, "fuzz.yaml", environ={})
    except SpecError:
        return
    make_plan(spec, fingerprint)  # a spec that loads also plans, and its spec as run loads again
    spec_from_dict(yaml.safe_load(spec.to_yaml()), "again.yaml", environ={})


# The plans of the seed protocol as segstudy planned them before any setting was added (2026-12, plan format 3):
# every trial, every setting's value, the pretraining job and its key (with a fixed dataset fingerprint).
SEED_PLANS = json.loads((Path(__file__).parent / "specs" / "seed_protocol_plans.json").read_text())


@pytest.mark.parametrize("name", sorted(SEED_PLANS))
def test_the_seed_protocol_keeps_its_plan(name):
    spec = load_spec(Path(__file__).parents[1] / "search_spaces" / f"{name}.yaml", environ={})
    plan = make_plan(spec, lambda dataset, root: "fixedfingerprint")
    expected = SEED_PLANS[name]
    assert {t.trial_key for t in plan.trials} == set(expected["trials"])
    for trial in plan.trials:
        for setting, value in expected["trials"][trial.trial_key].items():
            assert trial.config[setting] == value, (trial.trial_key, setting)
    assert {job.trial_key: job.key for job in plan.pretrain_jobs} == \
        {key: job["key"] for key, job in expected["jobs"].items()}
    for job in plan.pretrain_jobs:
        for setting, value in expected["jobs"][job.trial_key]["config"].items():
            assert job.config[setting] == value, (job.trial_key, setting)
