"""The settings of one training run: one flat, typed dataclass.

A Ray Tune trial config, a `study train` command line and a test all describe a
run with the same fields, so the training loop has exactly one input type.
Defaults are the seed report's protocol (FCN-ResNet50 section, Table 1).

Every field carries its meaning in `metadata["doc"]`: study files, the trial record
(study/planning/record.py: one typed column per field) and the README's reference derive from here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from trainables.errors import ConfigError

ARCHS = ("fcn_resnet50", "segformer_b0")
DATASETS = ("pets", "cityscapes")
OPTIMIZERS = ("adamw", "adam")
SCHEDULERS = ("exponential", "step", "constant")
FREEZE = ("none", "encoder")
SEGFORMER_STEMS = ("paper", "small_input")
IMAGENET_WEIGHTS = ("DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2")
ENCODER_EXPORT = ("none", "last", "best")
AMP = ("auto", "bf16", "off")
FAULT_KINDS = ("raise", "kill", "nan")
# Settings with a fixed set of values; every other str setting is free text (a path, a device).
CHOICES = {"arch": ARCHS, "dataset": DATASETS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "freeze": FREEZE,
           "segformer_stem": SEGFORMER_STEMS, "imagenet_weights": IMAGENET_WEIGHTS, "export_encoder": ENCODER_EXPORT,
           "amp": AMP, "fault_kind": FAULT_KINDS}
# Above these, a run cannot work on any machine we know of; refused with the value named.
MAX_IMAGE_SIDE = 4096
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536
MAX_SEED = 2**32 - 1  # numpy's seed range
DEVICE = re.compile(r"(auto|cpu|cuda(:[0-9]{1,2})?)\Z")


def setting(default: Any, doc: str, **metadata: Any) -> Any:
    """A TrainConfig field with its meaning (and, for a pair, the names of its two record columns)."""
    return dataclasses.field(default=default, metadata={"doc": doc, **metadata})


@dataclass(frozen=True)
class TrainConfig:
    # what is trained, on what
    arch: str = setting("segformer_b0", "model: fcn_resnet50 or segformer_b0")
    dataset: str = setting("pets", "pets (3 classes) or cityscapes (19 train ids)")
    data_root: str = setting("data/pets", "dataset folder (in a study: from `datasets`)")
    cache_dir: str | None = setting(None, "preprocessed cache folder; null: <data_root>/.segstudy-cache")
    image_size: tuple[int, int] = setting((64, 64), "working resolution (height, width) in pixels",
                                          columns=("image_height", "image_width"))
    max_train_samples: int | None = setting(None, "train on the first N samples of the split only; null: all")
    max_val_samples: int | None = setting(None, "validate on the first N samples only; null: all")

    # model
    pretrain: str = setting("none", "encoder weights: none, imagenet, a pretraining source of the study or a file")
    imagenet_weights: str = setting("DEFAULT", "torchvision ResNet-50 weights for pretrain: imagenet")
    freeze: str = setting("none", "none, or encoder: train the decoder only")
    segformer_stem: str = setting("paper", "SegFormer patch embeddings: paper (7x7/4) or small_input (5x5/2)")
    drop_path: float = setting(0.0, "SegFormer stochastic depth rate (linearly increasing over the blocks)")

    # optimisation (seed protocol)
    epochs: int = setting(30, "epochs to train")
    batch_size: int = setting(64, "images per optimizer step")
    lr: float = setting(1e-3, "initial learning rate")
    optimizer: str = setting("adamw", "adamw or adam")
    amsgrad: bool = setting(True, "AMSGrad variant of Adam/AdamW")
    weight_decay: float = setting(0.01, "weight decay (AdamW's own default; Adam's is 0)")
    scheduler: str = setting("exponential", "learning-rate schedule per epoch: exponential, step or constant")
    gamma: float = setting(0.98, "decay factor of the exponential or step schedule")
    step_size: int = setting(10, "epochs between decays of the step schedule")
    val_interval: int = setting(2, "validate every N epochs and at the last one")
    hflip: bool = setting(False, "random horizontal flips of training images")
    seed: int = setting(0, "seed of the weights' initialisation, the shuffling and the flips")

    # execution
    device: str = setting("auto", "auto (cuda when available), cpu, cuda or cuda:N")
    amp: str = setting("auto", "autocast: auto (bf16 on CUDA), bf16 or off")
    # Measured on CPU (make bench-step): channels_last is the layout bf16 convolutions run fastest in on CUDA.
    channels_last: bool = setting(True, "channels-last images and weights")
    compile: bool = setting(False, "torch.compile the model")
    # trainables/cuda_graphs.py. Off until measured on a GPU; on CPU a warning, then eager.
    cuda_graphs: bool = setting(False, "replay the train step (forward, loss, backward, optimizer step) as one "
                                       "CUDA graph")
    fused_optimizer: bool | None = setting(None, "fused Adam/AdamW kernel; null: on CUDA")
    num_threads: int | None = setting(None, "torch intra-op threads; null: the CPUs Ray assigned the trial")
    export_encoder: str = setting("none", "none, last or best: keep the encoder of that epoch (pretraining jobs)")

    # Test-only fault injection at the start of epoch `fault_epoch` (0 = never): raise = an exception;
    # kill = SIGKILL of the trial's own process; nan = NaN weights, so that the loss diverges for real.
    # With fault_once the fault fires only in an attempt that started from scratch.
    fault_epoch: int = setting(0, "test only: inject a fault at the start of this epoch (0: never)")
    fault_kind: str = setting("raise", "test only: raise, kill or nan")
    fault_once: bool = setting(False, "test only: no fault in an attempt resumed from a checkpoint")

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        try:
            size = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            raise ConfigError(f"image_size: expected (height, width) in pixels, got {self.image_size!r}") from None
        object.__setattr__(self, "image_size", size)
        for name, allowed in CHOICES.items():
            _choice(name, getattr(self, name), allowed)
        if len(size) != 2 or min(size) < 16 or max(size) > MAX_IMAGE_SIDE:
            raise ConfigError(f"image_size: expected (height, width) of 16 to {MAX_IMAGE_SIDE} pixels each, "
                              f"got {self.image_size!r}")
        for name, low, high in (("epochs", 1, MAX_EPOCHS), ("batch_size", 1, MAX_BATCH_SIZE), ("val_interval", 1, None),
                                ("step_size", 1, None), ("seed", 0, MAX_SEED), ("fault_epoch", 0, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                bounds = f"from {low} to {high}" if high else f">= {low}"
                raise ConfigError(f"{name}: expected an integer {bounds}, got {value!r}")
        for name in ("max_train_samples", "max_val_samples", "num_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}: expected null or an integer >= 1, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr: expected a number > 0, got {self.lr!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma: expected a number in (0, 1], got {self.gamma!r}")
        if not 0 <= self.drop_path < 1:
            raise ConfigError(f"drop_path: expected a number in [0, 1), got {self.drop_path!r}")
        if not DEVICE.match(str(self.device)):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.pretrain == "imagenet" and self.arch != "fcn_resnet50":
            raise ConfigError(f"pretrain: 'imagenet' weights exist only for fcn_resnet50, not for {self.arch}")
        if self.cuda_graphs and self.compile:
            raise ConfigError("cuda_graphs: not with compile (torch.compile makes its own CUDA graphs in mode "
                              "'reduce-overhead'); turn one of them off")
        if self.freeze == "encoder" and self.pretrain == "none":
            raise ConfigError("freeze: 'encoder' needs a pretrained encoder (pretrain is 'none')")

    @property
    def num_classes(self) -> int:
        return 3 if self.dataset == "pets" else 19

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
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


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {list(allowed)}, got {value!r}")


__all__ = ["TrainConfig", "ARCHS", "DATASETS", "CHOICES", "FIELDS"]
