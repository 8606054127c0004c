"""The optimizer and the learning-rate schedule of a run.

Parameter groups: the encoder's parameters train at `lr`, the head's (everything outside `model.encoder`:
decoder, auxiliary head) at lr x head_lr_mult; with no_decay_norms, normalisation layers' parameters and
every bias get no weight decay. Frozen parameters are left out. Groups with the same learning rate and
weight decay are one group, so the defaults make the single group the seed protocol always had. A model
whose `encoder` is None (a user's model without one) trains all of its parameters at `lr`.

Schedules (the unit of each in brackets): exponential (epoch: lr x gamma ^ epoch), step (epoch: lr x gamma ^
(epoch // step_size)), constant, poly (iteration: lr x (1 - it / total) ^ poly_power, total = epochs x
batches per epoch); and for every one a linear warm-up over the first warmup_iters iterations (optimizer
steps) whose factor rises from warmup_factor at the first to 1 at iteration warmup_iters. Epochs and
iterations count from 0 here.

Without warm-up, exponential, step and constant are torch's own schedulers stepped once per epoch, as the
seed protocol always ran them. Poly or a warm-up make the schedule one closed form of the iteration
(`lr_factor`), a LambdaLR stepped after every optimizer step (`per_iteration`). Either way the schedule's
state (the step count) is saved beside the optimizer's, so a resumed run continues the same sequence, and
torch's schedulers fill a device-tensor learning rate in place (the CUDA-graph step's contract).
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.config import TrainConfig

# The normalisation layers whose parameters no_decay_norms exempts from weight decay.
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
               nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                     no_decay_norms: bool = False) -> list[dict]:
    """The optimizer's groups: {"params", "lr", "weight_decay", "lr_mult"}, parameters in the model's order."""
    encoder = getattr(model, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    no_decay_ids = set()
    if no_decay_norms:
        for module in model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if isinstance(module, NORM_LAYERS) or name == "bias":
                    no_decay_ids.add(id(parameter))
    groups: dict[tuple[float, float], dict] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        mult = head_lr_mult if encoder is not None and id(parameter) not in encoder_ids else 1.0
        decay = 0.0 if id(parameter) in no_decay_ids else weight_decay
        group = groups.setdefault((mult, decay), {"params": [], "lr": lr * mult, "weight_decay": decay,
                                                  "lr_mult": mult})
        group["params"].append(parameter)
    return list(groups.values())


def make_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `config` names over the model's trainable parameters (fused kernels on CUDA by default)."""
    groups = parameter_groups(model, config.lr, config.weight_decay, config.head_lr_mult, config.no_decay_norms)
    fused = device.type == "cuda" if config.fused_optimizer is None else config.fused_optimizer
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay, fused=fused)
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=config.lr, amsgrad=config.amsgrad, weight_decay=config.weight_decay, fused=fused)


def per_iteration(config: TrainConfig) -> bool:
    """The schedule is stepped after every optimizer step (poly, or any warm-up); else once per epoch."""
    return config.scheduler == "poly" or config.warmup_iters > 0


def lr_factor(config: TrainConfig, iteration: int, batches_per_epoch: int) -> float:
    """The learning-rate multiplier of optimizer step `iteration` (from 0) of a per-iteration schedule."""
    epoch = iteration // batches_per_epoch
    if config.scheduler == "poly":
        factor = max(0.0, 1 - iteration / (config.epochs * batches_per_epoch)) ** config.poly_power
    elif config.scheduler == "exponential":
        factor = config.gamma ** epoch
    elif config.scheduler == "step":
        factor = config.gamma ** (epoch // config.step_size)
    else:
        factor = 1.0
    if iteration < config.warmup_iters:
        factor *= config.warmup_factor + (1 - config.warmup_factor) * iteration / config.warmup_iters
    return factor


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
                   batches_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule; step it after every optimizer step when `per_iteration(config)`, else after every epoch."""
    if per_iteration(config):
        # A function, not a callable object: LambdaLR saves only the step count, and a resumed run
        # rebuilds the same function from its settings.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda iteration: lr_factor(config, iteration, batches_per_epoch))
    if config.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate now, before the head's multiplier (a device tensor's value when the step is a CUDA graph)."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / group.get("lr_mult", 1.0)  # a state saved before groups had no lr_mult
