"""Study files: each section's shape and types (first pass)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from study.planning.spec._problems import _is_int, _join, _kind, _number_or_none, _Problems
from study.planning.spec._schema import (
    BUILTIN_PRETRAIN,
    CHOICES,
    DATASET_KEYS,
    DIMENSION_KINDS,
    FIELD_TYPES,
    GENERATE_DEFAULTS,
    MAX_CPU_PER_TRIAL,
    MAX_GENERATED,
    MAX_GPU_PER_TRIAL,
    MAX_SAMPLES,
    MAX_SEEDS,
    MLFLOW_KEYS,
    NOT_PER_TRIAL,
    NOT_SEARCHED,
    NOT_SETTINGS,
    RESOURCE_KEYS,
    SCHEDULER_KEYS,
    SCHEDULER_METRICS,
    SEARCHED_SETTINGS,
    SEARCHER_KEYS,
    SETTINGS,
    TRACKING_KEYS,
    TRIAL_SETTINGS,
    WANDB_KEYS,
    WANDB_MODES,
    DatasetSpec,
    Dimension,
    MLflowSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearcherSpec,
    TrackingSpec,
    WandbSpec,
    is_weights_file,
)
from trainables.config import MAX_SEED, PAIRS, class_weight_values, model_options, pair_type
from trainables.data.declaration import declare
from trainables.data.presets import PRESETS
from trainables.errors import ConfigError


def _datasets(value: Any, problems: _Problems, environ: Mapping[str, str]) -> dict[str, DatasetSpec]:
    """Each dataset's root (and where it comes from) and its declaration (trainables/data/declaration.py)."""
    mapping = problems.mapping(value, "datasets", required=True)
    if isinstance(value, dict) and not value:
        problems.add("datasets", f"expected at least one dataset, e.g. roads: {{format: folder, root: data/roads, "
                                 f"classes: [...]}}, or a preset ({', '.join(PRESETS)})")
    datasets = {}
    for name, entry in mapping.items():
        path = f"datasets.{name}"
        if problems.name(name, path, "a dataset name") is None:  # it names the dataset's cache folders
            continue
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping with format and root (and the format's keys), got {_kind(entry)}")
            continue
        env = entry.get("env", f"SEGSTUDY_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_ROOT")
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
            generate = {key: problems.integer(given.get(key, default), f"{path}.generate.{key}",
                                              0 if key == "seed" else 1, MAX_SEED if key == "seed" else MAX_GENERATED)
                        for key, default in GENERATE_DEFAULTS.items()}
        root = os.path.abspath(os.path.expanduser(root))
        declaration, found = declare(name, {k: v for k, v in entry.items() if k not in DATASET_KEYS}, root)
        for key, message in found:
            problems.add(_join(path, key) if key else path, message)
        if declaration is not None:
            datasets[name] = DatasetSpec(name=name, root=root, env=env, generate=generate, declaration=declaration)
    return datasets


_INVALID = object()


def _settings(mapping: dict, path: str, allowed: Sequence[str], reasons: Mapping[str, str],
              problems: _Problems) -> dict:
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
    elif key in PAIRS:
        return _pair_setting(key, value, path, problems)
    elif key in CHOICES:
        if problems.choice(value, CHOICES[key], path) is not None:
            return value
    elif key in TEXT_FORMS:
        return TEXT_FORMS[key](value, path, problems)
    elif isinstance(value, str):
        return value
    else:
        problems.add(path, f"expected a string, got {_kind(value)}")
    return _INVALID


def _pair_setting(key: str, value: Any, path: str, problems: _Problems) -> Any:
    """A pair setting (image_size, scale_range, crop_size, ...): N or [a, b] (null where it may be)."""
    number = float if pair_type(key) is float else int
    optional = "None" in FIELD_TYPES[key]
    if value is None and optional:
        return None

    def fits(v: Any) -> bool:
        return _is_int(v) if number is int else _number_or_none(v) is not None and math.isfinite(_number_or_none(v))

    if fits(value):
        return [number(_number_or_none(value))] * 2
    if isinstance(value, list) and len(value) == 2 and all(fits(v) for v in value):
        return [number(_number_or_none(v)) for v in value]
    what = "[height, width] in pixels" if number is int else "[low, high]"
    problems.add(path, f"expected {'null, ' if optional else ''}N or {what}, got {_kind(value)}")
    return _INVALID


def _class_weights(value: Any, path: str, problems: _Problems) -> Any:
    """none, auto, or a list of weights (kept as the setting's text, 'w0,w1,...')."""
    if isinstance(value, list) and value and all(_number_or_none(v) is not None for v in value):
        value = ",".join(f"{_number_or_none(v):g}" for v in value)
    try:
        class_weight_values(value)
    except ConfigError as error:
        problems.add(path, str(error).partition(": ")[2])
        return _INVALID
    return value


def _model_kwargs(value: Any, path: str, problems: _Problems) -> Any:
    """A mapping of keyword arguments (kept as the setting's JSON text)."""
    if isinstance(value, dict):
        try:
            return json.dumps(value, sort_keys=True)
        except (TypeError, ValueError):
            problems.add(path, f"expected a mapping of plain values (numbers, text, lists), got {_kind(value)}")
            return _INVALID
    try:
        model_options(value)
    except ConfigError:
        problems.add(path, f"expected a mapping of keyword arguments, got {_kind(value)}")
        return _INVALID
    return value


# Settings kept as text whose study-file form is richer: a list of weights, a mapping of arguments.
TEXT_FORMS = {"class_weights": _class_weights, "model_kwargs": _model_kwargs}


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
        if settings.get("pretrain", "none") not in BUILTIN_PRETRAIN and not is_weights_file(settings["pretrain"]):
            problems.add(f"{path}.pretrain", f"expected none, imagenet, coco or a weights file (pretraining jobs do "
                                             f"not chain), got {settings['pretrain']!r}")
        if settings.get("export_encoder") == "none":
            problems.add(f"{path}.export_encoder",
                         "expected last or best: a pretraining job exists to export its encoder")
        sections[source] = {"export_encoder": "last", **settings}
    return sections


def _searcher(value: Any, problems: _Problems) -> SearcherSpec:
    mapping = problems.mapping(value, "searcher")
    problems.known_keys(mapping, SEARCHER_KEYS, "searcher")
    storage = mapping.get("storage")
    if storage is not None and not (isinstance(storage, str) and storage):
        problems.add("searcher.storage", f"expected an Optuna storage URL (e.g. sqlite:///optuna.db) or null, "
                                         f"got {_kind(storage)}")
    flags = {}
    for key in ("multivariate", "constant_liar"):
        flag = mapping.get(key, getattr(SearcherSpec, key))
        if not isinstance(flag, bool):
            problems.add(f"searcher.{key}", f"expected true or false, got {_kind(flag)}")
            flag = getattr(SearcherSpec, key)
        flags[key] = flag
    return SearcherSpec(
        type=problems.choice(mapping.get("type", "grid"), ("grid", "optuna"), "searcher.type") or "grid",
        num_samples=problems.integer(mapping.get("num_samples", 10), "searcher.num_samples", 1,
                                     MAX_SAMPLES) or 1,
        seed=problems.integer(mapping.get("seed", 0), "searcher.seed", 0, MAX_SEED) or 0,
        storage=storage if isinstance(storage, str) else None,
        **flags,
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
        reduction_factor=problems.integer(mapping.get("reduction_factor", 2), "scheduler.reduction_factor", 2,
                                          1000) or 2,
    )


def _resources(value: Any, problems: _Problems) -> ResourcesSpec:
    mapping = problems.mapping(value, "resources")
    problems.known_keys(mapping, RESOURCE_KEYS, "resources")
    cpu = problems.number(mapping.get("cpu", 1), "resources.cpu", 0, strict=True, maximum=MAX_CPU_PER_TRIAL)
    gpu = problems.number(mapping.get("gpu", 0), "resources.gpu", 0, maximum=MAX_GPU_PER_TRIAL)
    if gpu is not None and gpu > 1 and gpu != int(gpu):
        problems.add("resources.gpu", f"expected a fraction of one GPU or a whole number of GPUs, got {gpu}")
    return ResourcesSpec(cpu=cpu or 1.0, gpu=gpu or 0.0)


# MLflow tracking URI schemes (a URI without one is a local folder); sqlite and folders resolve to absolute paths.
MLFLOW_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")
WANDB_FORBIDDEN = set("/\\#?%:")  # characters W&B refuses in project and entity names


def _tracking(value: Any, problems: _Problems) -> TrackingSpec:
    mapping = problems.mapping(value, "tracking")
    problems.known_keys(mapping, TRACKING_KEYS, "tracking")
    mlflow = wandb = None
    if mapping.get("mlflow") is not None:
        given = problems.mapping(mapping["mlflow"], "tracking.mlflow")
        problems.known_keys(given, MLFLOW_KEYS, "tracking.mlflow")
        uri = _mlflow_uri(given.get("tracking_uri"), problems)
        experiment = given.get("experiment")
        if experiment is not None and not (isinstance(experiment, str) and experiment.strip()):
            problems.add("tracking.mlflow.experiment", f"expected an MLflow experiment name (default: the study's "
                                                       f"name), got {_kind(experiment)}")
            experiment = None
        if uri is not None:
            mlflow = MLflowSpec(tracking_uri=uri, experiment=experiment)
    if mapping.get("wandb") is not None:
        given = problems.mapping(mapping["wandb"], "tracking.wandb")
        problems.known_keys(given, WANDB_KEYS, "tracking.wandb")
        names = {key: _wandb_name(given.get(key), f"tracking.wandb.{key}", problems) for key in ("project", "entity")}
        mode = problems.choice(given.get("mode", "online"), WANDB_MODES, "tracking.wandb.mode") or "online"
        wandb = WandbSpec(project=names["project"], entity=names["entity"], mode=mode)
    tensorboard = mapping.get("tensorboard", False)
    if not isinstance(tensorboard, bool):
        problems.add("tracking.tensorboard", f"expected true or false, got {_kind(tensorboard)}")
        tensorboard = False
    return TrackingSpec(mlflow=mlflow, wandb=wandb, tensorboard=tensorboard)


def _mlflow_uri(value: Any, problems: _Problems) -> str | None:
    path = "tracking.mlflow.tracking_uri"
    expected = "expected an MLflow tracking URI: http(s)://HOST:PORT of a server, sqlite:///FILE.db or a folder"
    if not isinstance(value, str) or not value.strip():
        problems.add(path, f"{expected}, got {_kind(value)}")
        return None
    scheme, sep, rest = value.partition(":")
    if not sep or len(scheme) == 1:  # no scheme (a Windows drive letter is none either): a folder
        return os.path.abspath(os.path.expanduser(value))
    if scheme not in MLFLOW_SCHEMES:
        problems.add(path, f"{expected} (schemes: {', '.join(MLFLOW_SCHEMES)}), got {value!r}")
        return None
    if rest.strip("/") == "" or (scheme in ("http", "https") and not rest.startswith("//")):
        problems.add(path, f"{expected}, got {value!r}")
        return None
    if scheme == "sqlite":
        if not rest.startswith("///"):
            problems.add(path, f"expected sqlite:///FILE.db (relative) or sqlite:////ABSOLUTE/FILE.db, got {value!r}")
            return None
        # A relative database file resolves against the working directory now, so a resume from
        # elsewhere logs to the same database (the spec as run keeps the absolute path).
        return "sqlite:///" + os.path.abspath(os.path.expanduser(rest[3:]))
    return value


def _wandb_name(value: Any, path: str, problems: _Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 128 or WANDB_FORBIDDEN & set(value):
        problems.add(path, f"expected a W&B name of at most 128 characters without {' '.join(sorted(WANDB_FORBIDDEN))},"
                           f" got {_kind(value)}")
        return None
    return value


def _seeds(value: Any, problems: _Problems) -> tuple[int, ...]:
    if _is_int(value) and 1 <= value <= MAX_SEEDS:
        return tuple(range(value))
    if isinstance(value, list) and 0 < len(value) <= MAX_SEEDS and len(set(map(str, value))) == len(value) \
            and all(_is_int(s) and 0 <= s <= MAX_SEED for s in value):
        return tuple(value)
    problems.add("seeds", f"expected a number of seeds from 1 to {MAX_SEEDS} or a list of at most {MAX_SEEDS} distinct "
                          f"integers from 0 to {MAX_SEED}, got {_kind(value)}")
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



def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
