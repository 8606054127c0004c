"""Model factories for tests/test_model_factory.py: `arch: tests.factory_models:<function>`, as a user writes them.

Each is called as function(num_classes=K, **model_kwargs) and returns an nn.Module.
"""

import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """A two-convolution encoder and a 1x1 head, logits upsampled to the input."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                     nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, pixels):
        return F.interpolate(self.head(self.encoder(pixels)), size=pixels.shape[-2:], mode="bilinear",
                             align_corners=False)


class NoEncoder(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.body = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, pixels):
        return self.body(pixels)


def tiny(num_classes: int, width: int = 8) -> nn.Module:
    return TinyNet(num_classes, width)


def without_encoder(num_classes: int) -> nn.Module:
    return NoEncoder(num_classes)


def one_class_too_many(num_classes: int) -> nn.Module:
    return TinyNet(num_classes + 1, 4)


def not_a_module(num_classes: int):
    return "a model"
