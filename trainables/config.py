"""The settings of one training run: one flat, typed dataclass.

A Ray Tune trial config, a `study train` command line and a test all describe a
run with the same fields, so the training loop has exactly one input type.
Defaults are the seed report's protocol (FCN-ResNet50 section, Table 1): every setting added
since keeps that protocol at its default (no augmentation, cross-entropy, per-epoch schedules).

Every field carries its meaning in `metadata["doc"]`: study files, the trial record
(study/planning/record.py: one typed column per field) and the README's reference derive from here.
A field whose value is a pair (image_size) names its two record columns in `metadata["columns"]`.
`metadata["since"]` marks settings added after the first plans were written: a pretraining job's
key leaves them out while they hold their default, so old encoders stay reusable.

Which model settings mean something for which architecture (a SegFormer stem, an auxiliary
head, ImageNet weights) is declared by the model's family (trainables/models/), never here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from trainables.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("exponential", "step", "constant", "poly")
LOSSES = ("ce", "dice", "focal", "ce_dice")
FREEZE = ("none", "encoder")
SEGFORMER_STEMS = ("paper", "small_input")
IMAGENET_WEIGHTS = ("DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2")
ENCODER_EXPORT = ("none", "last", "best")
AMP = ("auto", "bf16", "off")
FAULT_KINDS = ("raise", "kill", "nan")
# Settings with a fixed set of values; every other str setting is free text (a path, a device, a name).
CHOICES = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "loss": LOSSES, "freeze": FREEZE,
           "segformer_stem": SEGFORMER_STEMS, "imagenet_weights": IMAGENET_WEIGHTS, "export_encoder": ENCODER_EXPORT,
           "amp": AMP, "fault_kind": FAULT_KINDS}
# Above these, a run cannot work on any machine we know of; refused with the value named.
MAX_IMAGE_SIDE = 4096
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536
MAX_CLASSES = 255  # class ids are stored as uint8 beside the ignore value 255
MAX_SEED = 2**32 - 1  # numpy's seed range
DEVICE = re.compile(r"(auto|cpu|cuda(:[0-9]{1,2})?)\Z")
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,119}\Z")
# Class counts of the presets (trainables/data/presets.py), for a run that names one without declaring it.
PRESET_CLASSES = {"pets": 3, "cityscapes": 19, "voc": 21, "ade20k": 150}


def setting(default: Any, doc: str, **metadata: Any) -> Any:
    """A TrainConfig field with its meaning (and, for a pair, the names of its two record columns)."""
    return dataclasses.field(default=default, metadata={"doc": doc, **metadata})


@dataclass(frozen=True)
class TrainConfig:
    # what is trained, on what
    arch: str = setting("segformer_b0", "model: an architecture of a model family (fcn_resnet50, deeplabv3_resnet50, "
                                        "lraspp_mobilenet_v3_large, segformer_b0 ... segformer_b5, ...) or a factory "
                                        "module:function")
    dataset: str = setting("pets", "a dataset declared in the study file's `datasets` (pets, cityscapes, voc and "
                                   "ade20k are presets)")
    data_root: str = setting("data/pets", "dataset folder (in a study: from `datasets`)")
    num_classes: int | None = setting(None, "classes the model predicts (in a study: from the dataset's "
                                            "declaration); null: the preset's count", since=2)
    cache_dir: str | None = setting(None, "preprocessed cache folder; null: <data_root>/.segstudy-cache")
    image_size: tuple[int, int] = setting((64, 64), "working resolution (height, width) in pixels: the cache's",
                                          columns=("image_height", "image_width"))
    max_train_samples: int | None = setting(None, "train on the first N samples of the split only; null: all")
    max_val_samples: int | None = setting(None, "validate on the first N samples only; null: all")
    data_memory_mib: int | None = setting(None, "MiB a split may take on the training device; a larger split "
                                                "streams from the cache; null: a quarter of the device's memory",
                                          since=2)

    # model
    pretrain: str = setting("none", "encoder weights: none, imagenet, coco, a pretraining source of the study or "
                                    "a weights file")
    imagenet_weights: str = setting("DEFAULT", "torchvision backbone weights for pretrain: imagenet "
                                               "(DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2)")
    freeze: str = setting("none", "none, or encoder: train the decoder only")
    segformer_stem: str = setting("paper", "SegFormer patch embeddings: paper (7x7/4) or small_input (5x5/2)")
    drop_path: float = setting(0.0, "SegFormer stochastic depth rate (linearly increasing over the blocks)")
    aux_loss_weight: float = setting(0.0, "weight of the auxiliary head's loss (torchvision FCN, DeepLabV3); "
                                          "0: no auxiliary head", since=2)
    model_kwargs: str = setting("{}", "keyword arguments of a module:function model factory, as a JSON object "
                                      "(a study file may give a mapping)", since=2)

    # optimisation (seed protocol)
    epochs: int = setting(30, "epochs to train")
    batch_size: int = setting(64, "images per optimizer step")
    lr: float = setting(1e-3, "initial learning rate (of the encoder; the head's is lr x head_lr_mult)")
    optimizer: str = setting("adamw", "adamw, adam or sgd")
    amsgrad: bool = setting(True, "AMSGrad variant of Adam/AdamW")
    weight_decay: float = setting(0.01, "weight decay (AdamW's own default; Adam's is 0)")
    momentum: float = setting(0.9, "SGD momentum", since=2)
    nesterov: bool = setting(False, "SGD with Nesterov momentum", since=2)
    head_lr_mult: float = setting(1.0, "learning-rate multiplier of the decoder (head) parameters", since=2)
    no_decay_norms: bool = setting(False, "no weight decay on normalisation layers and biases", since=2)
    scheduler: str = setting("exponential", "learning-rate schedule: exponential, step or constant (per epoch), "
                                            "poly (per iteration)")
    gamma: float = setting(0.98, "decay factor of the exponential (per epoch) or step schedule")
    step_size: int = setting(10, "epochs between decays of the step schedule")
    poly_power: float = setting(0.9, "poly: lr x (1 - iteration / iterations) ^ power, per iteration", since=2)
    warmup_iters: int = setting(0, "linear warm-up over the first N iterations (optimizer steps), before any "
                                   "schedule", since=2)
    warmup_factor: float = setting(1e-3, "lr multiplier at the first warm-up iteration, rising linearly to 1",
                                   since=2)
    loss: str = setting("ce", "ce (cross-entropy), dice, focal or ce_dice; every one ignores the ignore index",
                        since=2)
    dice_weight: float = setting(1.0, "ce_dice: loss = cross-entropy + dice_weight x Dice", since=2)
    focal_gamma: float = setting(2.0, "focal loss's focusing parameter gamma", since=2)
    class_weights: str = setting("none", "loss weight per class: none, auto (median frequency balancing over "
                                         "the training split's pixels) or 'w0,w1,...'", since=2)
    val_interval: int = setting(2, "validate every N epochs and at the last one")
    seed: int = setting(0, "seed of the weights' initialisation, the shuffling and the augmentation")

    # augmentation, on the training device, on whole batches
    hflip: bool = setting(False, "random horizontal flips of training images")
    scale_range: tuple[float, float] = setting((1.0, 1.0), "random resize: each training image scaled by a factor "
                                                           "drawn from [low, high] (1, 1: none)",
                                               columns=("scale_low", "scale_high"), since=2)
    crop_size: tuple[int, int] | None = setting(None, "random crop (height, width) of the scaled training image, "
                                                      "padded with the ignore index; null: the working resolution",
                                                columns=("crop_height", "crop_width"), since=2)
    cat_max_ratio: float = setting(1.0, "a random crop is drawn again (up to 10 times) while one class covers more "
                                        "than this share of it (1: never)", since=2)
    photometric: bool = setting(False, "random brightness, contrast, saturation and hue of training images",
                                since=2)
    val_crop: tuple[int, int] | None = setting(None, "validate with sliding windows of (height, width) over the "
                                                     "working resolution; null: whole images",
                                               columns=("val_crop_height", "val_crop_width"), since=2)
    val_stride: tuple[int, int] | None = setting(None, "the sliding windows' stride; null: two thirds of val_crop",
                                                 columns=("val_stride_height", "val_stride_width"), since=2)

    # execution
    device: str = setting("auto", "auto (cuda when available), cpu, cuda or cuda:N")
    amp: str = setting("auto", "autocast: auto (bf16 on CUDA), bf16 or off")
    # Measured on CPU (make bench-step): channels_last is the layout bf16 convolutions run fastest in on CUDA.
    channels_last: bool = setting(True, "channels-last images and weights")
    compile: bool = setting(False, "torch.compile the model")
    # trainables/cuda_graphs.py. Off until measured on a GPU; on CPU a warning, then eager.
    cuda_graphs: bool = setting(False, "replay the train step (forward, loss, backward, optimizer step) as one "
                                       "CUDA graph")
    fused_optimizer: bool | None = setting(None, "fused Adam/AdamW/SGD kernel; null: on CUDA")
    num_threads: int | None = setting(None, "torch intra-op threads; null: the CPUs Ray assigned the trial")
    export_encoder: str = setting("none", "none, last or best: keep the encoder of that epoch (pretraining jobs)")

    # Test-only fault injection at the start of epoch `fault_epoch` (0 = never): raise = an exception;
    # kill = SIGKILL of the trial's own process; nan = NaN weights, so that the loss diverges for real.
    # With fault_once the fault fires only in an attempt that started from scratch.
    fault_epoch: int = setting(0, "test only: inject a fault at the start of this epoch (0: never)")
    fault_kind: str = setting("raise", "test only: raise, kill or nan")
    fault_once: bool = setting(False, "test only: no fault in an attempt resumed from a checkpoint")

    def __post_init__(self) -> None:
        for name in PAIRS:
            object.__setattr__(self, name, _pair(name, getattr(self, name), FIELDS[name]))
        for name, allowed in CHOICES.items():
            _choice(name, getattr(self, name), allowed)
        size = self.image_size
        if min(size) < 16 or max(size) > MAX_IMAGE_SIDE:
            raise ConfigError(f"image_size: expected (height, width) of 16 to {MAX_IMAGE_SIDE} pixels each, "
                              f"got {self.image_size!r}")
        for name in ("crop_size", "val_crop", "val_stride"):
            pair = getattr(self, name)
            if pair is not None and (min(pair) < 1 or max(pair) > MAX_IMAGE_SIDE):
                raise ConfigError(f"{name}: expected null or (height, width) of 1 to {MAX_IMAGE_SIDE} pixels each, "
                                  f"got {list(pair)!r}")
        if self.val_stride is not None and self.val_crop is None:
            raise ConfigError("val_stride: sliding windows need val_crop (their size)")
        if self.val_stride is not None and (self.val_stride[0] > self.val_crop[0]
                                            or self.val_stride[1] > self.val_crop[1]):
            raise ConfigError(f"val_stride: a stride of {list(self.val_stride)} over windows of {list(self.val_crop)} "
                              f"leaves pixels that no window covers; expected at most val_crop")
        if self.val_crop is not None and (self.val_crop[0] > size[0] or self.val_crop[1] > size[1]):
            raise ConfigError(f"val_crop: windows of {list(self.val_crop)} do not fit the working resolution "
                              f"{list(size)}")
        low, high = self.scale_range
        if not (0 < low <= high <= 16 and math.isfinite(high)):
            raise ConfigError(f"scale_range: expected [low, high] with 0 < low <= high <= 16, got {[low, high]!r}")
        for name, low_, high_ in (("epochs", 1, MAX_EPOCHS), ("batch_size", 1, MAX_BATCH_SIZE),
                                  ("val_interval", 1, None), ("step_size", 1, None), ("seed", 0, MAX_SEED),
                                  ("fault_epoch", 0, None), ("warmup_iters", 0, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low_ or (high_ and value > high_):
                bounds = f"from {low_} to {high_}" if high_ else f">= {low_}"
                raise ConfigError(f"{name}: expected an integer {bounds}, got {value!r}")
        for name in ("max_train_samples", "max_val_samples", "num_threads", "data_memory_mib"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}: expected null or an integer >= 1, got {value!r}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or not 1 <= self.num_classes <= MAX_CLASSES):
            raise ConfigError(f"num_classes: expected null or an integer from 1 to {MAX_CLASSES}, "
                              f"got {self.num_classes!r}")
        if not isinstance(self.dataset, str) or not DATASET_NAME.match(self.dataset):
            raise ConfigError(f"dataset: expected a dataset's name (letters, digits and _ . + = -), "
                              f"got {self.dataset!r}")
        _positive("lr", self.lr)
        _positive("head_lr_mult", self.head_lr_mult)
        _positive("focal_gamma", self.focal_gamma, zero=True)
        _positive("dice_weight", self.dice_weight, zero=True)
        _positive("weight_decay", self.weight_decay, zero=True)
        _positive("aux_loss_weight", self.aux_loss_weight, zero=True)
        _positive("poly_power", self.poly_power)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum: expected a number in [0, 1), got {self.momentum!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov: Nesterov momentum needs optimizer sgd and a momentum > 0")
        if not 0 < self.warmup_factor <= 1:
            raise ConfigError(f"warmup_factor: expected a number in (0, 1], got {self.warmup_factor!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma: expected a number in (0, 1], got {self.gamma!r}")
        if not 0 <= self.drop_path < 1:
            raise ConfigError(f"drop_path: expected a number in [0, 1), got {self.drop_path!r}")
        if not 0 < self.cat_max_ratio <= 1:
            raise ConfigError(f"cat_max_ratio: expected a number in (0, 1], got {self.cat_max_ratio!r}")
        if not DEVICE.match(str(self.device)):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.cuda_graphs and self.compile:
            raise ConfigError("cuda_graphs: not with compile (torch.compile makes its own CUDA graphs in mode "
                              "'reduce-overhead'); turn one of them off")
        if self.cuda_graphs and self.optimizer == "sgd" and self.fused_optimizer is False:
            raise ConfigError("cuda_graphs: SGD replays in a CUDA graph only with its fused kernel (the other reads "
                              "the lr on the host); set fused_optimizer to null or true")
        if self.freeze == "encoder" and self.pretrain == "none":
            raise ConfigError("freeze: 'encoder' needs a pretrained encoder (pretrain is 'none')")
        weights = class_weight_values(self.class_weights)
        if weights is not None and self.num_classes is not None and len(weights) != self.num_classes:
            raise ConfigError(f"class_weights: {len(weights)} weights given for {self.num_classes} classes")
        model_options(self.model_kwargs)
        from trainables.models import family_of  # light: the families' declarations, no torch

        problem = family_of(self.arch).problem(self)
        if problem:
            raise ConfigError(problem)

    @property
    def classes(self) -> int:
        """The number of classes: num_classes, else the preset's count."""
        if self.num_classes is not None:
            return self.num_classes
        if self.dataset in PRESET_CLASSES:
            return PRESET_CLASSES[self.dataset]
        raise ConfigError(f"num_classes: needed for the dataset {self.dataset!r} (not a preset: "
                          f"{', '.join(PRESET_CLASSES)}); a study sets it from the dataset's classes")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in PAIRS:
            d[name] = list(d[name]) if d[name] is not None else None
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping, rejecting unknown keys by name."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; known: {sorted(FIELDS)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}
# Settings whose value is a pair: one record column each (metadata "columns").
PAIRS = tuple(name for name, field in FIELDS.items() if field.metadata.get("columns"))
# Settings added after the first plans: a pretraining job's key leaves them out at their default.
LATER = {name: field.default for name, field in FIELDS.items() if field.metadata.get("since")}


def pair_type(name: str) -> type:
    """int or float: what each of a pair setting's two values is."""
    return float if "float" in str(FIELDS[name].type) else int


def _pair(name: str, value: Any, field: dataclasses.Field) -> tuple | None:
    optional = "None" in str(field.type)
    if value is None and optional:
        return None
    kind = pair_type(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    try:
        if isinstance(value, (str, bytes)) or len(value) != 2 or any(isinstance(v, bool) for v in value):
            raise ValueError
        pair = tuple(kind(v) for v in value)
        if kind is int and any(float(v) != int(v) for v in value):
            raise ValueError
    except (TypeError, ValueError):
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{name}: expected {'null or ' if optional else ''}(height, width) as two {what}, "
                          f"got {value!r}") from None
    return pair


def _positive(name: str, value: Any, zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        (value >= 0 if zero else value > 0)
    if not ok:
        raise ConfigError(f"{name}: expected a number {'>=' if zero else '>'} 0, got {value!r}")


def class_weight_values(text: Any) -> tuple[float, ...] | None:
    """class_weights as numbers: None for none and auto (computed from the data); a ConfigError if unreadable."""
    if text in ("none", "auto"):
        return None
    try:
        values = tuple(float(part) for part in str(text).split(","))
        if not values or not all(math.isfinite(v) and v >= 0 for v in values) or not any(values) \
                or not isinstance(text, str):
            raise ValueError
    except ValueError:
        raise ConfigError(f"class_weights: expected none, auto or a list of weights >= 0 ('w0,w1,...'), "
                          f"got {text!r}") from None
    return values


def model_options(text: Any) -> dict:
    """model_kwargs as a dict (a JSON object of keyword arguments)."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"model_kwargs: expected a JSON object of keyword arguments, got {text!r:.120}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {list(allowed)}, got {value!r}")


__all__ = ["TrainConfig", "CHOICES", "FIELDS", "PAIRS", "LATER", "PRESET_CLASSES"]
