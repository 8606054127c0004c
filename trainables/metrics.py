"""Confusion matrix and IoU, accumulated on the training device.

The reference protocol computes mIoU from one confusion matrix over the whole
split (not a mean of per-image scores), excludes label 255, and counts a class
absent from both prediction and target as IoU 0. We report that figure as
`miou` and, beside it, the mean over classes present in target or prediction.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[num_classes, num_classes] int64 counts, rows = target, columns = prediction; 255 skipped.

    No host synchronisation, so a training step never waits for the GPU here (and the step
    can be captured in a CUDA graph): ignored pixels go to one extra bin instead of being
    masked out (boolean indexing waits for the count), and scatter_add_ counts (CUDA's
    bincount waits for the maximum to size its output). On CPU it is also faster.
    """
    bins = num_classes * num_classes
    flat = target.long() * num_classes + pred.long()
    flat = torch.where(target == IGNORE_INDEX, bins, flat).flatten()
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    return counts[:bins].reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of each class as float64; 0 where the class is in neither target nor prediction."""
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.zeros_like(union))


def summarize(confusion: torch.Tensor) -> dict:
    """mIoU (reference protocol), mIoU over present classes, per-class IoU and pixel accuracy."""
    confusion = confusion.detach().cpu()
    ious = iou_per_class(confusion)
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    total = confusion.sum()
    return {
        "miou": float(ious.mean()),
        "miou_present": float(ious[present].mean()) if present.any() else 0.0,
        "iou": [float(v) for v in ious],
        "pixel_accuracy": int(confusion.diagonal().sum()) / int(total) if total > 0 else 0.0,
    }
