"""A torchvision segmentation model seen as encoder and decoder: its backbone, its classifier (and aux head).

The submodules are torchvision's own, renamed: `backbone.*` -> `encoder.*`, `classifier.*` -> `decoder.*`,
`aux_classifier.*` -> `aux.*` (TORCHVISION_NAMES maps a torchvision state dict onto these keys). The
forward is torchvision's: features from the backbone, the classifier's logits upsampled to the input
(LR-ASPP's classifier takes both of its feature maps), and in training the aux head's logits too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.lraspp import LRASPP

from trainables.models.transfer import EncoderDecoder

TORCHVISION_NAMES = {"backbone.": "encoder.", "classifier.": "decoder.", "aux_classifier.": "aux."}
# the layers that predict the classes (torchvision's FCNHead/DeepLabHead end in a 1x1 convolution at index 4;
# LR-ASPP's head has two): what `pretrain: coco` leaves at their initialisation
CLASS_LAYERS = {"fcn": ("decoder.4.", "aux.4."), "deeplabv3": ("decoder.4.", "aux.4."),
                "lraspp": ("decoder.low_classifier.", "decoder.high_classifier.")}


class TorchvisionSegmentation(EncoderDecoder):
    def __init__(self, net: nn.Module, arch: str):
        super().__init__()
        self.arch = arch
        self.segformer_stem = None
        self.whole_features = isinstance(net, LRASPP)  # LR-ASPP's head reads the low and the high features
        self.encoder = net.backbone
        self.decoder = net.classifier
        self.aux = getattr(net, "aux_classifier", None)

    def forward(self, pixels: torch.Tensor):
        features = self.encoder(pixels)
        size = pixels.shape[-2:]
        logits = self.decoder(features if self.whole_features else features["out"])
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.aux is None or not self.training:
            return logits
        aux = F.interpolate(self.aux(features["aux"]), size=size, mode="bilinear", align_corners=False)
        return {"out": logits, "aux": aux}


def class_layer_prefixes(arch: str) -> tuple[str, ...]:
    return CLASS_LAYERS[arch.split("_")[0]]


def from_torchvision_keys(state: dict) -> dict:
    """A torchvision model's state dict with this wrapper's key names."""
    renamed = {}
    for key, value in state.items():
        for old, new in TORCHVISION_NAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed
