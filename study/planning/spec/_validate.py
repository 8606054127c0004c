"""Study files: the whole file, section by section, then expanded."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from study.planning.spec._expand import _check_declared, _complete, _expand_grid, _expand_search, _pretraining_jobs
from study.planning.spec._problems import _kind, _Problems
from study.planning.spec._schema import (
    MAX_CONCURRENT,
    MAX_FAILURES,
    MAX_TRIALS,
    NOT_PER_TRIAL,
    TOP_KEYS,
    TRIAL_SETTINGS,
    StudySpec,
)
from study.planning.spec._sections import (
    _configurations,
    _datasets,
    _excludes,
    _pretraining_sections,
    _resources,
    _scheduler,
    _searcher,
    _seeds,
    _settings,
    _space,
    _tracking,
)
from study.planning.spec._tables import _tables


def _validate(raw: dict, problems: _Problems, environ: Mapping[str, str], overrides: tuple,
              allow_large: bool = False) -> StudySpec | None:
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
        max_concurrent = problems.integer(max_concurrent, "max_concurrent", 1, MAX_CONCURRENT)
    max_failures = problems.integer(raw.get("max_failures", 2), "max_failures", 0, MAX_FAILURES)
    space = _space(raw.get("space"), searcher, problems)
    excludes = _excludes(raw.get("exclude"), problems)
    declared = _configurations(raw.get("configurations"), problems)
    tracking = _tracking(raw.get("tracking"), problems)
    if problems.lines:
        return None  # expanding a file with a broken section would only repeat its problems

    _check_declared(train, space, datasets, pretraining, problems)
    _check_size(space, declared, seeds, searcher, allow_large, problems)
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
        problems.add("scheduler.grace_period",
                     f"expected at most train.epochs ({epochs}), got {scheduler.grace_period}")
    needs_gpu = [c.name for c in configurations if str(c.config.get("device", "auto")).startswith("cuda")]
    if (needs_gpu or str(_complete(train).get("device")).startswith("cuda")) and not resources.gpu:
        problems.add("resources.gpu", f"expected a GPU share per trial: trials ask for device cuda "
                                      f"({', '.join(needs_gpu) or 'train.device'}), but Ray gives a trial no GPU "
                                      f"with resources.gpu 0")
    planned = len(configurations) * len(seeds)
    if planned > MAX_TRIALS and not allow_large:
        problems.add("space" if space else "configurations",
                     f"{len(configurations)} configurations x {len(seeds)} seeds = {planned:,} trials, more than "
                     f"{MAX_TRIALS:,}; if you mean it, pass `study run --allow-large`")
    tables = _tables(raw.get("tables"), configurations, variants, float_dims, train, seeds, problems,
                     check_matches)
    if problems.lines:
        return None
    return StudySpec(
        name=name, description=description or "", datasets=datasets, train_settings=train,
        configurations=tuple(configurations), variants=tuple(variants), float_dims=float_dims, dropped=tuple(dropped),
        seeds=seeds, searcher=searcher, scheduler=scheduler, resources=resources, max_concurrent=max_concurrent,
        max_failures=max_failures, pretraining=tuple(jobs), tables=tables, raw=raw, overrides=overrides,
        source_path=problems.source, tracking=tracking,
    )




def _check_size(space: tuple, declared: list, seeds: tuple, searcher, allow_large: bool, problems: _Problems) -> None:
    """Refuse a cross product too large to expand before expanding it (a grid of grids grows fast)."""
    if searcher.type != "grid":
        return
    combinations = math.prod(len(d.values) for d in space if d.kind == "grid") if space else 0
    planned = (combinations + len(declared)) * len(seeds)
    limit = MAX_TRIALS * (50 if allow_large else 1)
    if planned > limit:
        problems.add("space", f"the grid plans up to {planned:,} trials ({combinations:,} combinations of `space`, "
                              f"{len(declared)} configurations, {len(seeds)} seeds), more than {limit:,}"
                              + ("" if allow_large else "; if you mean it, pass `study run --allow-large`"))
