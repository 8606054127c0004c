"""The protocol beside the numbers: what the plan says each table row's trials ran (model, encoder, optimizer,
schedule, ...), a search's dimensions, and where two studies' protocols differ."""

from __future__ import annotations

import pandas as pd

from study.analysis.tables import TrialFinder, main_trials
from study.planning.plan import EXECUTION_ONLY
from study.planning.record import TRIAL_COLUMNS, Stage, setting_values, settings_from_row, typed_frame
from study.reading.results import StudyResults
from trainables.config import FIELDS as SETTING_FIELDS
from trainables.errors import ConfigError
from trainables.models import MODEL_SETTINGS, family_of

# Settings that shape what a trial learns (compared between studies): not where or how fast it ran,
# not the seed (compared as a set), not the test-only fault injection.
PROTOCOL_SETTINGS = tuple(name for name in SETTING_FIELDS
                          if name not in EXECUTION_ONLY and name != "seed" and not name.startswith("fault_"))


# -- the protocol: what the plan says each row ran ----------------------------------
def planned_trials(results: StudyResults) -> pd.DataFrame:
    """The main trials' settings as planned: the plan's trials; for a search, the record's (the searcher
    sampled them)."""
    if not results.plan.trials:
        return main_trials(results)
    return typed_frame([{"trial_key": t.trial_key, "config_name": t.config_name, "stage": Stage.MAIN.value,
                         **setting_values(t.config)} for t in results.plan.trials], TRIAL_COLUMNS)


def model_text(s: dict) -> str:
    try:
        return family_of(s["arch"]).describe(s)
    except ConfigError:  # an arch this segstudy does not know (a study planned by another version)
        return str(s["arch"])


def encoder_text(s: dict) -> str:
    pretrain = {"none": "from scratch", "imagenet": "ImageNet"}.get(s["pretrain"], f"{s['pretrain']} pretraining")
    return pretrain + (", frozen" if s.get("freeze") == "encoder" else "")


def optimizer_text(s: dict) -> str:
    name = {"adamw": "AdamW", "adam": "Adam"}.get(s["optimizer"], str(s["optimizer"]))
    return f"{name}{', amsgrad' if s.get('amsgrad') else ''}, weight decay {s['weight_decay']:g}"


def schedule_text(s: dict) -> str:
    if s["scheduler"] == "exponential":
        return f"exponential, ×{s['gamma']:g} per epoch"
    if s["scheduler"] == "step":
        return f"step, ×{s['gamma']:g} every {s['step_size']} epochs"
    return str(s["scheduler"])


def image_size_text(s: dict) -> str:
    height, width = s["image_size"]
    return f"{height}×{width}"


SETUP_COLUMNS = (
    ("model", model_text),
    ("encoder", encoder_text),
    ("optimizer", optimizer_text),
    ("lr", lambda s: f"{s['lr']:g}"),
    ("schedule", schedule_text),
    ("epochs", lambda s: f"{s['epochs']} (val every {s['val_interval']})"),
    ("batch size", lambda s: str(s["batch_size"])),
    ("image size", image_size_text),
)


def _settings(trials: pd.DataFrame) -> list[dict]:
    return [settings_from_row(row) for row in trials.to_dict("records")]


def _distinct(values) -> str:
    return " / ".join(dict.fromkeys(values)) or "–"


def seeds_text(seeds) -> str:
    seeds = sorted(set(seeds))
    if len(seeds) > 4 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{len(seeds)} ({seeds[0]}–{seeds[-1]})"
    return ", ".join(map(str, seeds)) or "–"


def setup_grid(find: TrialFinder, declaration) -> tuple[list[str], list[list[str]]]:
    """One line per row of a table: the settings its planned trials share (different values joined by /)."""
    headers = ["row"] + [name for name, _ in SETUP_COLUMNS] + ["seeds"]
    cells = []
    for row in declaration.rows:
        settings = [s for s in _settings(find(row.match)) if _complete(s)]
        cells.append([row.label] + [_distinct(text(s) for s in settings) for _, text in SETUP_COLUMNS]
                     + [seeds_text(s["seed"] for s in settings)])
    return headers, cells


def _complete(settings: dict) -> bool:
    """A trial whose record has what the setup columns show (a model's options may postdate its record)."""
    return "seed" in settings and all(name in settings for parts in _SETUP_PARTS.values() for name in parts
                                      if name not in MODEL_SETTINGS)


def protocol(find: TrialFinder, match: dict) -> dict[str, str]:
    """Every setting that shapes what a row's trials learn (distinct values joined), and its seeds."""
    settings = _settings(find(match))
    values = {name: _distinct(_setting_text(s.get(name)) for s in settings) for name in PROTOCOL_SETTINGS}
    values["seeds"] = seeds_text(s["seed"] for s in settings if "seed" in s)
    return values


def _setting_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "×".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else "–" if value is None else str(value)


def protocol_differences(declaration, find_a: TrialFinder, find_b: TrialFinder, name_a: str, name_b: str
                         ) -> tuple[list[str], list[list[str]]]:
    """Row, setting, this study's value, the other's: each place where the two protocols differ."""
    cells = []
    for row in declaration.rows:
        a, b = protocol(find_a, row.match), protocol(find_b, row.match)
        cells += [[row.label, name, a[name], b[name]] for name in a if a[name] != b[name]]
    return ["row", "setting", name_a, name_b], cells


def search_protocol(results: StudyResults) -> tuple[list[str], list[list[str]]]:
    """What a search searched and over what: its base settings, dimensions, samples, searcher and scheduler."""
    plan, search = results.plan, results.plan.search
    base = search.base_config
    dims: dict[str, list] = {}
    for variant in search.variants:
        for name, value in variant.items():
            dims.setdefault(name, [])
            if value not in dims[name]:
                dims[name].append(value)
    searched = set(dims) | set(search.float_dims)
    cells = [[name, text(base)] for name, text in SETUP_COLUMNS
             if not any(part in searched for part in _SETUP_PARTS[name])]
    cells += [[name, f"one of {', '.join(map(str, values))}"] for name, values in sorted(dims.items())]
    cells.append(["valid combinations", str(len(search.variants))])
    cells += [[name, f"{kind} in [{low:g}, {high:g}]"] for name, (kind, low, high) in sorted(search.float_dims.items())]
    searcher, scheduler = plan.execution.searcher, plan.execution.scheduler
    cells.append(["samples", f"{search.num_samples}, by {searcher.type} (seed {searcher.seed}, multivariate "
                             f"{searcher.multivariate}, constant liar {searcher.constant_liar})"])
    if scheduler.type == "asha":
        cells.append(["scheduler", f"ASHA on {scheduler.metric} ({scheduler.mode}): grace period "
                                   f"{scheduler.grace_period}, reduction factor {scheduler.reduction_factor}, "
                                   f"max {scheduler.max_t} epochs"])
    else:
        cells.append(["scheduler", f"{scheduler.type}: every trial runs all its epochs"])
    cells.append(["seed", str(base.get("seed"))])
    return ["setting", "value"], cells


# The settings each setup column shows (a column searched over is shown as a dimension instead).
_SETUP_PARTS = {"model": ("arch", *MODEL_SETTINGS), "encoder": ("pretrain", "freeze"),
                "optimizer": ("optimizer", "amsgrad", "weight_decay"), "lr": ("lr",),
                "schedule": ("scheduler", "gamma", "step_size"), "epochs": ("epochs", "val_interval"),
                "batch size": ("batch_size",), "image size": ("image_size",)}
