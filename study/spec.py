"""Study files: load, apply --set overrides, validate completely before Ray starts.

A study file (YAML) has these keys; only `datasets` and `train` are required.

    name: report                 # default study name (`study run --name` overrides)
    description: "..."
    datasets:                    # every dataset the study uses: pets and/or cityscapes
      pets:
        root: data/pets          # relative to the working directory
        env: SEGSTUDY_PETS_ROOT  # optional; default SEGSTUDY_<NAME>_ROOT; when set it wins over root
        generate: {train: 48, val: 24, seed: 0}   # optional: generated data that `study run` creates
                                 # when the folder is missing; without it the data must exist
    train: {dataset: pets, image_size: [64, 64], epochs: 30, ...}   # TrainConfig fields for every main trial
    configurations:              # explicit rows: a name plus TrainConfig fields
      - {name: fcn_scratch, arch: fcn_resnet50, pretrain: none}
    space:                       # searched dimensions: a scalar (fixed), {grid: [...]}, {choice: [...]},
      lr: {loguniform: [1.0e-4, 3.0e-3]}          # {loguniform: [low, high]} or {uniform: [low, high]}
    exclude: [{arch: fcn_resnet50, freeze: encoder}]   # partial combinations to drop from `space`
    seeds: 3                     # N (seeds 0..N-1) or a list; an Optuna search uses one seed per sample
    searcher: {type: grid}       # or {type: optuna, num_samples: 20, seed: 0, storage: null}
    scheduler: {type: fifo}      # or {type: asha, metric: val_miou, mode: max, grace_period: 4, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}  # per trial; gpu may be a fraction (0.25: four trials share a GPU)
    max_concurrent: 2            # trials at once (default: as many as the CPUs allow)
    max_failures: 2              # retries of a failed trial, each from its last checkpoint
    pretraining:                 # sources a `pretrain` value may name, besides none and imagenet
      cityscapes: {dataset: cityscapes, epochs: 31, batch_size: 64}
    tables:                      # what `study report` shows
      - name: fcn
        title: "FCN-ResNet50: from scratch vs ImageNet backbone"
        columns: [train_miou, val_miou, train_loss, val_loss]
        rows: [{label: "FCN from scratch", match: {config_name: fcn_scratch}}]

Main configurations are the explicit `configurations` plus the cross product of `space`
(each over `train`), less `exclude` and the built-in rules: `imagenet` only for
fcn_resnet50; `freeze: encoder` only with a pretrained encoder; `segformer_stem` means
nothing for fcn_resnet50. An explicit configuration that breaks a rule is an error; a
combination of the cross product that does is dropped (and counted). A pretraining job
takes `arch` and `segformer_stem` from the trials that use it, so its encoder fits them.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from study.errors import SpecError
from trainables.config import TrainConfig
from trainables.errors import ConfigError

TOP_KEYS = ("name", "description", "datasets", "train", "configurations", "space", "exclude", "seeds", "searcher",
            "scheduler", "resources", "max_concurrent", "max_failures", "pretraining", "tables")
DATASET_NAMES = ("pets", "cityscapes")
FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
# Settings a study file does not give per trial: roots come from `datasets`.
NOT_SETTINGS = ("data_root",)
SETTING_NAMES = tuple(name for name in FIELD_TYPES if name not in NOT_SETTINGS)
TABLE_COLUMNS = ("train_loss", "train_miou", "val_loss", "val_miou", "best_val_miou")
MATCH_COLUMNS = ("config_name", "stage") + SETTING_NAMES
DIMENSION_KINDS = ("grid", "choice", "loguniform", "uniform")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str  # absolute, after the environment override
    env: str
    generate: dict | None


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # fixed | grid | choice | loguniform | uniform
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0

    @property
    def categorical(self) -> bool:
        return self.kind in ("fixed", "grid", "choice")


@dataclass(frozen=True)
class SearcherSpec:
    type: str = "grid"
    num_samples: int = 10
    seed: int = 0
    storage: str | None = None


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "fifo"
    metric: str = "val_miou"
    mode: str = "max"
    grace_period: int = 4
    reduction_factor: int = 2


@dataclass(frozen=True)
class ResourcesSpec:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class RowSpec:
    label: str
    match: dict


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[RowSpec, ...]


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    datasets: dict  # name -> DatasetSpec
    train: dict  # TrainConfig fields shared by every main trial
    configurations: tuple  # (name, settings) of a grid study, complete TrainConfig dicts
    space: tuple  # Dimension, as declared
    variants: tuple  # Optuna: valid categorical combinations (dicts)
    float_dims: dict  # Optuna: name -> (kind, low, high)
    dropped: tuple  # why combinations of the space were dropped
    seeds: tuple
    searcher: SearcherSpec
    scheduler: SchedulerSpec
    resources: ResourcesSpec
    max_concurrent: int | None
    max_failures: int
    pretraining: dict  # source -> TrainConfig fields
    tables: tuple  # TableSpec
    raw: dict
    source_path: str

    @property
    def train_settings(self) -> dict:
        return self.train

    def to_yaml(self) -> str:
        return f"# study file as run, from {self.source_path}\n" + yaml.safe_dump(self.raw, sort_keys=False)

    def dataset_root(self, name: str) -> str:
        return self.datasets[name].root

    def generated(self, name: str) -> dict | None:
        return self.datasets[name].generate

    def main_settings(self) -> list[dict]:
        """Every main configuration's settings (grid) or every variant over the base (search)."""
        if self.searcher.type == "grid":
            return [settings for _, settings in self.configurations]
        return [{**self.train, **variant} for variant in self.variants]

    def used_datasets(self) -> list[str]:
        used = {settings["dataset"] for settings in self.main_settings()}
        for settings in self.main_settings():
            if settings.get("pretrain") in self.pretraining:
                used.add(self.pretraining[settings["pretrain"]]["dataset"])
        return sorted(used)


# -- loading ---------------------------------------------------------------------
def load_spec(path: str | os.PathLike, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> StudySpec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read the study file ({error})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    return spec_from_dict(raw, str(path), overrides, environ)


def spec_from_dict(raw: Any, source: str, overrides: Sequence[str] = (),
                   environ: Mapping[str, str] | None = None) -> StudySpec:
    environ = os.environ if environ is None else environ
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of study keys at the top level, got {_kind(raw)}")
    raw = _apply_overrides(_plain_copy(raw), overrides, source)
    check = _Checker(source)
    spec = _validate(raw, check, environ)
    check.raise_if_any()
    assert spec is not None
    return spec


class _Checker:
    """Collects every problem found, so a user fixes a file in one round."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def raise_if_any(self) -> None:
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problem(s) below)" if len(self.problems) > 1 else ""
            lines = [f"{self.source}: {self.problems[0]}{more}"] + [f"  {self.source}: {p}" for p in self.problems[1:]]
            raise SpecError("\n".join(lines))

    def known_keys(self, mapping: dict, allowed: Sequence[str], path: str) -> None:
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {list(allowed)}"
                self.error(_join(path, str(key)), f"unknown key{hint}")

    def mapping(self, value: Any, path: str, required: bool = False) -> dict:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {_kind(value)}")
            return {}
        return value

    def integer(self, value: Any, path: str, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.error(path, f"expected an integer >= {minimum}, got {value!r}")
            return None
        return value

    def number(self, value: Any, path: str, minimum: float, strict: bool = False) -> float | None:
        value = _number_or_none(value)
        if value is None or not math.isfinite(value) or value < minimum or (strict and value == minimum):
            self.error(path, f"expected a number {'>' if strict else '>='} {minimum}, got {value!r}")
            return None
        return value

    def choice(self, value: Any, allowed: Sequence[str], path: str) -> str | None:
        if value not in allowed:
            self.error(path, f"expected one of {list(allowed)}, got {value!r}")
            return None
        return value


def _validate(raw: dict, check: _Checker, environ: Mapping[str, str]) -> StudySpec | None:
    check.known_keys(raw, TOP_KEYS, "")
    name = raw.get("name", Path(check.source).stem)
    if not isinstance(name, str) or not name or "/" in name or name.startswith(("_", ".")):
        check.error("name", f"expected a folder-safe name (no '/', not starting with '_' or '.'), got {name!r}")
    description = raw.get("description", "")
    datasets = _validate_datasets(raw.get("datasets"), check, environ)
    train = _validate_settings(check.mapping(raw.get("train"), "train", required=True), "train", check)
    if "dataset" in train and train["dataset"] not in datasets:
        check.error("train.dataset", f"{train['dataset']!r} is not declared under datasets ({sorted(datasets)})")
    pretraining = _validate_pretraining(raw.get("pretraining"), datasets, check)
    searcher = _validate_searcher(raw.get("searcher"), check)
    scheduler = _validate_scheduler(raw.get("scheduler"), check)
    resources = _validate_resources(raw.get("resources"), check)
    seeds = _validate_seeds(raw.get("seeds", 1), check)
    max_concurrent = None if raw.get("max_concurrent") is None else check.integer(raw["max_concurrent"], "max_concurrent", 1)
    max_failures = check.integer(raw.get("max_failures", 2), "max_failures", 0)
    space = _validate_space(raw.get("space"), searcher, check)
    excludes = _validate_excludes(raw.get("exclude"), check)
    if check.problems:
        return None  # expansion needs a sound structure

    base = {**train}
    base.setdefault("dataset", next(iter(datasets)) if len(datasets) == 1 else "pets")
    if base["dataset"] not in datasets:
        check.error("train.dataset", f"no dataset given and {base['dataset']!r} is not declared under datasets")
        return None
    configurations, variants, float_dims, dropped = (), (), {}, ()
    explicit = _validate_configurations(raw.get("configurations"), base, datasets, pretraining, check)
    if searcher.type == "grid":
        if any(not d.categorical or d.kind == "choice" for d in space):
            bad = next(d for d in space if not d.categorical or d.kind == "choice")
            check.error(f"space.{bad.name}", f"{bad.kind} needs a searcher (searcher.type: optuna); a grid takes grid lists or fixed values")
            return None
        product, dropped = _expand_space(space, base, excludes, datasets, pretraining, check)
        configurations = _dedupe(explicit + product, check)
        if not configurations:
            why = "; ".join(dropped) if dropped else "no configurations and no space given"
            check.error("space", f"empty search space: nothing left to run ({why})")
    else:
        if explicit:
            check.error("configurations", "an Optuna search samples from `space`; explicit configurations go with searcher.type: grid")
        categorical = [d for d in space if d.categorical]
        float_dims = {d.name: (d.kind, d.low, d.high) for d in space if not d.categorical}
        expanded, dropped = _expand_space(tuple(categorical), base, excludes, datasets, pretraining, check)
        variants = tuple({d.name: settings[d.name] for d in categorical} for _, settings in expanded)
        variants = tuple({k: v for k, v in dict(items).items()} for items in dict.fromkeys(tuple(sorted(v.items())) for v in variants))
        if not variants:
            why = "; ".join(dropped) if dropped else "no categorical dimension gives a valid combination"
            check.error("space", f"empty search space: nothing left to sample ({why})")
        if len(seeds) > 1:
            check.error("seeds", f"an Optuna search runs one seed per sample; give one seed, got {list(seeds)}")
        for variant in variants:
            _train_config({**base, **variant, **{k: lo for k, (_, lo, _) in float_dims.items()}}, "space", datasets, check)
    if check.problems:
        return None
    tables = _validate_tables(raw.get("tables"), configurations, searcher, check)
    return StudySpec(
        name=name, description=str(description or ""), datasets=datasets, train=base, configurations=configurations,
        space=space, variants=variants, float_dims=float_dims, dropped=tuple(dropped), seeds=seeds,
        searcher=searcher, scheduler=scheduler, resources=resources, max_concurrent=max_concurrent,
        max_failures=max_failures, pretraining=pretraining, tables=tables, raw=raw, source_path=check.source,
    )


# -- sections ----------------------------------------------------------------------
def _validate_datasets(value: Any, check: _Checker, environ: Mapping[str, str]) -> dict:
    datasets = {}
    mapping = check.mapping(value, "datasets", required=True)
    if not mapping and isinstance(value, dict):
        check.error("datasets", "expected at least one dataset (pets, cityscapes)")
    for name, entry in mapping.items():
        path = f"datasets.{name}"
        if check.choice(name, DATASET_NAMES, path) is None:
            continue
        entry = check.mapping(entry, path, required=True)
        check.known_keys(entry, ("root", "env", "generate"), path)
        env = entry.get("env", f"SEGSTUDY_{str(name).upper()}_ROOT")
        if not isinstance(env, str) or not env:
            check.error(f"{path}.env", f"expected an environment variable name, got {env!r}")
            continue
        root = environ.get(env) or entry.get("root")
        if not isinstance(root, str) or not root:
            check.error(f"{path}.root", f"expected a folder path (or set ${env}), got {root!r}")
            continue
        generate = entry.get("generate")
        if generate is not None:
            generate = check.mapping(generate, f"{path}.generate")
            check.known_keys(generate, ("train", "val", "seed"), f"{path}.generate")
            for key, default, minimum in (("train", 32, 1), ("val", 16, 1), ("seed", 0, 0)):
                generate[key] = check.integer(generate.get(key, default), f"{path}.generate.{key}", minimum)
        datasets[name] = DatasetSpec(name=name, root=str(Path(root).expanduser().absolute()), env=env,
                                     generate=dict(generate) if generate is not None else None)
    return datasets


def _validate_settings(mapping: dict, path: str, check: _Checker, allowed: Sequence[str] = SETTING_NAMES) -> dict:
    check.known_keys(mapping, allowed, path)
    settings = {}
    for key, value in mapping.items():
        if key in allowed:
            coerced = _coerce_setting(key, value, _join(path, key), check)
            if coerced is not _INVALID:
                settings[key] = coerced
    return settings


_INVALID = object()


def _coerce_setting(key: str, value: Any, path: str, check: _Checker) -> Any:
    kind = FIELD_TYPES[key]
    optional = "None" in kind
    if value is None and optional:
        return None
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        check.error(path, f"expected true or false, got {value!r}")
    elif kind.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        check.error(path, f"expected an integer, got {value!r}")
    elif kind.startswith("float"):
        number = _number_or_none(value)
        if number is not None and math.isfinite(number):
            return number
        check.error(path, f"expected a number, got {value!r}")
    elif kind.startswith("tuple"):
        if isinstance(value, int) and not isinstance(value, bool):
            return [value, value]
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        check.error(path, f"expected N or [height, width] in pixels, got {value!r}")
    else:
        if isinstance(value, str):
            return value
        check.error(path, f"expected a string, got {value!r}")
    return _INVALID


def _validate_pretraining(value: Any, datasets: dict, check: _Checker) -> dict:
    jobs = {}
    for source, entry in check.mapping(value, "pretraining").items():
        path = f"pretraining.{source}"
        if not isinstance(source, str) or source in ("none", "imagenet"):
            check.error(path, "a pretraining source needs a name other than 'none' and 'imagenet'")
            continue
        entry = check.mapping(entry, path, required=True)
        for key in ("arch", "segformer_stem"):
            if key in entry:
                check.error(f"{path}.{key}", "comes from the trials that use this source (their encoder must fit); remove it")
        settings = _validate_settings({k: v for k, v in entry.items() if k not in ("arch", "segformer_stem")}, path, check)
        if "dataset" not in settings:
            check.error(f"{path}.dataset", "required: the dataset to pre-train on")
        elif settings["dataset"] not in datasets:
            check.error(f"{path}.dataset", f"{settings['dataset']!r} is not declared under datasets ({sorted(datasets)})")
        settings.setdefault("export_encoder", "last")
        if settings.get("export_encoder") == "none":
            check.error(f"{path}.export_encoder", "a pretraining job must export its encoder: 'last' or 'best'")
        jobs[source] = settings
    return jobs


def _validate_searcher(value: Any, check: _Checker) -> SearcherSpec:
    mapping = check.mapping(value, "searcher")
    check.known_keys(mapping, ("type", "num_samples", "seed", "storage"), "searcher")
    kind = check.choice(mapping.get("type", "grid"), ("grid", "optuna"), "searcher.type") or "grid"
    storage = mapping.get("storage")
    if storage is not None and not isinstance(storage, str):
        check.error("searcher.storage", f"expected an Optuna storage URL (e.g. sqlite:///optuna.db) or null, got {storage!r}")
    return SearcherSpec(type=kind, num_samples=check.integer(mapping.get("num_samples", 10), "searcher.num_samples", 1) or 1,
                        seed=check.integer(mapping.get("seed", 0), "searcher.seed", 0) or 0,
                        storage=storage if isinstance(storage, str) else None)


def _validate_scheduler(value: Any, check: _Checker) -> SchedulerSpec:
    mapping = check.mapping(value, "scheduler")
    check.known_keys(mapping, ("type", "metric", "mode", "grace_period", "reduction_factor"), "scheduler")
    kind = check.choice(mapping.get("type", "fifo"), ("fifo", "asha"), "scheduler.type") or "fifo"
    metric = check.choice(mapping.get("metric", "val_miou"), ("val_miou", "val_loss", "train_miou", "train_loss"),
                          "scheduler.metric") or "val_miou"
    mode = check.choice(mapping.get("mode", "min" if metric.endswith("loss") else "max"), ("min", "max"), "scheduler.mode")
    return SchedulerSpec(type=kind, metric=metric, mode=mode or "max",
                         grace_period=check.integer(mapping.get("grace_period", 4), "scheduler.grace_period", 1) or 1,
                         reduction_factor=check.integer(mapping.get("reduction_factor", 2), "scheduler.reduction_factor", 2) or 2)


def _validate_resources(value: Any, check: _Checker) -> ResourcesSpec:
    mapping = check.mapping(value, "resources")
    check.known_keys(mapping, ("cpu", "gpu"), "resources")
    cpu = check.number(mapping.get("cpu", 1), "resources.cpu", 0, strict=True)
    gpu = check.number(mapping.get("gpu", 0), "resources.gpu", 0)
    if gpu is not None and gpu > 1 and gpu != int(gpu):
        check.error("resources.gpu", f"expected a fraction <= 1 or a whole number of GPUs, got {gpu}")
    return ResourcesSpec(cpu=cpu or 1.0, gpu=gpu or 0.0)


def _validate_seeds(value: Any, check: _Checker) -> tuple:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            check.error("seeds", f"expected a number of seeds >= 1 or a list of seeds, got {value}")
            return (0,)
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        if len(set(value)) != len(value):
            check.error("seeds", f"seeds repeat: {value}")
        return tuple(value)
    check.error("seeds", f"expected a number of seeds >= 1 or a non-empty list of integers >= 0, got {value!r}")
    return (0,)


def _validate_space(value: Any, searcher: SearcherSpec, check: _Checker) -> tuple:
    dimensions = []
    for name, declared in check.mapping(value, "space").items():
        path = f"space.{name}"
        if name not in SETTING_NAMES or name == "dataset":
            close = difflib.get_close_matches(str(name), SETTING_NAMES, n=1)
            check.error(path, "not a searchable training setting" + (f"; did you mean {close[0]!r}?" if close else ""))
            continue
        if not isinstance(declared, dict):
            value = _coerce_setting(name, declared, path, check)
            if value is not _INVALID:
                dimensions.append(Dimension(name, "fixed", (value,)))
            continue
        if len(declared) != 1 or next(iter(declared)) not in DIMENSION_KINDS:
            check.error(path, f"expected one of {{grid: [...]}}, {{choice: [...]}}, {{loguniform: [low, high]}}, "
                              f"{{uniform: [low, high]}} or a plain value, got {declared!r}")
            continue
        kind, values = next(iter(declared.items()))
        if kind in ("grid", "choice"):
            if not isinstance(values, list) or not values:
                check.error(f"{path}.{kind}", f"expected a non-empty list, got {values!r}")
                continue
            coerced = [_coerce_setting(name, v, f"{path}.{kind}[{i}]", check) for i, v in enumerate(values)]
            if _INVALID not in coerced:
                dimensions.append(Dimension(name, kind, tuple(_hashable(v) for v in coerced)))
            continue
        if not FIELD_TYPES[name].startswith("float"):
            check.error(f"{path}.{kind}", f"{kind} is for number settings like lr; {name} takes grid or choice")
            continue
        bounds = [_number_or_none(v) for v in values] if isinstance(values, list) and len(values) == 2 else None
        if not bounds or None in bounds or not bounds[0] < bounds[1] or (kind == "loguniform" and bounds[0] <= 0):
            need = "0 < low < high" if kind == "loguniform" else "low < high"
            check.error(f"{path}.{kind}", f"expected [low, high] with {need}, got {values!r}")
            continue
        dimensions.append(Dimension(name, kind, (), bounds[0], bounds[1]))
    return tuple(dimensions)


def _validate_excludes(value: Any, check: _Checker) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        check.error("exclude", f"expected a list of partial configurations, got {_kind(value)}")
        return []
    excludes = []
    for index, entry in enumerate(value):
        entry = check.mapping(entry, f"exclude[{index}]", required=True)
        excludes.append(_validate_settings(entry, f"exclude[{index}]", check))
    return excludes


def _validate_configurations(value: Any, base: dict, datasets: dict, pretraining: dict, check: _Checker) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        check.error("configurations", f"expected a list of configurations, got {_kind(value)}")
        return []
    configurations = []
    for index, entry in enumerate(value):
        path = f"configurations[{index}]"
        entry = check.mapping(entry, path, required=True)
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            check.error(f"{path}.name", f"expected a name for this configuration, got {name!r}")
            continue
        settings = _validate_settings({k: v for k, v in entry.items() if k != "name"}, path, check,
                                      allowed=SETTING_NAMES)
        if "name" in entry and set(entry) - {"name"} - set(SETTING_NAMES):
            continue
        settings = _normalise({**base, **settings})
        problem = _rule_problem(settings, pretraining)
        if problem:
            check.error(path, f"configuration {name!r}: {problem}")
            continue
        if _train_config(settings, path, datasets, check):
            configurations.append((name, settings))
    return configurations


def _expand_space(space: tuple, base: dict, excludes: list, datasets: dict, pretraining: dict, check: _Checker):
    """Cross product of categorical dims over base; rule breakers and excluded ones dropped."""
    if not space:
        return [], []
    names = [d.name for d in space]
    kept, dropped = [], {}
    for values in itertools.product(*(d.values for d in space)):
        settings = _normalise({**base, **dict(zip(names, values))})
        problem = _rule_problem(settings, pretraining)
        if problem is None and any(all(settings.get(k) == v for k, v in ex.items()) for ex in excludes):
            problem = "excluded by `exclude`"
        if problem:
            dropped[problem] = dropped.get(problem, 0) + 1
            continue
        label = "-".join(f"{_short(v)}" for v in values) or "base"
        kept.append((label, settings))
    # a value that no rule allows anywhere is a mistake, not a combination to drop
    for dimension in space:
        for value in dimension.values:
            if dimension.name == "pretrain" and value not in ("none", "imagenet") and value not in pretraining:
                check.error(f"space.pretrain", f"{value!r} names no pretraining job (declared: {sorted(pretraining) or 'none'})")
    for _, settings in kept:
        if not _train_config(settings, "space", datasets, check):
            break
    return kept, [f"{count} dropped: {why}" for why, count in dropped.items()]


def _rule_problem(settings: dict, pretraining: dict) -> str | None:
    pretrain = settings.get("pretrain", "none")
    arch = settings.get("arch", "segformer_b0")
    if pretrain not in ("none", "imagenet") and pretrain not in pretraining:
        return f"pretrain {pretrain!r} names no pretraining job (declared: {sorted(pretraining) or 'none'})"
    if pretrain == "imagenet" and arch != "fcn_resnet50":
        return f"pretrain 'imagenet' has weights only for fcn_resnet50, not {arch}"
    if settings.get("freeze", "none") == "encoder" and pretrain == "none":
        return "freeze 'encoder' needs a pretrained encoder (pretrain is 'none')"
    return None


def _normalise(settings: dict) -> dict:
    if settings.get("arch") == "fcn_resnet50":
        settings["segformer_stem"] = "paper"  # no meaning for FCN: one value, so no duplicates
    return settings


def _dedupe(configurations: list, check: _Checker) -> tuple:
    names, settings_seen, kept = set(), {}, []
    for name, settings in configurations:
        if name in names:
            check.error("configurations", f"configuration name {name!r} is used twice")
            continue
        key = repr(sorted(settings.items()))
        if key in settings_seen:
            continue  # the cross product repeats an explicit configuration
        names.add(name)
        settings_seen[key] = name
        kept.append((name, settings))
    return tuple(kept)


def _train_config(settings: dict, path: str, datasets: dict, check: _Checker) -> bool:
    """TrainConfig's own validation, with its message tied to the key path."""
    try:
        TrainConfig.from_dict({**settings, "data_root": datasets.get(settings.get("dataset"), DatasetSpec("", "", "", None)).root})
    except (ConfigError, TypeError, ValueError) as error:
        check.error(path, str(error))
        return False
    return True


def _validate_tables(value: Any, configurations: tuple, searcher: SearcherSpec, check: _Checker) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, list):
        check.error("tables", f"expected a list of tables, got {_kind(value)}")
        return ()
    tables, names = [], set()
    for index, entry in enumerate(value):
        path = f"tables[{index}]"
        entry = check.mapping(entry, path, required=True)
        check.known_keys(entry, ("name", "title", "columns", "rows"), path)
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in names:
            check.error(f"{path}.name", f"expected a unique table name, got {name!r}")
            continue
        names.add(name)
        columns = entry.get("columns", ["train_loss", "train_miou", "val_loss", "val_miou"])
        if not isinstance(columns, list) or not columns or any(c not in TABLE_COLUMNS for c in columns):
            check.error(f"{path}.columns", f"expected a list of {list(TABLE_COLUMNS)}, got {columns!r}")
            continue
        rows = []
        for row_index, row in enumerate(entry.get("rows") or []):
            row_path = f"{path}.rows[{row_index}]"
            row = check.mapping(row, row_path, required=True)
            check.known_keys(row, ("label", "match"), row_path)
            match = check.mapping(row.get("match"), f"{row_path}.match", required=True)
            check.known_keys(match, MATCH_COLUMNS, f"{row_path}.match")
            label = row.get("label")
            if not isinstance(label, str) or not label:
                check.error(f"{row_path}.label", f"expected a row label, got {label!r}")
                continue
            if searcher.type == "grid" and match and not any(_matches(name, s, match) for name, s in configurations):
                check.error(f"{row_path}.match", f"{match} matches no configuration of this study")
            rows.append(RowSpec(label=label, match=dict(match)))
        if not rows:
            check.error(f"{path}.rows", "expected at least one row")
            continue
        tables.append(TableSpec(name=name, title=str(entry.get("title", name)), columns=tuple(columns), rows=tuple(rows)))
    return tuple(tables)


def _matches(name: str, settings: dict, match: dict) -> bool:
    values = {**settings, "config_name": name, "stage": "main"}
    for key, wanted in match.items():
        have = values.get(key, TrainConfig.__dataclass_fields__[key].default if key in FIELD_TYPES else None)
        if isinstance(wanted, (int, float)) and isinstance(have, (int, float)) and not isinstance(wanted, bool):
            if not math.isclose(float(wanted), float(have), rel_tol=1e-9):
                return False
        elif have != wanted and str(have) != str(wanted):
            return False
    return True


# -- overrides and small helpers ---------------------------------------------------
def _apply_overrides(raw: dict, overrides: Sequence[str], source: str) -> dict:
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {override!r}: expected KEY.PATH=VALUE, e.g. train.epochs=2")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SpecError(f"--set {override!r}: {where} is not an index of a list of {len(node)}")
                index = int(part)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise SpecError(f"--set {override!r}: {'.'.join(parts[:depth])} in {source} is a value, not a mapping")
    return raw


def _plain_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return value


def _number_or_none(value: Any) -> float | None:
    # PyYAML reads 1e-3 (no dot) as a string: accept what float() reads, as a user means a number.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _short(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
