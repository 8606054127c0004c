"""The training loop: plain functions, as in torchvision's references/segmentation.

`fit` runs one training from a `TrainConfig` and calls `on_epoch_end(record, snapshot)`
after each epoch, so the Ray adapter (and `study train`) can report and checkpoint
without this module knowing about either. A `Snapshot` hands out the full training state
and the weights with live tensors (no copy, for speed): serialise them within the callback.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainables import cuda_graphs, metrics
from trainables.checkpoint import get_rng_state, set_rng_state
from trainables.config import TrainConfig
from trainables.data import DataDeclaration, load_split, preset
from trainables.data.augment import Augmentation
from trainables.data.device import DeviceSplit
from trainables.data.stream import StreamedSplit, memory_budget, open_split
from trainables.errors import ConfigError
from trainables.losses import make_loss, pixel_counts, resolve_class_weights
from trainables.models import build_model
from trainables.models.transfer import export_encoder_state
from trainables.optim import base_lr, make_optimizer, make_scheduler, per_iteration
from trainables.records import EpochRecord, format_record
from trainables.sliding import default_stride, sliding_outputs
from trainables.step import autocast_context, outputs_of, predicted_classes, train_step

CHECKPOINT_VERSION = 2


@dataclass
class FitResult:
    records: list[dict] = field(default_factory=list)
    best_val_miou: float = float("nan")
    best_epoch: int = 0
    status: str = "finished"  # finished | diverged
    encoder_state: dict | None = None  # set when config.export_encoder is "last" or "best"
    class_weights: list[float] | None = None  # the loss's class weights (class_weights none: None)


@dataclass
class Snapshot:
    """What an epoch callback may keep. Tensors are live: serialise them within the callback."""

    epoch: int
    final: bool  # the run ends with this epoch (last epoch, or diverged)
    config: TrainConfig
    result: FitResult
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    best_weights: dict | None  # CPU copy of the weights of the best validated epoch (None: none yet)
    best_encoder: dict | None

    def weights(self) -> dict:
        """The model's weights now (the state dict of its parameters and buffers)."""
        return self.model.state_dict()

    def best_weights_if_other(self) -> dict | None:
        """The best validated epoch's weights when that is not this epoch (else None: `weights()` are they)."""
        return self.best_weights if self.result.best_epoch not in (0, self.epoch) else None

    def training_state(self) -> dict:
        """Everything `fit(resume_state=...)` needs to continue exactly; tensors and plain values only."""
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "rng": get_rng_state(),
            "best_val_miou": self.result.best_val_miou,
            "best_epoch": self.result.best_epoch,
            "best_weights": self.best_weights_if_other(),
            "best_encoder": self.best_encoder,
            "encoder_export": self.result.encoder_state,
            "records": self.result.records,
        }


EpochCallback = Callable[[dict, Snapshot], None]


class FaultInjected(RuntimeError):
    """Raised by the test-only `fault_epoch` hook."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available on this machine")
    return device




def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data: DeviceSplit | StreamedSplit,
    *,
    batch_size: int,
    num_classes: int,
    generator: torch.Generator,
    augment: Augmentation | None,
    autocast,
    step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    after_step: Callable[[], object] | None = None,
) -> dict:
    """One pass over the shuffled split; loss and confusion stay on the device until the end.

    `step(images, masks)` trains on one batch (default: train_step, eagerly); a CUDA-graph step replaces it.
    `after_step()` runs after each optimizer step: a per-iteration schedule's step.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=data.device)
    for images, masks in data.batches(batch_size, shuffle=True, generator=generator, augment=augment):
        if step is None:
            loss, pred = train_step(model, optimizer, criterion, images, masks, autocast)
        else:
            loss, pred = step(images, masks)
        if after_step is not None:
            after_step()
        loss_sum += loss.double() * images.shape[0]
        confusion += metrics.confusion_matrix(pred, masks, num_classes)
    return {"loss": float(loss_sum) / len(data), **metrics.summarize(confusion)}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, data: DeviceSplit | StreamedSplit, *, batch_size: int,
             num_classes: int, autocast, window: tuple[int, int] | None = None,
             stride: tuple[int, int] | None = None) -> dict:
    """Loss and metrics over the split at its cached resolution: whole images, or sliding windows of `window`
    (height, width) every `stride` (default two thirds of the window), logits averaged where they overlap."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=data.device)
    for images, masks in data.batches(batch_size):
        with autocast:
            if window is None:
                outputs = outputs_of(model(images), masks.shape[-2:])
            else:
                outputs = sliding_outputs(model, images, window, stride or default_stride(window))
            loss = criterion(outputs, masks)
        loss_sum += loss.double() * images.shape[0]
        confusion += metrics.confusion_matrix(predicted_classes(outputs["out"]), masks, num_classes)
    return {"loss": float(loss_sum) / len(data), **metrics.summarize(confusion)}


def is_validation_epoch(epoch: int, config: TrainConfig) -> bool:
    return epoch % config.val_interval == 0 or epoch == config.epochs


# The splits of the last run in this process, kept when `fit(..., reuse_data=True)`: a worker that Ray
# reuses for trial after trial on the same data loads and copies it to the device once.
_LAST_SPLITS: dict[tuple, DeviceSplit | StreamedSplit] = {}


def load_device_split(config: TrainConfig, split: str, device: torch.device, max_samples: int | None,
                      reuse: bool = False, data: DataDeclaration | None = None,
                      augmented: bool = False) -> DeviceSplit | StreamedSplit:
    """The role `split` (train or val) of `data` (None: the preset config.dataset) on the device, or streamed from
    its cache where it exceeds config.data_memory_mib.

    augmented: its batches are augmented pixel by pixel (from uint8), so a resident split needs no float copy."""
    data = data if data is not None else preset(config.dataset)
    key = (data, config.data_root, split, tuple(config.image_size), config.cache_dir, max_samples,
           str(device), config.channels_last, config.data_memory_mib, augmented)
    if reuse and key in _LAST_SPLITS:
        return _LAST_SPLITS[key]
    arrays = load_split(data, config.data_root, split, config.image_size, config.cache_dir,
                        max_samples=max_samples)
    data = open_split(arrays, device, config.channels_last, memory_budget(device, config.data_memory_mib),
                      normalised=not augmented)
    if reuse:
        if len(_LAST_SPLITS) >= 2:  # a train and a val split: what one run needs
            _LAST_SPLITS.clear()
        _LAST_SPLITS[key] = data
    return data


def class_pixel_counts(split: DeviceSplit | StreamedSplit, classes: int) -> list[int]:
    """Pixels of each class 0..classes-1 of a split, resident or streamed (read by rows, never mapped)."""
    if isinstance(split, StreamedSplit):
        return split.mask_counts()[:classes].tolist()
    return pixel_counts(split.masks, classes)


def fit(
    config: TrainConfig,
    data: DataDeclaration | None = None,
    *,
    on_epoch_end: EpochCallback | None = None,
    resume_state: dict | None = None,
    log: Callable[[str], None] | None = None,
    reuse_data: bool = False,
    weights: str | None = None,
) -> FitResult:
    """Train `config.epochs` epochs (or the rest of them after `resume_state`).

    `data`: the dataset's declaration (None: the preset named config.dataset), read at config.data_root.
    `weights`: for pretrain imagenet or coco, the file to read them from (default: where the model's family looks).
    `reuse_data`: keep this run's device splits for the next run in this process on the same data
    (they are read-only while training: batches are gathered copies).
    """
    data = data if data is not None else preset(config.dataset)
    if data.num_classes != config.classes:
        raise ConfigError(f"num_classes: {config.classes}, but the dataset declares {data.num_classes} classes")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    model = build_model(config, weights).to(device)  # first: missing weights fail before any data work
    augment = Augmentation.of(config)
    train_data = load_device_split(config, "train", device, config.max_train_samples, reuse_data, data,
                                   augmented=augment.transforms_pixels(tuple(config.image_size)))
    val_data = load_device_split(config, "val", device, config.max_val_samples, reuse_data, data)
    for role, split in (("train", train_data), ("val", val_data)):
        if log and isinstance(split, StreamedSplit):
            log(f"the {role} split ({len(split)} images) streams from its cache: over the data_memory_mib budget")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    class_weights = resolve_class_weights(config, lambda: class_pixel_counts(train_data, config.classes))
    optimizer = make_optimizer(config, model, device)
    scheduler = make_scheduler(config, optimizer, math.ceil(len(train_data) / config.batch_size))
    step_schedule = scheduler.step if per_iteration(config) else None
    criterion = make_loss(config, None if class_weights is None else
                          torch.tensor(class_weights, dtype=torch.float32, device=device))
    forward_model = torch.compile(model) if config.compile else model
    autocast = autocast_context(config, device)

    result = FitResult(class_weights=class_weights)
    best_encoder: dict | None = None
    best_weights: dict | None = None
    start_epoch = 1
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        generator.set_state(resume_state["generator"])
        set_rng_state(resume_state["rng"])
        result.best_val_miou = resume_state["best_val_miou"]
        result.best_epoch = resume_state["best_epoch"]
        best_encoder = resume_state.get("best_encoder")
        start_epoch = resume_state["epoch"] + 1
        result.records = list(resume_state.get("records", []))  # the whole history travels with each state
        # The best epoch's weights: kept beside the state when they are not the state's own.
        best_weights = resume_state.get("best_weights")
        if best_weights is None and result.best_epoch == resume_state["epoch"]:
            best_weights = _cpu_copy(model.state_dict())
    # After the resumed optimizer state: capture makes that optimizer capturable.
    step = cuda_graphs.graphed_train_step(config, device, forward_model, optimizer, criterion)

    for epoch in range(start_epoch, config.epochs + 1):
        if config.fault_epoch == epoch and not (config.fault_once and resume_state is not None):
            inject_fault(config, model, epoch)
        lr = base_lr(optimizer)  # the epoch's first iteration's
        started = time.perf_counter()
        train = train_one_epoch(
            forward_model, optimizer, criterion, train_data,
            batch_size=config.batch_size, num_classes=config.classes,
            generator=generator, augment=augment, autocast=autocast, step=step, after_step=step_schedule,
        )
        train_seconds = time.perf_counter() - started
        if step_schedule is None:
            scheduler.step()
        record = EpochRecord(
            epoch=epoch, lr=lr, train_loss=train["loss"], train_miou=train["miou"],
            train_miou_present=train["miou_present"], images_per_second=len(train_data) / train_seconds,
            diverged=not math.isfinite(train["loss"]),
        )
        if not record.diverged and is_validation_epoch(epoch, config):
            val = evaluate(forward_model, criterion, val_data, batch_size=config.batch_size,
                           num_classes=config.classes, autocast=autocast, window=config.val_crop,
                           stride=config.val_stride)
            record.validated = True
            record.val_loss, record.val_miou = val["loss"], val["miou"]
            record.val_miou_present, record.val_pixel_accuracy = val["miou_present"], val["pixel_accuracy"]
            record.val_iou = val["iou"]
            if not result.best_epoch or val["miou"] > result.best_val_miou:
                result.best_val_miou, result.best_epoch = val["miou"], epoch
                best_weights = _cpu_copy(model.state_dict())
                if config.export_encoder == "best":
                    best_encoder = export_encoder_state(model)
        record.epoch_seconds = time.perf_counter() - started
        record.best_val_miou, record.best_epoch = result.best_val_miou, result.best_epoch
        values = record.to_dict()
        result.records.append(values)
        final = epoch == config.epochs or record.diverged
        if final:
            # Exported before the last callback so that the final checkpoint carries it.
            if config.export_encoder == "last":
                result.encoder_state = export_encoder_state(model)
            elif config.export_encoder == "best":
                result.encoder_state = best_encoder
        if log:
            log(format_record(values))
        if on_epoch_end:
            on_epoch_end(values, Snapshot(epoch=epoch, final=final, config=config, result=result, model=model,
                                          optimizer=optimizer, scheduler=scheduler, generator=generator,
                                          best_weights=best_weights, best_encoder=best_encoder))
        if record.diverged:
            result.status = "diverged"
            break
    return result


def _cpu_copy(state: dict) -> dict:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def inject_fault(config: TrainConfig, model: nn.Module, epoch: int) -> None:
    """The test-only fault hook: what a crash, a killed worker or a divergence looks like."""
    if config.fault_kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if config.fault_kind == "nan":
        with torch.no_grad():
            next(model.parameters()).fill_(math.nan)
        return
    raise FaultInjected(f"fault injected at epoch {epoch} (fault_epoch setting)")


