"""The training loop: plain functions, as in torchvision's references/segmentation.

`fit` runs one training from a `TrainConfig` and calls `on_epoch_end(record, training_state)`
after each epoch, so the Ray adapter (and `study train`) can report and checkpoint
without this module knowing about either. `training_state()` returns the full
state with live tensors (no copy, for speed): serialise it within the callback.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables import cuda_graphs, metrics
from trainables.config import TrainConfig
from trainables.data import SPLITS, load_split
from trainables.data.device import DeviceSplit
from trainables.errors import ConfigError
from trainables.models import build_model
from trainables.models.transfer import export_encoder_state, trainable_parameters

CHECKPOINT_VERSION = 1

EpochCallback = Callable[[dict, Callable[[], dict]], None]


@dataclass
class FitResult:
    records: list[dict] = field(default_factory=list)
    best_val_miou: float = float("nan")
    best_epoch: int = 0
    status: str = "finished"  # finished | diverged
    encoder_state: dict | None = None  # set when config.export_encoder is "last" or "best"


class FaultInjected(RuntimeError):
    """Raised by the test-only `fault_epoch` hook."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available on this machine")
    return device


def autocast_context(config: TrainConfig, device: torch.device, cache_enabled: bool = True):
    """bf16 autocast as `amp` asks, or a null context. A CUDA graph capture needs cache_enabled=False."""
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled) if use_bf16 else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(config: TrainConfig, params: list[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    fused = device.type == "cuda" if config.fused_optimizer is None else config.fused_optimizer
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, amsgrad=config.amsgrad, weight_decay=config.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=config.lr, amsgrad=config.amsgrad, weight_decay=config.weight_decay, fused=fused)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if config.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module, images: torch.Tensor,
               masks: torch.Tensor, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on one batch: (the batch's mean loss, its predicted classes), both detached.

    trainables/cuda_graphs.py captures this same function when `cuda_graphs` is on.
    """
    with autocast:
        logits = model(images)
        loss = criterion(logits.float(), masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach().argmax(1)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data: DeviceSplit,
    *,
    batch_size: int,
    num_classes: int,
    generator: torch.Generator,
    hflip: bool,
    autocast,
    step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """One pass over the shuffled split; loss and confusion stay on the device until the end.

    `step(images, masks)` trains on one batch (default: train_step, eagerly); a CUDA-graph step replaces it.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=data.device)
    for images, masks in data.batches(batch_size, shuffle=True, generator=generator, hflip=hflip):
        if step is None:
            loss, pred = train_step(model, optimizer, criterion, images, masks, autocast)
        else:
            loss, pred = step(images, masks)
        loss_sum += loss.double() * images.shape[0]
        confusion += metrics.confusion_matrix(pred, masks, num_classes)
    return {"loss": float(loss_sum) / len(data), **metrics.summarize(confusion)}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, data: DeviceSplit, *, batch_size: int, num_classes: int, autocast) -> dict:
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=data.device)
    for images, masks in data.batches(batch_size):
        with autocast:
            logits = model(images)
            loss = criterion(logits.float(), masks)
        loss_sum += loss.double() * images.shape[0]
        confusion += metrics.confusion_matrix(logits.argmax(1), masks, num_classes)
    return {"loss": float(loss_sum) / len(data), **metrics.summarize(confusion)}


def is_validation_epoch(epoch: int, config: TrainConfig) -> bool:
    return epoch % config.val_interval == 0 or epoch == config.epochs


def load_device_split(config: TrainConfig, split: str, device: torch.device, max_samples: int | None) -> DeviceSplit:
    arrays = load_split(config.dataset, config.data_root, split, config.image_size, config.cache_dir, max_samples=max_samples)
    return DeviceSplit(arrays.images, arrays.masks, device, channels_last=config.channels_last)


def fit(
    config: TrainConfig,
    *,
    on_epoch_end: EpochCallback | None = None,
    resume_state: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train `config.epochs` epochs (or the rest of them after `resume_state`)."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    model = build_model(config).to(device)  # first: missing weights fail before any data work
    train_split, val_split = SPLITS[config.dataset]
    train_data = load_device_split(config, train_split, device, config.max_train_samples)
    val_data = load_device_split(config, val_split, device, config.max_val_samples)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, trainable_parameters(model), device)
    scheduler = make_scheduler(config, optimizer)
    criterion = nn.CrossEntropyLoss(ignore_index=metrics.IGNORE_INDEX)
    forward_model = torch.compile(model) if config.compile else model
    autocast = autocast_context(config, device)

    result = FitResult()
    best_encoder: dict | None = None
    start_epoch = 1
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        generator.set_state(resume_state["generator"])
        _set_rng_state(resume_state["rng"])
        result.best_val_miou = resume_state["best_val_miou"]
        result.best_epoch = resume_state["best_epoch"]
        best_encoder = resume_state.get("best_encoder")
        start_epoch = resume_state["epoch"] + 1
    # After the resumed optimizer state: capture makes that optimizer capturable.
    step = cuda_graphs.graphed_train_step(config, device, forward_model, optimizer, criterion)

    def state_at(epoch: int) -> Callable[[], dict]:
        def build() -> dict:
            return {
                "version": CHECKPOINT_VERSION,
                "config": config.to_dict(),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "rng": _get_rng_state(),
                "best_val_miou": result.best_val_miou,
                "best_epoch": result.best_epoch,
                "best_encoder": best_encoder,
                "encoder_export": result.encoder_state,
            }

        return build

    for epoch in range(start_epoch, config.epochs + 1):
        if config.fault_epoch == epoch and not (config.fault_once and resume_state is not None):
            inject_fault(config, model, epoch)
        lr = float(optimizer.param_groups[0]["lr"])  # a device tensor when the step is a CUDA graph
        started = time.perf_counter()
        train = train_one_epoch(
            forward_model, optimizer, criterion, train_data,
            batch_size=config.batch_size, num_classes=config.num_classes,
            generator=generator, hflip=config.hflip, autocast=autocast, step=step,
        )
        train_seconds = time.perf_counter() - started
        scheduler.step()
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train["loss"],
            "train_miou": train["miou"],
            "train_miou_present": train["miou_present"],
            "images_per_second": len(train_data) / train_seconds,
            "validated": False,
            "diverged": not math.isfinite(train["loss"]),
        }
        if not record["diverged"] and is_validation_epoch(epoch, config):
            val = evaluate(forward_model, criterion, val_data, batch_size=config.batch_size,
                           num_classes=config.num_classes, autocast=autocast)
            record.update(
                validated=True,
                val_loss=val["loss"],
                val_miou=val["miou"],
                val_miou_present=val["miou_present"],
                val_pixel_accuracy=val["pixel_accuracy"],
                **{f"val_iou_{i}": v for i, v in enumerate(val["iou"])},
            )
            if not result.best_epoch or val["miou"] > result.best_val_miou:
                result.best_val_miou, result.best_epoch = val["miou"], epoch
                if config.export_encoder == "best":
                    best_encoder = export_encoder_state(model)
        record["epoch_seconds"] = time.perf_counter() - started
        record["best_val_miou"] = result.best_val_miou
        record["best_epoch"] = result.best_epoch
        result.records.append(record)
        if epoch == config.epochs or record["diverged"]:
            # Exported before the last callback so that the final checkpoint carries it.
            if config.export_encoder == "last":
                result.encoder_state = export_encoder_state(model)
            elif config.export_encoder == "best":
                result.encoder_state = best_encoder
        if log:
            log(format_record(record))
        if on_epoch_end:
            on_epoch_end(record, state_at(epoch))
        if record["diverged"]:
            result.status = "diverged"
            break
    return result


def inject_fault(config: TrainConfig, model: nn.Module, epoch: int) -> None:
    """The test-only fault hook: what a crash, a killed worker or a divergence looks like."""
    if config.fault_kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if config.fault_kind == "nan":
        with torch.no_grad():
            next(model.parameters()).fill_(math.nan)
        return
    raise FaultInjected(f"fault injected at epoch {epoch} (fault_epoch setting)")


def format_record(record: dict) -> str:
    text = f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} mIoU {record['train_miou']:.4f}"
    if record["validated"]:
        text += f"  val loss {record['val_loss']:.4f} mIoU {record['val_miou']:.4f}"
    if record["diverged"]:
        text += "  DIVERGED (non-finite loss)"
    return text + f"  lr {record['lr']:.2e}  {record['images_per_second']:.0f} img/s"


def _get_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
