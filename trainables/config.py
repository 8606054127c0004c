"""The settings of one training run: one flat, typed dataclass.

A Ray Tune trial config, a `study train` command line and a test all describe a
run with the same fields, so the training loop has exactly one input type.
Defaults are the seed report's protocol (FCN-ResNet50 section, Table 1).
"""

from __future__ import annotations

import dataclasses
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
FAULT_KINDS = ("raise", "kill", "nan")


@dataclass(frozen=True)
class TrainConfig:
    # what is trained, on what
    arch: str = "segformer_b0"
    dataset: str = "pets"
    data_root: str = "data/pets"
    cache_dir: str | None = None  # default: <data_root>/.segstudy-cache
    image_size: tuple[int, int] = (64, 64)  # (height, width)
    max_train_samples: int | None = None  # first N of the split, for quick runs
    max_val_samples: int | None = None

    # model
    pretrain: str = "none"  # none | imagenet | path to an encoder state dict
    imagenet_weights: str = "DEFAULT"  # torchvision ResNet-50 weights enum name
    freeze: str = "none"  # none | encoder
    segformer_stem: str = "paper"  # paper | small_input
    drop_path: float = 0.0

    # optimisation (seed protocol)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"
    amsgrad: bool = True
    weight_decay: float = 0.01  # AdamW's own default; Adam's is 0
    scheduler: str = "exponential"
    gamma: float = 0.98
    step_size: int = 10
    val_interval: int = 2  # validate at epochs 2, 4, ... and at the last one
    hflip: bool = False
    seed: int = 0

    # execution
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    # Measured on CPU (make bench-step): SegFormer-B0 trains 22% faster with channels_last,
    # FCN-ResNet50 as fast; on CUDA it is the layout bf16 convolutions run fastest in.
    channels_last: bool = True
    compile: bool = False
    # Replay the train step (forward, loss, backward, optimizer step) as one CUDA graph:
    # trainables/cuda_graphs.py. Off until measured on a GPU; on CPU a warning, then eager.
    cuda_graphs: bool = False
    fused_optimizer: bool | None = None  # one kernel per optimizer step; None: on CUDA, where torch has it
    num_threads: int | None = None  # torch intra-op threads; None leaves torch's default
    export_encoder: str = "none"  # none | last | best: write encoder.pt at the end

    # Test-only fault injection at the start of epoch `fault_epoch` (0 = never):
    # raise = an exception; kill = SIGKILL of the trial's own process; nan = NaN weights,
    # so that the loss diverges for real. With fault_once the fault fires only in an
    # attempt that started from scratch, not in one resumed from a checkpoint.
    fault_epoch: int = 0
    fault_kind: str = "raise"
    fault_once: bool = False

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        size = tuple(int(s) for s in size)
        object.__setattr__(self, "image_size", size)
        _choice("arch", self.arch, ARCHS)
        _choice("dataset", self.dataset, DATASETS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("freeze", self.freeze, FREEZE)
        _choice("segformer_stem", self.segformer_stem, SEGFORMER_STEMS)
        _choice("imagenet_weights", self.imagenet_weights, IMAGENET_WEIGHTS)
        _choice("export_encoder", self.export_encoder, ENCODER_EXPORT)
        _choice("amp", self.amp, ("auto", "bf16", "off"))
        _choice("fault_kind", self.fault_kind, FAULT_KINDS)
        if len(size) != 2 or min(size) < 16:
            raise ConfigError(f"image_size: expected (height, width) of at least 16 pixels each, got {self.image_size!r}")
        for name in ("epochs", "batch_size", "val_interval", "step_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr: expected a number > 0, got {self.lr!r}")
        if self.weight_decay < 0 or not 0 < self.gamma <= 1:
            raise ConfigError(f"weight_decay must be >= 0 and gamma in (0, 1], got {self.weight_decay!r}, {self.gamma!r}")
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {list(allowed)}, got {value!r}")


__all__ = ["ARCHS", "DATASETS", "TrainConfig"]
