"""Your own model: `arch: "my_pkg.nets:build"`, a function importable on every node of the cluster.

It is called as `build(num_classes=K, **model_kwargs)` and returns an `nn.Module` whose forward takes
normalised images [N, 3, H, W] and gives logits [N, K, h, w] (resized to the masks' size when h, w
differ), or torchvision's {"out": logits, "aux": logits}. A submodule named `encoder` enables freezing,
pretraining, encoder files and the head learning-rate multiplier; without it, asking for them is an
error that says so. `check(config)` imports and calls the factory once on the driver, so an import
error or an output of the wrong shape is named before Ray starts.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys

from trainables.errors import ConfigError
from trainables.models import ModelFamily

FORM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*\Z")


def _rules(arch: str, settings: dict) -> str | None:
    if not FORM.match(arch):
        return f"arch: a model factory is written module:function (e.g. my_pkg.nets:build), got {arch!r}"
    return None


FAMILY = ModelFamily(
    name="factory",
    archs=(),  # every module:function
    module=__name__,
    options=("model_kwargs",),
    encoder_options=("model_kwargs",),
    rules=_rules,
)


def factory(arch: str):
    """The user's function `arch` names; a ConfigError naming what cannot be imported.

    An arch is read back from study folders (by report, predict, export-model), which may come from anyone:
    so it must name a Python function outside the standard library that takes a `num_classes` parameter, a
    model factory's signature. `os:system` or `subprocess:run` never run, whatever a study folder says."""
    module_name, _, function_name = arch.partition(":")
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise ConfigError(f"arch: {arch!r} names a module of Python's standard library, not a model factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a user's module can fail to import in any way
        raise ConfigError(f"arch: cannot import the module {module_name!r} of the model factory {arch!r} "
                          f"({type(error).__name__}: {str(error).strip()[:200]}); it must be importable on every "
                          f"node (installed, or on PYTHONPATH)") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"arch: the module {module_name!r} has no function {function_name!r}")
    if not inspect.isfunction(function) or "num_classes" not in inspect.signature(function).parameters:
        raise ConfigError(f"arch: {arch!r} is not a model factory: expected a Python function with a num_classes "
                          f"parameter, build(num_classes=K, **model_kwargs)")
    return function


def source(arch: str) -> tuple[str, str]:
    """(the factory's source file, its sha256): what the plan records, so a changed model is named."""
    path = inspect.getsourcefile(factory(arch)) or ""
    try:
        with open(path, "rb") as file:
            return path, hashlib.sha256(file.read()).hexdigest()
    except OSError:
        return path, ""


def build(config, weights: str | None = None):
    """The user's model wrapped as FactoryModel; its encoder from `pretrain` when that is a file (a factory has no
    built-in weights, so `weights` is never given)."""
    from torch import nn

    from trainables.config import model_options
    from trainables.models.factory_model import FactoryModel
    from trainables.models.transfer import load_encoder_file, load_encoder_state

    try:
        net = factory(config.arch)(num_classes=config.classes, **model_options(config.model_kwargs))
    except ConfigError:
        raise
    except Exception as error:  # the user's code
        raise ConfigError(f"arch: the model factory {config.arch} failed: {type(error).__name__}: "
                          f"{str(error).strip()[:200]}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"arch: the model factory {config.arch} returned {type(net).__name__}, not a torch "
                          f"nn.Module")
    model = FactoryModel(net, config.arch)
    if config.pretrain not in ("none", "imagenet", "coco"):
        load_encoder_state(model, load_encoder_file(config.pretrain), config.pretrain)
        model.weights_read = f"read the encoder of {config.arch} from {config.pretrain}"
    return model


def check(config) -> None:
    """Build the model on the CPU (without its pretrained weights, which the trial reads) and run one tiny batch:
    a ConfigError names what is wrong, before any trial starts."""
    import torch

    model = build(config.replace(pretrain="none", freeze="none")).eval()  # the weights come later, in the trial
    height, width = config.crop_size or config.image_size
    try:
        with torch.no_grad():
            output = model.net(torch.zeros(1, 3, height, width))
    except Exception as error:  # the user's forward
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"arch: the model of {config.arch} fails on one image of {height}x{width}: "
                          f"{type(error).__name__}: {reason}") from None
    logits = output.get("out") if isinstance(output, dict) else output
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[:2] != (1, config.classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(output).__name__
        raise ConfigError(f"arch: the model factory {config.arch} gives {got} for one image of {height}x{width}; "
                          f"expected logits [1, {config.classes}, h, w] (or a dict with them under 'out')")
    asked = {"freeze": config.freeze == "encoder", "head_lr_mult": config.head_lr_mult != 1,
             "pretrain": config.pretrain != "none", "export_encoder": config.export_encoder != "none"}
    for setting, needs in asked.items():
        if needs and model.encoder is None:
            raise ConfigError(f"{setting}: the model of {config.arch} has no `encoder` submodule, so it cannot be "
                              f"frozen, pretrained, exported or given a head learning rate; give it one "
                              f"(model.encoder = ...)")
