"""The training loss: a per-pixel loss on the model's logits, plus the auxiliary head's, weighted.

Every loss ignores the pixels labelled with the ignore index (255): they add nothing to any sum, count or
mean below. `make_loss(config, class_weights)` builds the loss a TrainConfig names; it takes a model's
outputs as {"out": logits[, "aux": logits]} (step.py's `outputs_of` makes them so) and the masks, and
returns one scalar. With p the softmax over classes, y a pixel's class, P the batch's labelled pixels
and w_c the class weights (all 1 without them):

- ce: sum over P of w_y * -log p_y, divided by the sum over P of w_y (torch's weighted cross-entropy)
- dice: 1 - dice_c per class c, with dice_c = 2 * sum over P of p_c [y = c] / (sum over P of p_c + count of
  y = c in P), over the whole batch; a class absent from the batch's labels counts 0; the classes' mean
  weighted by w_c (sum of w_c * loss_c over the sum of all w_c)
- focal: per class c, the mean over P of (1 - q)^gamma * -log q with q the sigmoid probability of the right
  answer to "is the pixel class c?" (one-vs-rest, as segmentation-models-pytorch and mmseg do); the classes'
  mean weighted by w_c as for dice
- ce_dice: ce + dice_weight * dice, both with the class weights

These are segmentation-models-pytorch's DiceLoss and FocalLoss (mode "multiclass"), which the tests compare
them with. `class_weights_from_counts` makes the weights of class_weights "auto".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import class_weight_values
from trainables.errors import ConfigError, DatasetError
from trainables.metrics import IGNORE_INDEX

# Smallest denominator of a class's Dice score (smp's): a class absent from labels and predictions scores 0.
DICE_EPS = 1e-7


class SegmentationLoss(nn.Module):
    """loss(out) + aux_weight x loss(aux), where the model has an auxiliary head and trains."""

    def __init__(self, pixel_loss: nn.Module, aux_weight: float = 0.0):
        super().__init__()
        self.pixel_loss = pixel_loss
        self.aux_weight = aux_weight

    def forward(self, outputs: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        loss = self.pixel_loss(outputs["out"], masks)
        if self.aux_weight and "aux" in outputs:
            loss = loss + self.aux_weight * self.pixel_loss(outputs["aux"], masks)
        return loss


def _one_hot(masks: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot targets [N, C, H, W] as float, zero at ignored pixels; the labelled pixels [N, 1, H, W] as float)."""
    # A comparison, not F.one_hot: no value checks (which sync on CPU), nothing a CUDA graph could not replay.
    target = masks.unsqueeze(1) == torch.arange(classes, device=masks.device).view(1, classes, 1, 1)
    return target.float(), (masks != IGNORE_INDEX).unsqueeze(1).float()


def _class_mean(per_class: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_class.mean()
    return (per_class * weights).sum() / weights.sum()


class DiceLoss(nn.Module):
    """Soft Dice over the batch, one score per class, averaged over classes (weighted by the class weights)."""

    def __init__(self, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target, labelled = _one_hot(masks, logits.shape[1])
        probabilities = logits.float().softmax(1) * labelled
        dims = (0, 2, 3)
        intersection = (probabilities * target).sum(dims)
        target_sum = target.sum(dims)
        dice = 2 * intersection / (probabilities.sum(dims) + target_sum).clamp_min(DICE_EPS)
        loss = (1 - dice) * (target_sum > 0)  # Dice is undefined for a class absent from the labels
        return _class_mean(loss, self.class_weights)


class FocalLoss(nn.Module):
    """One-vs-rest sigmoid focal loss per class, the mean over labelled pixels, averaged over classes."""

    def __init__(self, gamma: float = 2.0, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target, labelled = _one_hot(masks, logits.shape[1])
        bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        focal = (1 - torch.exp(-bce)).pow(self.gamma) * bce * labelled
        # clamp: a batch with no labelled pixel gives 0, not 0/0
        per_class = focal.sum((0, 2, 3)) / labelled.sum().clamp_min(1)
        return _class_mean(per_class, self.class_weights)


class CeDiceLoss(nn.Module):
    """cross-entropy + dice_weight x Dice."""

    def __init__(self, dice_weight: float, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=class_weights, ignore_index=IGNORE_INDEX)
        self.dice = DiceLoss(class_weights)
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, masks) + self.dice_weight * self.dice(logits, masks)


def pixel_loss(config, class_weights: torch.Tensor | None = None) -> nn.Module:
    """The per-pixel loss `config.loss` names, with `class_weights` (one per class, or None)."""
    if config.loss == "dice":
        return DiceLoss(class_weights)
    if config.loss == "focal":
        return FocalLoss(config.focal_gamma, class_weights)
    if config.loss == "ce_dice":
        return CeDiceLoss(config.dice_weight, class_weights)
    return nn.CrossEntropyLoss(weight=class_weights, ignore_index=IGNORE_INDEX)


def make_loss(config, class_weights: torch.Tensor | None = None) -> SegmentationLoss:
    """The loss of `config` (a TrainConfig); `class_weights` one weight per class (or None)."""
    return SegmentationLoss(pixel_loss(config, class_weights), config.aux_loss_weight)


# -- class weights ---------------------------------------------------------------------------------
def class_weights_from_counts(counts) -> list[float]:
    """Median frequency balancing (Eigen & Fergus 2015) of a pixel histogram: w_c = median(f) / f_c.

    counts: the labelled pixels of each class (ignored pixels not among them); f_c = counts_c / sum(counts).
    The median is over the classes present; a class absent from the histogram gets 1, the weight of a
    class of median frequency (it is never a target, so only Dice and focal, which push its probability
    down everywhere, see its weight).
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise DatasetError("class_weights auto: the training split has no labelled pixel (every mask is 255)")
    frequency = counts / counts.sum()
    median = float(np.median(frequency[present]))
    return [median / f if f > 0 else 1.0 for f in frequency.tolist()]


def pixel_counts(masks, classes: int, chunk: int = 64) -> list[int]:
    """Pixels of each class 0..classes-1 in uint8 masks [N, H, W] (a tensor on any device or a numpy array,
    memory-mapped or not); 255 and other values >= classes are not counted. Read `chunk` masks at a time."""
    total = np.zeros(256, dtype=np.int64)
    for start in range(0, len(masks), chunk):
        part = masks[start:start + chunk]
        if torch.is_tensor(part):
            total += torch.bincount(part.reshape(-1), minlength=256).cpu().numpy()
        else:
            total += np.bincount(np.asarray(part, dtype=np.uint8).reshape(-1), minlength=256)
    return total[:classes].tolist()


def resolve_class_weights(config, train_counts) -> list[float] | None:
    """The class weights of a run: None (class_weights none), the listed ones, or auto's from the training
    split's pixels; `train_counts()` counts them (called only for auto: reading every mask costs time)."""
    if config.class_weights == "none":
        return None
    if config.class_weights == "auto":
        return class_weights_from_counts(train_counts())
    weights = list(class_weight_values(config.class_weights))
    if len(weights) != config.classes:
        raise ConfigError(f"class_weights: {len(weights)} weights given for {config.classes} classes")
    return weights
