"""Who a trial is and what it trains, from the config Ray Tune hands it: plain Python, no Ray, no torch.

Two config shapes, both resolved here (by the trial itself and by the study's results
loader, which must agree):
- grid and pretraining trials: {"trial": {...TrainConfig fields..., "trial_key", "config_name", "stage"}}
- searcher trials: {"variant": "<label>", <sampled number settings>...}, completed from the
  study's `base` settings and its `variants` (label -> categorical settings).
`pretrain` stays the name of the study's pretraining source here; the adapter swaps in the
encoder file that the study made for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trainables.config import FIELDS, TrainConfig
from trainables.records import VAL_PREFIX, flat

IDENTITY = ("trial_key", "config_name", "stage")
SEARCH_KEY_PREFIX = "search-"


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a stage shares; passed once through `tune.with_parameters`."""

    stage_uri: str = ""  # the stage's folder (path or URI): a trial's folder is <stage_uri>/<trial_key>
    base: dict = field(default_factory=dict)  # searcher: settings shared by every variant
    variants: dict = field(default_factory=dict)  # searcher: label -> one valid categorical combination
    encoders: dict = field(default_factory=dict)  # weights_key(...) -> encoder or weights file (path or URI)
    stopped: tuple = ()  # trial keys the scheduler stopped before the restored Tune state recorded it
    datasets: dict = field(default_factory=dict)  # dataset name -> its declaration (DataDeclaration.to_dict())


def resolve_trial(config: dict, context: StudyContext, trial_id: str | None = None) -> tuple[dict, TrainConfig]:
    """(identity: trial_key, config_name, stage; the training settings) of one trial."""
    if "trial" in config:
        values = dict(config["trial"])
    else:
        variant = config["variant"]
        values = {**context.base, **context.variants[variant], "config_name": variant, "stage": "main",
                  "trial_key": search_trial_key(trial_id)}
        values.update({k: v for k, v in config.items() if k != "variant"})
        # the base's model settings that this variant's architecture ignores (an aux head for LR-ASPP) at their
        # defaults, as the study file's validation held them
        from trainables.models import family_of

        values = family_of(values["arch"]).normalise(values, {n: f.default for n, f in FIELDS.items()})
    identity = {key: values.pop(key) for key in IDENTITY}
    return identity, TrainConfig.from_dict({k: v for k, v in values.items() if k in FIELDS})


def search_trial_key(trial_id: str | None) -> str:
    return f"{SEARCH_KEY_PREFIX}{trial_id}"


def trial_dirname(config: dict, trial_id: str) -> str:
    """A trial's folder name in its stage: its trial key (searcher trials: the one their config names, else
    search-<Tune's trial id>; a proposal handed out again after a resume keeps the key it was first given)."""
    if "trial" in config:
        return config["trial"]["trial_key"]
    return config.get("trial_key") or search_trial_key(trial_id)


def join_uri(base: str, *names: str) -> str:
    """<base>/<name>/..., keeping a URI's query (e.g. ?endpoint_override=...) at the end."""
    location, mark, query = base.partition("?") if "://" in base else (base, "", "")
    return "/".join([location.rstrip("/"), *names]) + mark + query


def encoder_key(source: str, settings: dict) -> str:
    """Which pretrained encoder a trial of these settings takes from `source`: one per arch and encoder options."""
    from trainables.models import family_of

    return "|".join([source, *map(str, family_of(settings["arch"]).encoder_signature(settings))])


def weights_key(settings: dict) -> str:
    """Which weights file a trial of these settings reads: its pretraining source's encoder (encoder_key), or for
    built-in weights (imagenet, coco) and a weights file, the file of its arch, encoder options and variant."""
    key = encoder_key(settings["pretrain"], settings)
    return f"{key}|{settings.get('imagenet_weights', '')}" if settings["pretrain"] in ("imagenet", "coco") else key


def variant_label(variant: dict) -> str:
    """A searcher variant's name: its categorical settings, e.g. "freeze=none/pretrain=cityscapes"."""
    return "/".join(f"{key}={variant[key]}" for key in sorted(variant))


def trial_report(record: dict, identity: dict, execution: dict, last_val: dict) -> dict:
    """What a trial reports to Tune for one epoch: the flat record, who it is and where it ran.

    Schedulers and searchers compare `val_miou` on every report: between validations they see
    the last validated value (NaN before the first), kept in `last_val`; `validated` tells the
    record's readers which epochs were validated.
    """
    metrics = {**flat(record), **identity, **execution}
    if record["validated"]:
        last_val.clear()
        last_val.update({k: v for k, v in metrics.items() if k.startswith(VAL_PREFIX)})
    else:
        metrics.update(last_val or {"val_miou": math.nan, "val_loss": math.nan})
    return metrics
