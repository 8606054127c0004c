"""Models: families of architectures, and the model of a training run.

A family is one module of this package named `family_<name>.py`. At its top, without importing torch
(a study's spec, plan and report ask families while reading files only), it declares

    FAMILY = ModelFamily(...)       its architectures, options, encoder options and built-in weights
    def build(config, weights=None) -> nn.Module
                                    the model of a TrainConfig with its pretrained weights loaded: for a
                                    built-in source (imagenet, coco) from `weights`, the file FAMILY.locate
                                    found (the runner hands trials a content-addressed copy), else from
                                    where FAMILY.locate looks; for a file or a pretraining source, from it

`family_of(arch)` finds an architecture's family: one that lists it, or, for `module:function`, the
user's factory (family_factory.py). The spec, plan, searcher, record and report ask the family and
never name an architecture, so a new model is one new file here.

A model's forward takes normalised images [N, 3, H, W] and returns logits [N, K, h, w] (resized to
the masks' size when h, w differ) or, in training, {"out": logits, "aux": logits} when it has an
auxiliary head. Its `encoder` (a submodule) is what pretraining exports, freezing freezes and the
head learning-rate multiplier leaves alone; everything else is its head.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from trainables.errors import ConfigError

FACTORY_FAMILY = "trainables.models.family_factory"


@dataclass(frozen=True)
class ModelFamily:
    """What the rest of segstudy may ask about a family's models without building one."""

    name: str
    archs: tuple[str, ...]  # the architectures it builds (the factory family: every module:function)
    module: str  # the family's module, which has `build(config)`
    # TrainConfig settings that mean something for this family; a configuration of one of its
    # architectures holds every other model setting at its default, so they never multiply trials.
    options: tuple[str, ...] = ()
    # Those of the options that shape the encoder: a pretrained encoder fits only equal values.
    encoder_options: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()  # built-in `pretrain` sources besides none and a file: imagenet, coco
    # Architectures that take fewer options than the family's (e.g. no auxiliary head): arch -> its options.
    arch_options: dict = field(default_factory=dict, compare=False)
    # (arch, settings) -> why these settings make no model of this family, or None
    rules: Callable[[str, dict], str | None] | None = field(default=None, compare=False)
    label: Callable[[dict], str] | None = field(default=None, compare=False)  # describe(); default: the arch
    # (settings) -> the local file that a built-in weight source (pretrain imagenet or coco) is read from;
    # a WeightsError naming where it was expected when it is not there. Light: no torch import.
    locate: Callable[[dict], str] | None = field(default=None, compare=False)

    def problem(self, config: Any) -> str | None:
        """Why a TrainConfig (or its dict) makes no model of this family; None when it makes one."""
        settings = config if isinstance(config, dict) else config.to_dict()
        arch, pretrain = settings["arch"], settings.get("pretrain", "none")
        if pretrain in BUILTIN_WEIGHTS and pretrain not in self.weights:
            has = ", ".join(self.weights) or "none built in; give a weights file"
            return f"pretrain: no '{pretrain}' weights exist for {arch} (the {self.name} family has: {has})"
        return self.rules(arch, settings) if self.rules else None

    def options_for(self, arch: str) -> tuple[str, ...]:
        """The model settings that mean something for `arch`."""
        return self.arch_options.get(arch, self.options)

    def normalise(self, settings: dict, defaults: dict) -> dict:
        """The settings with every model setting the arch ignores at its default (one value, no repeats)."""
        options = self.options_for(settings["arch"])
        for name in MODEL_SETTINGS:
            if name not in options and name in defaults:
                settings[name] = defaults[name]
        return settings

    def encoder_signature(self, settings: dict) -> tuple:
        """(arch, the encoder options' values): settings whose pretrained encoders are interchangeable."""
        return (settings["arch"], *(settings[name] for name in self.encoder_options))

    def describe(self, settings: dict) -> str:
        """The model in a report, e.g. "segformer_b0 (paper stem)"."""
        return self.label(settings) if self.label else str(settings["arch"])


# Built-in weight sources a family may have; pretrain's other values are none, a pretraining source or a file.
BUILTIN_WEIGHTS = ("imagenet", "coco")
# The model settings a family may take as options (every other setting means the same for every model).
MODEL_SETTINGS = ("segformer_stem", "drop_path", "aux_loss_weight", "imagenet_weights", "model_kwargs")


@cache
def families() -> tuple[ModelFamily, ...]:
    """Every family of this package (its family_*.py modules), the factory family last."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("family_"))
    found = [importlib.import_module(f"{__name__}.{name}").FAMILY for name in names]
    return tuple(sorted(found, key=lambda f: f.module == FACTORY_FAMILY))


def known_archs() -> tuple[str, ...]:
    return tuple(arch for family in families() for arch in family.archs)


def family_of(arch: Any) -> ModelFamily:
    """The family that builds `arch`; a ConfigError naming the known architectures otherwise."""
    for family in families():
        if arch in family.archs:
            return family
    if isinstance(arch, str) and ":" in arch:
        return importlib.import_module(FACTORY_FAMILY).FAMILY
    import difflib

    close = difflib.get_close_matches(str(arch), known_archs(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"arch: expected one of {list(known_archs())} or a model factory module:function, "
                      f"got {arch!r}{hint}")


def build_model(config, weights: str | None = None) -> Any:
    """The model for `config` (a TrainConfig), with its pretrained encoder loaded and frozen when asked.

    `weights`: for pretrain imagenet or coco, the file to read them from (default: where the family looks)."""
    family = family_of(config.arch)
    model = importlib.import_module(family.module).build(config, weights)
    if config.freeze == "encoder":
        from trainables.models.transfer import freeze_encoder

        freeze_encoder(model)
    return model


def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


__all__ = ["ModelFamily", "families", "family_of", "known_archs", "build_model", "count_parameters"]
