"""The models a plan builds from a user's factory (arch module:function), built once on the driver before Ray
starts: a factory that cannot be imported, fails, or gives logits of the wrong shape is named there, in one
line, instead of in every trial."""

from __future__ import annotations

import importlib
import json

from study.planning.plan import Plan
from trainables.config import TrainConfig
from trainables.models import FACTORY_FAMILY, family_of


def check_factory_models(plan: Plan) -> None:
    """A TrainablesError (ConfigError) naming the first factory model that does not work."""
    checked = set()
    for settings in plan.planned_settings():
        family = family_of(settings["arch"])
        key = json.dumps([settings["arch"], settings.get("model_kwargs"), settings.get("num_classes"),
                          settings.get("freeze"), settings.get("pretrain"), settings.get("head_lr_mult"),
                          settings.get("export_encoder")], default=str)
        if family.module != FACTORY_FAMILY or key in checked:
            continue
        checked.add(key)
        importlib.import_module(family.module).check(TrainConfig.from_dict(settings))
