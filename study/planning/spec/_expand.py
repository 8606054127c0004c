"""Study files: expansion into configurations (grid), variants (searcher) and pretraining jobs."""

from __future__ import annotations

import itertools
import json
from typing import Any

from study.names import is_name
from study.planning.record import same_value
from study.planning.spec._problems import _Problems, _suggest
from study.planning.spec._schema import BUILTIN_PRETRAIN, DEFAULTS, Configuration, PretrainSpec, is_weights_file
from trainables.config import TrainConfig
from trainables.errors import ConfigError
from trainables.models import family_of


def _check_declared(train: dict, space: tuple, datasets: dict, pretraining: dict, problems: _Problems) -> None:
    """Names that must be declared: a mistake here is an error even in the cross product."""
    # train's dataset, when it names one or the only dataset is the default's; configurations naming their own
    # dataset are checked one by one (with the configuration named)
    dataset = train.get("dataset", DEFAULTS["dataset"])
    if dataset not in datasets and ("dataset" in train or not datasets):
        problems.add("train.dataset", f"{dataset!r} is not declared under datasets (declared: {sorted(datasets)})"
                                      f"{_suggest(dataset, sorted(datasets))}")
    for source, section in pretraining.items():
        if section["dataset"] not in datasets:
            problems.add(f"pretraining.{source}.dataset",
                         f"{section['dataset']!r} is not declared under datasets (declared: {sorted(datasets)})")
    pretrain_values = [("train.pretrain", train.get("pretrain", "none"))] + [
        (f"space.pretrain.{d.kind}" if d.kind != "fixed" else "space.pretrain", v)
        for d in space if d.name == "pretrain" for v in d.values]
    for path, source in pretrain_values:
        if source not in BUILTIN_PRETRAIN and source not in pretraining and not is_weights_file(source):
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
        if any(all(same_value(complete[k], v) for k, v in exclude.items()) for exclude in excludes):
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
        return "dataset", (f"dataset {settings['dataset']!r} is not declared under datasets "
                           f"(declared: {sorted(datasets)})")
    if source not in BUILTIN_PRETRAIN and source not in pretraining and not is_weights_file(source):
        return "pretrain", _undeclared_source(source, pretraining)
    try:
        family = family_of(arch)
    except ConfigError as error:
        return "arch", str(error).partition(": ")[2]
    problem = family.problem(settings)
    if problem:
        field, _, why = problem.partition(": ")
        return field, why
    if settings["freeze"] == "encoder" and source == "none":
        return "freeze", "freeze 'encoder' needs a pretrained encoder (pretrain is 'none')"
    pinned = pretraining.get(source, {})
    if pinned.get("arch", arch) != arch:
        return "arch", f"pretraining {source!r} makes {pinned['arch']} encoders, not {arch}"
    for option in family.encoder_options:
        if pinned.get(option, settings[option]) != settings[option]:
            return option, (f"pretraining {source!r} makes encoders with {option} {pinned[option]}, "
                            f"not {settings[option]}")
    return None


def _pretraining_jobs(pretraining: dict, main: list[dict], train: dict, datasets: dict,
                      problems: _Problems) -> list[PretrainSpec]:
    """One job per source and encoder (arch and encoder options) that main trials use; a source no trial uses is
    still validated."""
    needed: dict = {}
    for config in main:
        if config["pretrain"] in pretraining:
            family = family_of(config["arch"])
            encoder = {"arch": config["arch"], **{name: config[name] for name in family.encoder_options}}
            needed.setdefault((config["pretrain"], family.encoder_signature(config)), encoder)
    jobs = []
    unused = [(source, {"arch": train.get("arch", DEFAULTS["arch"])}) for source in pretraining
              if source not in {key[0] for key in needed}]
    for (source, _), encoder in [*sorted(needed.items(), key=lambda item: item[0]),
                                 *(((s, None), e) for s, e in unused)]:
        path = f"pretraining.{source}"
        section = pretraining[source]
        settings = _normalise(_complete({**encoder, **section}))
        config = _train_config(settings, _origins(section, path), path, datasets, problems)
        if config is not None and any(c["pretrain"] == source for c in main):
            jobs.append(PretrainSpec(source=source, config=config))
    return jobs


def _train_config(settings: dict, origins: dict, path: str, datasets: dict, problems: _Problems) -> dict | None:
    """TrainConfig's own validation; its message goes to the key path the failing setting came from."""
    try:
        dataset = datasets[settings["dataset"]]
        return TrainConfig.from_dict({**settings, "data_root": dataset.root,
                                      "num_classes": dataset.num_classes}).to_dict()
    except (ConfigError, TypeError, ValueError) as error:
        field, _, why = str(error).partition(": ")
        if field in origins and why:
            problems.add(origins[field], why)
        else:
            problems.add(path, str(error))
        return None


def _complete(settings: dict) -> dict:
    return {**DEFAULTS, **settings}


def _normalise(settings: dict) -> dict:
    """Model settings the arch's family ignores at their defaults: one value, so no duplicate configurations."""
    try:
        return family_of(settings["arch"]).normalise(settings, DEFAULTS)
    except ConfigError:  # an unknown arch: named where its configuration is built
        return settings


def _origins(settings: dict, path: str) -> dict[str, str]:
    return {key: f"{path}.{key}" for key in settings}


def _space_origins(space: tuple) -> dict[str, str]:
    return {d.name: f"space.{d.name}" for d in space}


def _undeclared_source(source: Any, pretraining: dict) -> str:
    hint = _suggest(source, list(pretraining))
    if not hint and is_name(source):
        hint = f"; to pre-train one, declare its job: `pretraining: {{{source}: {{dataset: ...}}}}`"
    return (f"pretrain {source!r} is not 'none', 'imagenet', 'coco', a weights file or a source declared under "
            f"pretraining (declared: {sorted(pretraining)}){hint}")


def _settings_key(settings: dict) -> str:
    return json.dumps({k: v for k, v in settings.items() if k != "seed"}, sort_keys=True)


def _count(dropped: dict[str, int], why: str) -> None:
    dropped[why] = dropped.get(why, 0) + 1




def _label(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
