"""torchvision's segmentation models, built by torchvision's own builders (never rewritten here).

FCN (ResNet-50/101), DeepLabV3 (ResNet-50/101, MobileNetV3-Large) and LR-ASPP (MobileNetV3-Large),
each with the optional auxiliary head of its builder (LR-ASPP has none). Nothing is downloaded:
ImageNet backbones and COCO-VOC weights are read from torch's hub cache (torchvision_weights.py).
"""

from __future__ import annotations

from trainables.models import ModelFamily

# arch -> its backbone (ImageNet weights) and whether its builder can add an auxiliary head
ARCHS = {
    "fcn_resnet50": ("resnet50", True),
    "fcn_resnet101": ("resnet101", True),
    "deeplabv3_resnet50": ("resnet50", True),
    "deeplabv3_resnet101": ("resnet101", True),
    "deeplabv3_mobilenet_v3_large": ("mobilenet_v3_large", True),
    "lraspp_mobilenet_v3_large": ("mobilenet_v3_large", False),
}


def _rules(arch: str, settings: dict) -> str | None:
    if not ARCHS[arch][1] and settings.get("aux_loss_weight", 0.0) > 0:
        return f"aux_loss_weight: {arch} has no auxiliary head; expected 0, got {settings['aux_loss_weight']}"
    return None


def _label(settings: dict) -> str:
    aux = settings.get("aux_loss_weight", 0.0)
    return f"{settings['arch']} (aux head x{aux:g})" if aux else str(settings["arch"])


FAMILY = ModelFamily(
    name="torchvision",
    archs=tuple(ARCHS),
    module=__name__,
    options=("aux_loss_weight", "imagenet_weights"),
    weights=("imagenet", "coco"),
    arch_options={arch: ("imagenet_weights",) for arch, (_, has_aux) in ARCHS.items() if not has_aux},
    rules=_rules,
    label=_label,
)


def build(config, weights: str | None = None):
    """torchvision's model for `config`, wrapped so that its backbone is the `encoder` (torchvision_wrapper.py)."""
    from torchvision.models import segmentation

    from trainables.models import torchvision_weights as weights
    from trainables.models.torchvision_wrapper import TorchvisionSegmentation

    backbone, has_aux = ARCHS[config.arch]
    kwargs = {"aux_loss": config.aux_loss_weight > 0} if has_aux else {}
    backbone_weights = None
    if config.pretrain == "imagenet":
        backbone_weights = weights.imagenet_backbone(backbone, config.imagenet_weights)
    # weights_backbone is passed even when None: torchvision's default would fetch ImageNet weights
    net = getattr(segmentation, config.arch)(weights=None, weights_backbone=backbone_weights,
                                             num_classes=config.classes, **kwargs)
    model = TorchvisionSegmentation(net, config.arch)
    if config.pretrain == "coco":
        weights.load_coco(model, config.arch)
    elif config.pretrain not in ("none", "imagenet"):
        weights.load_backbone_file(model, config.pretrain, backbone)
    return model
