"""The training loss: a per-pixel loss on the model's logits, plus the auxiliary head's, weighted.

Every loss ignores the pixels labelled with the ignore index (255). `make_loss(config)` builds the
loss a TrainConfig names; it takes a model's outputs as {"out": logits[, "aux": logits]} (step.py's
`outputs_of` makes them so) and the masks, and returns one scalar.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.metrics import IGNORE_INDEX


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


def make_loss(config, class_weights: torch.Tensor | None = None) -> SegmentationLoss:
    """The loss of `config` (a TrainConfig); `class_weights` one weight per class (or None)."""
    return SegmentationLoss(nn.CrossEntropyLoss(weight=class_weights, ignore_index=IGNORE_INDEX),
                            config.aux_loss_weight)
