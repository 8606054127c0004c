"""FCN-ResNet50 from torchvision, split into `encoder` (the dilated ResNet-50) and `decoder` (the FCN head).

Nothing is downloaded: ImageNet weights come only from torch's hub cache, and a missing
file is a WeightsError that says where to put it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torchvision.models import ResNet50_Weights
from torchvision.models.segmentation import fcn_resnet50

from trainables.errors import WeightsError
from trainables.models.transfer import EncoderDecoder


class FCNResNet50(EncoderDecoder):
    """FCN-ResNet50 without the auxiliary head; forward returns logits of the input's size."""

    arch = "fcn_resnet50"
    segformer_stem = None

    def __init__(self, num_classes: int, imagenet_weights: str | None = None):
        """`imagenet_weights`: None (random backbone) or a ResNet50_Weights name ("DEFAULT", "IMAGENET1K_V1", ...)."""
        super().__init__()
        backbone_weights = None
        if imagenet_weights is not None:
            backbone_weights = ResNet50_Weights[imagenet_weights]
            _require_cached(backbone_weights, imagenet_weights)
        # weights_backbone must be passed even when None: torchvision's default would fetch IMAGENET1K_V1
        model = fcn_resnet50(weights=None, weights_backbone=backbone_weights, num_classes=num_classes, aux_loss=False)
        self.encoder = model.backbone  # ResNet-50 up to layer4, returns {"out": features}
        self.decoder = model.classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(pixels)["out"])
        return F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)


def resnet50_backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ResNet-50 classification state dict without its `fc` layer, which the FCN backbone lacks."""
    return {key: value for key, value in state.items() if not key.startswith("fc.")}


def imagenet_cache_file(weights: ResNet50_Weights) -> str:
    """Where torchvision looks for these weights before downloading them."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _require_cached(weights: ResNet50_Weights, name: str) -> None:
    path = imagenet_cache_file(weights)
    if not os.path.isfile(path):
        raise WeightsError(
            f"pretrain 'imagenet': the ResNet-50 weights {name} ({weights.name}) are not in the local cache; "
            f"expected the file {path}. Nothing can be downloaded here. Place that file there "
            f"(TORCH_HOME moves the cache), or set pretrain to the path of a local ResNet-50 state dict "
            f"(`pretrain: /path/to/resnet50.pth` in a study file, `--pretrain /path/to/resnet50.pth` for study train).")
