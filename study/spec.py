"""Study files: load one, apply `--set` overrides, validate all of it before Ray starts.

A study file is YAML. Only `datasets` and `train` are required; every other key has
the default shown.

```yaml
name: report                 # default: the file's stem. The study's folder name (`study run --name` overrides);
                             # letters, digits and _ . + = - (as are configuration and pretraining names)
description: "..."           # free text, default ""
datasets:                    # every dataset the study uses (main trials and pretraining): pets, cityscapes
  pets:
    root: data/pets          # a relative path resolves against the working directory
    env: SEGSTUDY_PETS_ROOT  # default SEGSTUDY_<NAME>_ROOT; when that variable is set it wins over root
                             # (precedence: environment > --set datasets.pets.root=... > the file)
    generate: {train: 32, val: 16, seed: 0}   # optional: generated data that `study run` creates when the
                             # folder is missing or empty. Without `generate` the data must already exist.
train:                       # TrainConfig fields shared by every main trial (trainables/config.py lists them
  dataset: pets              # with their defaults). Not here: data_root (from `datasets`), cache_dir
  image_size: [64, 64]       # (<data root>/.segstudy-cache), seed (from `seeds`).
  epochs: 30
configurations:              # explicit configurations: a unique name plus TrainConfig fields over `train`
  - {name: fcn_scratch, arch: fcn_resnet50, pretrain: none}
space:                       # searched settings, each one of:
  arch: {grid: [fcn_resnet50, segformer_b0]}   #   a plain value (fixed), {grid: [...]} (every value),
  pretrain: {choice: [none, cityscapes]}       #   {choice: [...]} (the searcher picks; optuna only),
  lr: {loguniform: [1.0e-4, 3.0e-3]}           #   {loguniform: [low, high]} or {uniform: [low, high]}
                             #   (number settings such as lr; optuna only). Not searchable: dataset, seed.
exclude:                     # partial configurations dropped from the cross product of `space`
  - {arch: fcn_resnet50, freeze: encoder}
seeds: 1                     # N (seeds 0..N-1) or a list of distinct seeds [0, 7]; every configuration runs
                             # once per seed. An optuna study takes exactly one seed: each sample is one trial.
searcher: {type: grid}       # grid, or {type: optuna, num_samples: 10, seed: 0, storage: null}: Optuna TPE
                             # (seed: the sampler's; storage: an Optuna storage URL, null = a sqlite file
                             # in the study folder). num_samples, seed and storage are ignored by grid.
scheduler: {type: fifo}      # fifo, or {type: asha, metric: val_miou, mode: max, grace_period: 1,
                             # reduction_factor: 2}. metric: val_miou | val_loss | train_miou | train_loss;
                             # mode defaults to min for a loss, else max. grace_period <= train.epochs.
resources: {cpu: 1, gpu: 0}  # per trial; gpu may be a fraction (0.25: four trials share one GPU)
max_concurrent: null         # trials at once; null = as many as the cluster's resources hold
max_failures: 2              # retries of a failed trial, each from its last checkpoint
pretraining:                 # sources that a `pretrain` value may name, besides none and imagenet
  cityscapes:                # any TrainConfig fields over TrainConfig's defaults (not over `train`);
    dataset: cityscapes      # dataset is required. arch and segformer_stem come from the trials that use
    epochs: 31               # the source (one job per distinct pair, so the encoder fits them) unless given
                             # here: then only trials with that arch/stem may use it. export_encoder
                             # defaults to last; seed to 0; pretrain may be none or imagenet.
tables:                      # what `study report` shows; default: one row per configuration
  - name: fcn                # unique
    title: "FCN-ResNet50: from scratch vs ImageNet backbone"   # default: the name
    columns: [train_miou, val_miou, train_loss, val_loss]     # of train_loss, train_miou, val_loss, val_miou,
                             # best_val_miou; default [train_loss, train_miou, val_loss, val_miou]
    rows:                    # a row aggregates (over seeds) the main trials whose columns equal every match
      - {label: "FCN from scratch", match: {config_name: fcn_scratch}}   # value; each row must match a trial.
                             # match keys: config_name, stage, arch, pretrain, freeze, lr, seed,
                             # segformer_stem, optimizer, scheduler, dataset, batch_size
```

The main configurations of a grid study are the explicit `configurations` plus the
cross product of `space` (each over `train`); a cross-product configuration is named
by its grid values joined with "-" (e.g. `segformer_b0-cityscapes-encoder`). Built-in
rules: `imagenet` weights exist only for fcn_resnet50; `pretrain` is none, imagenet
or a `pretraining` source; `freeze: encoder` needs a pretrained encoder; a source whose
job pins arch/segformer_stem serves only trials with those; `segformer_stem` means
nothing for fcn_resnet50 (it becomes `paper`, and repeats are dropped). An explicit
configuration that breaks a rule, or repeats another's settings, is an error; a
combination of the cross product that breaks one, or that `exclude` names, is dropped,
and the plan records how many and why. Nothing left is an error ("empty search space").

An optuna study has no explicit `configurations`: the searcher samples one valid
combination of the categorical (fixed, grid, choice) dimensions (the plan lists them
all, so no invalid one is ever tried) plus the loguniform/uniform dimensions.

Every planned configuration, every pretraining job and (optuna) every variant at both
ends of each sampled range is built as a TrainConfig, so its own checks (lr > 0, ...)
run before Ray starts. Every problem names the file and the key path, e.g.
`search_spaces/x.yaml: configurations[2].lr: expected a number > 0, got -1.0`.
`--set KEY.PATH=VALUE` (e.g. `train.epochs=2`, `configurations[0].lr=5e-4`,
`searcher.num_samples=4`) changes the file's mapping before validation; the value is
read as YAML. The spec as run (`StudySpec.to_yaml`) is the file with the overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from study.errors import SpecError
from trainables.config import (ARCHS, DATASETS, ENCODER_EXPORT, FAULT_KINDS, FREEZE, IMAGENET_WEIGHTS, OPTIMIZERS,
                               SCHEDULERS, SEGFORMER_STEMS, TrainConfig)
from trainables.errors import ConfigError

TOP_KEYS = ("name", "description", "datasets", "train", "configurations", "space", "exclude", "seeds", "searcher",
            "scheduler", "resources", "max_concurrent", "max_failures", "pretraining", "tables")
DATASET_KEYS = ("root", "env", "generate")
GENERATE_DEFAULTS = {"train": 32, "val": 16, "seed": 0}
SEARCHER_KEYS = ("type", "num_samples", "seed", "storage")
SCHEDULER_KEYS = ("type", "metric", "mode", "grace_period", "reduction_factor")
SCHEDULER_METRICS = ("val_miou", "val_loss", "train_miou", "train_loss")
RESOURCE_KEYS = ("cpu", "gpu")
TABLE_KEYS = ("name", "title", "columns", "rows")
ROW_KEYS = ("label", "match")
TABLE_COLUMNS = ("train_loss", "train_miou", "val_loss", "val_miou", "best_val_miou")
DEFAULT_TABLE_COLUMNS = ("train_loss", "train_miou", "val_loss", "val_miou")
# The trial columns of study/results.py that a table row may match on.
MATCH_COLUMNS = ("config_name", "stage", "arch", "pretrain", "freeze", "lr", "seed", "segformer_stem", "optimizer",
                 "scheduler", "dataset", "batch_size")
STAGES = ("main", "pretrain")
BUILTIN_PRETRAIN = ("none", "imagenet")
DIMENSION_KINDS = ("grid", "choice", "loguniform", "uniform")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*\Z")  # safe in folder names and trial keys

FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
DEFAULTS = TrainConfig().to_dict()
CHOICES = {"arch": ARCHS, "dataset": DATASETS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "freeze": FREEZE,
           "segformer_stem": SEGFORMER_STEMS, "imagenet_weights": IMAGENET_WEIGHTS, "export_encoder": ENCODER_EXPORT,
           "fault_kind": FAULT_KINDS}
# TrainConfig fields a study file does not set, and why: shown instead of "unknown key".
NOT_SETTINGS = {"data_root": "comes from datasets.<name>.root", "cache_dir": "is <data root>/.segstudy-cache"}
NOT_PER_TRIAL = {**NOT_SETTINGS, "seed": "comes from `seeds`"}
NOT_SEARCHED = {**NOT_PER_TRIAL, "dataset": "is not searched: set it in `train` or per configuration"}
SETTINGS = tuple(name for name in FIELD_TYPES if name not in NOT_SETTINGS)
TRIAL_SETTINGS = tuple(name for name in SETTINGS if name not in NOT_PER_TRIAL)
SEARCHED_SETTINGS = tuple(name for name in SETTINGS if name not in NOT_SEARCHED)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str  # absolute, after the environment and --set overrides
    env: str  # the variable that overrides root
    generate: dict | None  # {train, val, seed} of generated data, or None: real data only


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # fixed | grid | choice | loguniform | uniform
    values: tuple = ()  # fixed, grid, choice
    low: float = 0.0  # loguniform, uniform
    high: float = 0.0

    @property
    def categorical(self) -> bool:
        return self.kind in ("fixed", "grid", "choice")


@dataclass(frozen=True)
class Configuration:
    name: str
    config: dict  # TrainConfig.to_dict(): data_root resolved; `pretrain` is the source name; seed set by the plan


@dataclass(frozen=True)
class PretrainSpec:
    source: str
    config: dict  # TrainConfig.to_dict() of one job: data_root resolved, arch/stem of its dependents


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
    grace_period: int = 1
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
    train_settings: dict  # the `train` section, typed (a sparse set of TrainConfig fields)
    configurations: tuple  # Configuration, grid studies: explicit then cross product
    variants: tuple  # optuna studies: every valid combination of the categorical dims, {setting: value}
    float_dims: dict  # optuna studies: setting -> (loguniform | uniform, low, high)
    dropped: tuple  # "N dropped: why", for the cross product / the variants
    seeds: tuple
    searcher: SearcherSpec
    scheduler: SchedulerSpec
    resources: ResourcesSpec
    max_concurrent: int | None
    max_failures: int
    pretraining: tuple  # PretrainSpec, one per (source, arch, segformer_stem) the main trials need
    tables: tuple  # TableSpec
    raw: dict  # the file's mapping with the overrides applied
    overrides: tuple  # the --set strings applied
    source_path: str

    def to_yaml(self) -> str:
        """The spec as run: the file with its overrides and the dataset roots it resolved (absolute)."""
        raw = copy.deepcopy(self.raw)
        for name, dataset in self.datasets.items():
            raw["datasets"][name]["root"] = dataset.root  # a resumed study finds the same data from any folder
        header = [f"# study file as run: {self.source_path}"] + [f"# --set {o}" for o in self.overrides]
        return "\n".join(header) + "\n" + yaml.safe_dump(raw, sort_keys=False)

    def dataset_root(self, name: str) -> str:
        return self.datasets[name].root

    def generated(self, name: str) -> dict | None:
        return self.datasets[name].generate

    def search_base_config(self) -> dict:
        """Optuna: the settings every sample starts from; a variant and the sampled numbers go over it.

        Not a TrainConfig on its own (train may rely on a variant, e.g. freeze needs pretrain);
        every variant over it was validated at both ends of each sampled range.
        """
        root = self.dataset_root(self.train_settings.get("dataset", DEFAULTS["dataset"]))
        return copy.deepcopy({**DEFAULTS, **self.train_settings, "data_root": root, "seed": self.seeds[0]})

    def used_datasets(self) -> list[str]:
        used = {c.config["dataset"] for c in self.configurations} | {p.config["dataset"] for p in self.pretraining}
        if self.searcher.type == "optuna":
            used.add(self.train_settings.get("dataset", DEFAULTS["dataset"]))
        return sorted(used)


# -- loading ---------------------------------------------------------------------
def load_spec(path: str | os.PathLike, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> StudySpec:
    """Read, override and validate a study file; every problem is a SpecError naming file and key path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read the study file ({error})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    return spec_from_dict(raw, str(path), overrides, environ)


def spec_from_dict(raw: Any, source: str, overrides: Sequence[str] = (),
                   environ: Mapping[str, str] | None = None) -> StudySpec:
    """Validate a study file's mapping; `source` names it in messages."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of study keys at the top level, got {_kind(raw)}")
    raw, overridden = _apply_overrides(copy.deepcopy(raw), overrides, source)
    problems = _Problems(source, overridden)
    spec = _validate(raw, problems, os.environ if environ is None else environ, tuple(overrides))
    problems.raise_if_any()
    return spec


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


class _Problems:
    """Collects every problem found, so a user fixes a file in one round."""

    def __init__(self, source: str, overridden: dict[str, str]):
        self.source = source
        self.overridden = overridden  # key path -> the --set that wrote it
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        line = f"{path}: {message}" if path else message
        for where, override in self.overridden.items():
            if path == where or path.startswith((where + ".", where + "[")):
                line += f" (from --set {override})"
        if line not in self.lines:
            self.lines.append(line)

    def raise_if_any(self) -> None:
        if self.lines:
            more = f" (and {len(self.lines) - 1} more problem(s) below)" if len(self.lines) > 1 else ""
            rest = [f"  {self.source}: {line}" for line in self.lines[1:]]
            raise SpecError("\n".join([f"{self.source}: {self.lines[0]}{more}", *rest]))

    def known_keys(self, mapping: dict, allowed: Sequence[str], path: str,
                   reasons: Mapping[str, str] | None = None) -> None:
        """Unknown keys, each with the closest known one (or why a known setting is not allowed here)."""
        for key in mapping:
            if key in allowed:
                continue
            if reasons and key in reasons:
                self.add(_join(path, key), f"not set here: {key} {reasons[key]}")
                continue
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of {list(allowed)}"
            self.add(_join(path, key), f"unknown key; {hint}")

    def mapping(self, value: Any, path: str, required: bool = False) -> dict:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.add(path, f"expected a mapping, got {_kind(value)}")
            return {}
        return value

    def integer(self, value: Any, path: str, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.add(path, f"expected an integer >= {minimum}, got {_kind(value)}")
            return None
        return value

    def number(self, value: Any, path: str, minimum: float, strict: bool = False) -> float | None:
        number = _number_or_none(value)
        if number is None or not math.isfinite(number) or number < minimum or (strict and number == minimum):
            self.add(path, f"expected a number {'>' if strict else '>='} {minimum}, got {_kind(value)}")
            return None
        return number

    def choice(self, value: Any, allowed: Sequence[str], path: str) -> str | None:
        if not isinstance(value, str) or value not in allowed:
            self.add(path, f"expected one of {list(allowed)}, got {_kind(value)}{_suggest(value, allowed)}")
            return None
        return value

    def name(self, value: Any, path: str, what: str) -> str | None:
        if not isinstance(value, str) or not NAME.match(value):
            self.add(path, f"expected {what} of letters, digits and _ . + = - (not starting with a symbol), "
                           f"got {_kind(value)}")
            return None
        return value


# -- the whole file ------------------------------------------------------------------
def _validate(raw: dict, problems: _Problems, environ: Mapping[str, str], overrides: tuple) -> StudySpec | None:
    """Two passes: every section's shape and types, then (if sound) the expansion into configurations."""
    problems.known_keys(raw, TOP_KEYS, "")
    name = problems.name(raw.get("name", Path(problems.source).stem), "name", "a study name")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        problems.add("description", f"expected text, got {_kind(description)}")
    datasets = _datasets(raw.get("datasets"), problems, environ)
    train = _settings(problems.mapping(raw.get("train"), "train", required=True), "train", TRIAL_SETTINGS,
                      NOT_PER_TRIAL, problems)
    pretraining = _pretraining_sections(raw.get("pretraining"), problems)
    searcher = _searcher(raw.get("searcher"), problems)
    scheduler = _scheduler(raw.get("scheduler"), problems)
    resources = _resources(raw.get("resources"), problems)
    seeds = _seeds(raw.get("seeds", 1), problems)
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = problems.integer(max_concurrent, "max_concurrent", 1)
    max_failures = problems.integer(raw.get("max_failures", 2), "max_failures", 0)
    space = _space(raw.get("space"), searcher, problems)
    excludes = _excludes(raw.get("exclude"), problems)
    declared = _configurations(raw.get("configurations"), problems)
    if problems.lines:
        return None  # expanding a file with a broken section would only repeat its problems

    _check_declared(train, space, datasets, pretraining, problems)
    if problems.lines:
        return None
    configurations, variants, float_dims = [], [], {}
    if searcher.type == "grid":
        configurations, dropped = _expand_grid(declared, space, excludes, train, datasets, pretraining, problems)
    else:
        variants, float_dims, dropped = _expand_search(declared, space, excludes, train, datasets, pretraining, seeds,
                                                       problems)
    # A configuration rejected above yields no trials: rows naming it would only repeat its problem.
    check_matches = not problems.lines
    main = [c.config for c in configurations] or [_complete({**train, **v}) for v in variants]
    jobs = _pretraining_jobs(pretraining, main, train, datasets, problems)
    epochs = _complete(train)["epochs"]  # ASHA's max_t
    if scheduler.type == "asha" and scheduler.grace_period > epochs:
        problems.add("scheduler.grace_period", f"expected at most train.epochs ({epochs}), got {scheduler.grace_period}")
    tables = _tables(raw.get("tables"), configurations, variants, float_dims, train, seeds, problems,
                     check_matches)
    if problems.lines:
        return None
    return StudySpec(
        name=name, description=description or "", datasets=datasets, train_settings=train,
        configurations=tuple(configurations), variants=tuple(variants), float_dims=float_dims, dropped=tuple(dropped),
        seeds=seeds, searcher=searcher, scheduler=scheduler, resources=resources, max_concurrent=max_concurrent,
        max_failures=max_failures, pretraining=tuple(jobs), tables=tables, raw=raw, overrides=overrides,
        source_path=problems.source,
    )


# -- sections: shape and types ---------------------------------------------------------
def _datasets(value: Any, problems: _Problems, environ: Mapping[str, str]) -> dict[str, DatasetSpec]:
    mapping = problems.mapping(value, "datasets", required=True)
    if isinstance(value, dict) and not value:
        problems.add("datasets", f"expected at least one of {list(DATASETS)}")
    datasets = {}
    for name, entry in mapping.items():
        path = f"datasets.{name}"
        if problems.choice(name, DATASETS, path) is None:
            continue
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping with root (and env, generate), got {_kind(entry)}")
            continue
        problems.known_keys(entry, DATASET_KEYS, path)
        env = entry.get("env", f"SEGSTUDY_{name.upper()}_ROOT")
        if not isinstance(env, str) or not env:
            problems.add(f"{path}.env", f"expected an environment variable name, got {_kind(env)}")
            continue
        root = entry.get("root")
        if root is not None and (not isinstance(root, str) or not root):
            problems.add(f"{path}.root", f"expected a folder path, got {_kind(root)}")
            continue
        root = environ.get(env) or root
        if root is None:
            problems.add(f"{path}.root", f"expected a folder path (or set ${env}), got nothing")
            continue
        generate = None
        if entry.get("generate") is not None:
            given = problems.mapping(entry["generate"], f"{path}.generate")
            problems.known_keys(given, tuple(GENERATE_DEFAULTS), f"{path}.generate")
            generate = {key: problems.integer(given.get(key, default), f"{path}.generate.{key}", 0 if key == "seed" else 1)
                        for key, default in GENERATE_DEFAULTS.items()}
        datasets[name] = DatasetSpec(name=name, root=os.path.abspath(os.path.expanduser(root)), env=env,
                                     generate=generate)
    return datasets


_INVALID = object()


def _settings(mapping: dict, path: str, allowed: Sequence[str], reasons: Mapping[str, str], problems: _Problems) -> dict:
    """TrainConfig fields, each typed; values TrainConfig checks further are checked when it is built."""
    problems.known_keys(mapping, allowed, path, reasons)
    settings = {}
    for key, value in mapping.items():
        if key in allowed:
            typed = _setting(key, value, _join(path, key), problems)
            if typed is not _INVALID:
                settings[key] = typed
    return settings


def _setting(key: str, value: Any, path: str, problems: _Problems) -> Any:
    kind = FIELD_TYPES[key]
    if value is None and "None" in kind:
        return None
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        problems.add(path, f"expected true or false, got {_kind(value)}")
    elif kind.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.add(path, f"expected an integer, got {_kind(value)}")
    elif kind.startswith("float"):
        number = _number_or_none(value)
        if number is not None and math.isfinite(number):
            return number
        problems.add(path, f"expected a number, got {_kind(value)}")
    elif kind.startswith("tuple"):
        if _is_int(value):
            return [value, value]
        if isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value):
            return list(value)
        problems.add(path, f"expected N or [height, width] in pixels, got {_kind(value)}")
    elif key in CHOICES:
        if problems.choice(value, CHOICES[key], path) is not None:
            return value
    elif isinstance(value, str):
        return value
    else:
        problems.add(path, f"expected a string, got {_kind(value)}")
    return _INVALID


def _pretraining_sections(value: Any, problems: _Problems) -> dict[str, dict]:
    sections = {}
    for source, entry in problems.mapping(value, "pretraining").items():
        path = f"pretraining.{source}"
        if problems.name(source, path, "a source name") is None:
            continue
        if source in BUILTIN_PRETRAIN:
            problems.add(path, f"{source!r} is built in; name the pretraining source something else")
            continue
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping of training settings, got {_kind(entry)}")
            continue
        settings = _settings(entry, path, SETTINGS, NOT_SETTINGS, problems)
        if "dataset" not in settings:
            problems.add(f"{path}.dataset", "required: the dataset to pre-train on")
        if settings.get("pretrain", "none") not in BUILTIN_PRETRAIN:
            problems.add(f"{path}.pretrain", f"expected none or imagenet (pretraining jobs do not chain), "
                                             f"got {settings['pretrain']!r}")
        if settings.get("export_encoder") == "none":
            problems.add(f"{path}.export_encoder", "expected last or best: a pretraining job exists to export its encoder")
        sections[source] = {"export_encoder": "last", **settings}
    return sections


def _searcher(value: Any, problems: _Problems) -> SearcherSpec:
    mapping = problems.mapping(value, "searcher")
    problems.known_keys(mapping, SEARCHER_KEYS, "searcher")
    storage = mapping.get("storage")
    if storage is not None and not (isinstance(storage, str) and storage):
        problems.add("searcher.storage", f"expected an Optuna storage URL (e.g. sqlite:///optuna.db) or null, "
                                         f"got {_kind(storage)}")
    return SearcherSpec(
        type=problems.choice(mapping.get("type", "grid"), ("grid", "optuna"), "searcher.type") or "grid",
        num_samples=problems.integer(mapping.get("num_samples", 10), "searcher.num_samples", 1) or 1,
        seed=problems.integer(mapping.get("seed", 0), "searcher.seed", 0) or 0,
        storage=storage if isinstance(storage, str) else None,
    )


def _scheduler(value: Any, problems: _Problems) -> SchedulerSpec:
    mapping = problems.mapping(value, "scheduler")
    problems.known_keys(mapping, SCHEDULER_KEYS, "scheduler")
    metric = problems.choice(mapping.get("metric", "val_miou"), SCHEDULER_METRICS, "scheduler.metric") or "val_miou"
    mode = mapping.get("mode", "min" if metric.endswith("loss") else "max")
    return SchedulerSpec(
        type=problems.choice(mapping.get("type", "fifo"), ("fifo", "asha"), "scheduler.type") or "fifo",
        metric=metric,
        mode=problems.choice(mode, ("min", "max"), "scheduler.mode") or "max",
        grace_period=problems.integer(mapping.get("grace_period", 1), "scheduler.grace_period", 1) or 1,
        reduction_factor=problems.integer(mapping.get("reduction_factor", 2), "scheduler.reduction_factor", 2) or 2,
    )


def _resources(value: Any, problems: _Problems) -> ResourcesSpec:
    mapping = problems.mapping(value, "resources")
    problems.known_keys(mapping, RESOURCE_KEYS, "resources")
    cpu = problems.number(mapping.get("cpu", 1), "resources.cpu", 0, strict=True)
    gpu = problems.number(mapping.get("gpu", 0), "resources.gpu", 0)
    if gpu is not None and gpu > 1 and gpu != int(gpu):
        problems.add("resources.gpu", f"expected a fraction of one GPU or a whole number of GPUs, got {gpu}")
    return ResourcesSpec(cpu=cpu or 1.0, gpu=gpu or 0.0)


def _seeds(value: Any, problems: _Problems) -> tuple[int, ...]:
    if _is_int(value) and value >= 1:
        return tuple(range(value))
    if isinstance(value, list) and value and all(_is_int(s) and s >= 0 for s in value) and len(set(value)) == len(value):
        return tuple(value)
    problems.add("seeds", f"expected a number of seeds >= 1 or a list of distinct integers >= 0, got {_kind(value)}")
    return (0,)


def _space(value: Any, searcher: SearcherSpec, problems: _Problems) -> tuple[Dimension, ...]:
    mapping = problems.mapping(value, "space")
    problems.known_keys(mapping, SEARCHED_SETTINGS, "space", NOT_SEARCHED)
    dimensions = []
    for name, declared in mapping.items():
        if name not in SEARCHED_SETTINGS:
            continue
        path = f"space.{name}"
        if not isinstance(declared, dict):
            value = _setting(name, declared, path, problems)
            if value is not _INVALID:
                dimensions.append(Dimension(name, "fixed", (value,)))
            continue
        kind = next(iter(declared)) if len(declared) == 1 else None
        if kind not in DIMENSION_KINDS:
            problems.add(path, f"expected a value or one of {{grid: [...]}}, {{choice: [...]}}, "
                               f"{{loguniform: [low, high]}}, {{uniform: [low, high]}}, got {_kind(declared)}")
            continue
        values = declared[kind]
        if searcher.type == "grid" and kind != "grid":
            problems.add(f"{path}.{kind}", f"{kind} needs a searcher (searcher.type: optuna); "
                                           f"a grid study takes {{grid: [...]}} or a plain value")
        elif kind in ("grid", "choice"):
            if not isinstance(values, list) or not values:
                problems.add(f"{path}.{kind}", f"expected a non-empty list of values, got {_kind(values)}")
                continue
            typed = [_setting(name, v, f"{path}.{kind}[{i}]", problems) for i, v in enumerate(values)]
            if _INVALID not in typed:
                dimensions.append(Dimension(name, kind, tuple(dict.fromkeys(map(_hashable, typed)))))
        elif not FIELD_TYPES[name].startswith("float"):
            problems.add(f"{path}.{kind}", f"{kind} is for number settings such as lr; {name} takes grid or choice")
        else:
            bounds = [_number_or_none(v) for v in values] if isinstance(values, list) and len(values) == 2 else [None]
            need = "0 < low < high" if kind == "loguniform" else "low < high"
            if None in bounds or not all(map(math.isfinite, bounds)) or not bounds[0] < bounds[1] \
                    or (kind == "loguniform" and bounds[0] <= 0):
                problems.add(f"{path}.{kind}", f"expected [low, high] with {need}, got {_kind(values)}")
                continue
            dimensions.append(Dimension(name, kind, (), bounds[0], bounds[1]))
    return tuple(dimensions)


def _excludes(value: Any, problems: _Problems) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add("exclude", f"expected a list of partial configurations, got {_kind(value)}")
        return []
    return [_settings(problems.mapping(entry, f"exclude[{i}]", required=True), f"exclude[{i}]", SEARCHED_SETTINGS,
                      NOT_SEARCHED, problems)
            for i, entry in enumerate(value)]


def _configurations(value: Any, problems: _Problems) -> list[tuple[str, str, dict]]:
    """(key path, name, settings) of each explicit configuration."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add("configurations", f"expected a list of configurations, got {_kind(value)}")
        return []
    declared, names = [], {}
    for index, entry in enumerate(value):
        path = f"configurations[{index}]"
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping with a name and settings, got {_kind(entry)}")
            continue
        name = problems.name(entry.get("name"), f"{path}.name", "a configuration name")
        if name is not None and name in names:
            problems.add(f"{path}.name", f"{name!r} is already the name of {names[name]}")
        names.setdefault(name, path)
        settings = _settings({k: v for k, v in entry.items() if k != "name"}, path, TRIAL_SETTINGS, NOT_PER_TRIAL,
                             problems)
        declared.append((path, name, settings))
    return declared


# -- expansion: configurations, variants, pretraining jobs -------------------------------
def _check_declared(train: dict, space: tuple, datasets: dict, pretraining: dict, problems: _Problems) -> None:
    """Names that must be declared: a mistake here is an error even in the cross product."""
    dataset = train.get("dataset", DEFAULTS["dataset"])
    if dataset not in datasets:
        problems.add("train.dataset", f"{dataset!r} is not declared under datasets (declared: {sorted(datasets)})")
    for source, section in pretraining.items():
        if section["dataset"] not in datasets:
            problems.add(f"pretraining.{source}.dataset",
                         f"{section['dataset']!r} is not declared under datasets (declared: {sorted(datasets)})")
    pretrain_values = [("train.pretrain", train.get("pretrain", "none"))] + [
        (f"space.pretrain.{d.kind}" if d.kind != "fixed" else "space.pretrain", v)
        for d in space if d.name == "pretrain" for v in d.values]
    for path, source in pretrain_values:
        if source not in BUILTIN_PRETRAIN and source not in pretraining:
            problems.add(path, _undeclared_source(source, pretraining))


def _expand_grid(declared: list, space: tuple, excludes: list, train: dict, datasets: dict, pretraining: dict,
                 problems: _Problems) -> tuple[list[Configuration], list[str]]:
    """The explicit configurations, then the cross product of `space`; and why combinations were dropped."""
    configurations, seen = [], {}
    for path, name, settings in declared:
        complete = _normalise(_complete({**train, **settings}))
        origins = {**_origins(train, "train"), **_origins(settings, path)}
        broken = _rule_problem(complete, datasets, pretraining)
        if broken:
            field, why = broken
            problems.add(origins.get(field, path), f"configuration {name!r}: {why}")
            continue
        config = _train_config(complete, origins, path, datasets, problems)
        if config is None:
            continue
        key = _settings_key(config)
        if key in seen:
            problems.add(path, f"configuration {name!r} has the same settings as {seen[key]!r}")
            continue
        seen[key] = name
        configurations.append(Configuration(name=name, config=config))
    dropped: dict[str, int] = {}
    names = {c.name for c in configurations}
    grid = [d for d in space if d.kind == "grid"]
    combinations = _cross_product(space, excludes, train, datasets, pretraining, dropped) if space else ()
    for complete in combinations:
        config = _train_config(complete, {**_origins(train, "train"), **_space_origins(space)}, "space", datasets,
                               problems)
        if config is None:
            continue
        key = _settings_key(config)
        if key in seen:
            _count(dropped, "same settings as an earlier configuration")
            continue
        name = "-".join(_label(complete[d.name]) for d in grid) or "space"
        if name in names:
            problems.add("space", f"the cross-product configuration {name!r} has the name of an explicit configuration")
            continue
        seen[key] = name
        names.add(name)
        configurations.append(Configuration(name=name, config=config))
    reasons = [f"{count} dropped: {why}" for why, count in dropped.items()]
    if not configurations and not problems.lines:
        why = "; ".join(reasons) if reasons else "the file has neither `configurations` nor `space`"
        problems.add("space" if space else "configurations", f"empty search space: nothing left to run ({why})")
    return configurations, reasons


def _expand_search(declared: list, space: tuple, excludes: list, train: dict, datasets: dict, pretraining: dict,
                   seeds: tuple, problems: _Problems) -> tuple[list[dict], dict, list[str]]:
    """The valid combinations of the categorical dims, the float dims, and why combinations were dropped."""
    if declared:
        problems.add("configurations", "an optuna study samples `space`; explicit configurations need "
                                       "searcher.type: grid")
    if len(seeds) > 1:
        problems.add("seeds", f"an optuna study runs one seed (each sample is one trial); got {list(seeds)}")
    categorical = [d for d in space if d.categorical]
    float_dims = {d.name: (d.kind, d.low, d.high) for d in space if not d.categorical}
    origins = {**_origins(train, "train"), **_space_origins(space)}
    # every value the searcher may sample must make a valid run: try both ends of each range
    lows = {name: low for name, (_, low, _) in float_dims.items()}
    highs = {name: high for name, (_, _, high) in float_dims.items()}
    dropped: dict[str, int] = {}
    variants, seen = [], set()
    for complete in _cross_product(space, excludes, train, datasets, pretraining, dropped):
        variant = {d.name: complete[d.name] for d in categorical}
        key = _settings_key(variant)
        if key in seen:
            _count(dropped, "same settings as an earlier combination")
            continue
        seen.add(key)
        if all(_train_config({**complete, **end}, origins, "space", datasets, problems) is not None
               for end in (lows, highs)):
            variants.append(variant)
    reasons = [f"{count} dropped: {why}" for why, count in dropped.items()]
    if not variants and not problems.lines:
        why = "; ".join(reasons) or "no combination of `space` makes a valid run"
        problems.add("space", f"empty search space: nothing left to sample ({why})")
    return variants, float_dims, reasons


def _cross_product(space: tuple, excludes: list, train: dict, datasets: dict, pretraining: dict,
                   dropped: dict[str, int]):
    """Complete settings of each combination of the categorical dims that no rule or `exclude` drops."""
    dims = [d for d in space if d.categorical]
    for values in itertools.product(*(d.values for d in dims)):
        chosen = {d.name: list(v) if isinstance(v, tuple) else v for d, v in zip(dims, values)}
        complete = _normalise(_complete({**train, **chosen}))
        if any(all(_same_value(complete[k], v) for k, v in exclude.items()) for exclude in excludes):
            _count(dropped, "excluded by `exclude`")
            continue
        broken = _rule_problem(complete, datasets, pretraining)
        if broken:
            _count(dropped, broken[1])
            continue
        yield complete


def _rule_problem(settings: dict, datasets: dict, pretraining: dict) -> tuple[str, str] | None:
    """(setting, why) of the first built-in rule that complete settings break."""
    source, arch = settings["pretrain"], settings["arch"]
    if settings["dataset"] not in datasets:
        return "dataset", f"dataset {settings['dataset']!r} is not declared under datasets (declared: {sorted(datasets)})"
    if source not in BUILTIN_PRETRAIN and source not in pretraining:
        return "pretrain", _undeclared_source(source, pretraining)
    if source == "imagenet" and arch != "fcn_resnet50":
        return "pretrain", f"pretrain 'imagenet' has weights only for fcn_resnet50, not {arch}"
    if settings["freeze"] == "encoder" and source == "none":
        return "freeze", "freeze 'encoder' needs a pretrained encoder (pretrain is 'none')"
    pinned = pretraining.get(source, {})
    if pinned.get("arch", arch) != arch:
        return "arch", f"pretraining {source!r} makes {pinned['arch']} encoders, not {arch}"
    if arch != "fcn_resnet50" and pinned.get("segformer_stem", settings["segformer_stem"]) != settings["segformer_stem"]:
        return "segformer_stem", (f"pretraining {source!r} makes encoders with the {pinned['segformer_stem']} stem, "
                                  f"not {settings['segformer_stem']}")
    return None


def _pretraining_jobs(pretraining: dict, main: list[dict], train: dict, datasets: dict,
                      problems: _Problems) -> list[PretrainSpec]:
    """One job per (source, arch, stem) that main trials use; a source no trial uses is still validated."""
    needed = {(c["pretrain"], c["arch"], c["segformer_stem"]) for c in main if c["pretrain"] in pretraining}
    needed = sorted(needed) + [(source, train.get("arch", DEFAULTS["arch"]), train.get("segformer_stem", "paper"))
                               for source in pretraining if source not in {n[0] for n in needed}]
    jobs = []
    for source, arch, stem in needed:
        path = f"pretraining.{source}"
        section = pretraining[source]
        settings = _normalise(_complete({"arch": arch, "segformer_stem": stem, **section}))
        config = _train_config(settings, _origins(section, path), path, datasets, problems)
        if config is not None and any(c["pretrain"] == source for c in main):
            jobs.append(PretrainSpec(source=source, config=config))
    return jobs


def _train_config(settings: dict, origins: dict, path: str, datasets: dict, problems: _Problems) -> dict | None:
    """TrainConfig's own validation; its message goes to the key path the failing setting came from."""
    try:
        root = datasets[settings["dataset"]].root
        return TrainConfig.from_dict({**settings, "data_root": root}).to_dict()
    except (ConfigError, TypeError, ValueError) as error:
        field, _, why = str(error).partition(": ")
        if field in origins and why:
            problems.add(origins[field], why)
        else:
            problems.add(path, str(error))
        return None


def _tables(value: Any, configurations: list, variants: list, float_dims: dict, train: dict, seeds: tuple,
            problems: _Problems, check_matches: bool = True) -> tuple[TableSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.add("tables", f"expected a list of tables, got {_kind(value)}")
        return ()
    # The main trials a row can match; for a search, sampled numbers and names can be anything.
    if configurations:
        candidates = [{**c.config, "config_name": c.name, "stage": "main", "seed": seed}
                      for c in configurations for seed in seeds]
    else:
        candidates = [{**_complete({**train, **v}), "stage": "main", "seed": seeds[0]} for v in variants]
    unknowable = set(float_dims) | (set() if configurations else {"config_name"})
    tables, names = [], set()
    for index, entry in enumerate(value):
        path = f"tables[{index}]"
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping of name, title, columns and rows, got {_kind(entry)}")
            continue
        problems.known_keys(entry, TABLE_KEYS, path)
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in names:
            problems.add(f"{path}.name", f"expected a table name not used before, got {_kind(name)}")
        else:
            names.add(name)
        title = entry.get("title", name if isinstance(name, str) else "")
        if not isinstance(title, str):
            problems.add(f"{path}.title", f"expected text, got {_kind(title)}")
        columns = entry.get("columns", list(DEFAULT_TABLE_COLUMNS))
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            problems.add(f"{path}.columns", f"expected a list of {list(TABLE_COLUMNS)}, got {_kind(columns)}")
            columns = []
        for column in columns:
            problems.choice(column, TABLE_COLUMNS, f"{path}.columns")
        rows = entry.get("rows")
        if not isinstance(rows, list) or not rows:
            problems.add(f"{path}.rows", f"expected a non-empty list of {{label, match}}, got {_kind(rows)}")
            rows = []
        specs = []
        for row_index, row in enumerate(rows):
            row_path = f"{path}.rows[{row_index}]"
            if not isinstance(row, dict):
                problems.add(row_path, f"expected a mapping of label and match, got {_kind(row)}")
                continue
            problems.known_keys(row, ROW_KEYS, row_path)
            label = row.get("label")
            if not isinstance(label, str) or not label:
                problems.add(f"{row_path}.label", f"expected the row's label, got {_kind(label)}")
            match = _match(problems.mapping(row.get("match"), f"{row_path}.match", required=True),
                           f"{row_path}.match", problems)
            if check_matches and match and not any(
                    all(k in unknowable or _same_value(c[k], v) for k, v in match.items()) for c in candidates):
                problems.add(f"{row_path}.match", f"{match} matches no trial of this study")
            specs.append(RowSpec(label=str(label), match=match))
        tables.append(TableSpec(name=str(name), title=str(title), columns=tuple(columns), rows=tuple(specs)))
    return tuple(tables)


def _match(mapping: dict, path: str, problems: _Problems) -> dict:
    problems.known_keys(mapping, MATCH_COLUMNS, path)
    if not mapping:
        problems.add(path, f"expected at least one of {list(MATCH_COLUMNS)}")
    match = {}
    for key, value in mapping.items():
        if key == "config_name":
            if isinstance(value, str):
                match[key] = value
            else:
                problems.add(f"{path}.{key}", f"expected a configuration name, got {_kind(value)}")
        elif key == "stage":
            match[key] = problems.choice(value, STAGES, f"{path}.{key}")
        elif key in MATCH_COLUMNS:
            typed = _setting(key, value, f"{path}.{key}", problems)
            if typed is not _INVALID:
                match[key] = typed
    return match


# -- overrides and small helpers -----------------------------------------------------------
def _apply_overrides(raw: dict, overrides: Sequence[str], source: str) -> tuple[dict, dict[str, str]]:
    """Apply `KEY.PATH=VALUE` strings; returns the mapping and {key path: override} for messages."""
    overridden = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = re.sub(r"\[(\d+)\]", r".\1", key.strip()).split(".")
        if not sep or not all(parts):
            raise SpecError(f"{source}: --set {override!r}: expected KEY.PATH=VALUE, e.g. train.epochs=2")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node: Any = raw
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdecimal() or int(part) >= len(node):
                    raise SpecError(f"{source}: --set {override!r}: {where} is not an index of a list of {len(node)}")
                part = int(part)
            elif not isinstance(node, dict):
                raise SpecError(f"{source}: --set {override!r}: {'.'.join(parts[:depth])} is a value, not a mapping")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
        overridden[re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", ".".join(parts))] = override
    return raw, overridden


def _complete(settings: dict) -> dict:
    return {**DEFAULTS, **settings}


def _normalise(settings: dict) -> dict:
    if settings["arch"] == "fcn_resnet50":
        settings["segformer_stem"] = "paper"  # no meaning for FCN: one value, so no duplicate configurations
    return settings


def _origins(settings: dict, path: str) -> dict[str, str]:
    return {key: f"{path}.{key}" for key in settings}


def _space_origins(space: tuple) -> dict[str, str]:
    return {d.name: f"space.{d.name}" for d in space}


def _undeclared_source(source: Any, pretraining: dict) -> str:
    hint = _suggest(source, list(pretraining))
    if not hint and isinstance(source, str) and NAME.match(source):
        hint = f"; to pre-train one, declare its job: `pretraining: {{{source}: {{dataset: ...}}}}`"
    return (f"pretrain {source!r} is not 'none', 'imagenet' or a source declared under pretraining "
            f"(declared: {sorted(pretraining)}){hint}")


def _settings_key(settings: dict) -> str:
    return json.dumps({k: v for k, v in settings.items() if k != "seed"}, sort_keys=True)


def _same_value(have: Any, wanted: Any) -> bool:
    """Equal, with a tolerance for numbers (0.001 == 1e-3)."""
    if isinstance(have, bool) or isinstance(wanted, bool):
        return have is wanted
    if isinstance(have, (int, float)) and isinstance(wanted, (int, float)):
        return math.isclose(have, wanted, rel_tol=1e-9)
    return have == wanted


def _count(dropped: dict[str, int], why: str) -> None:
    dropped[why] = dropped.get(why, 0) + 1


def _number_or_none(value: Any) -> float | None:
    # PyYAML reads 1e-3 (no dot) as a string: accept what float() reads, as the user means a number.
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _label(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _suggest(value: Any, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=1) if isinstance(value, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__} {value!r}"[:80]
    return repr(value)[:80]
