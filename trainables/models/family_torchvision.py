"""torchvision's segmentation models, built by torchvision's own builders (never rewritten here).

FCN (ResNet-50/101), DeepLabV3 (ResNet-50/101, MobileNetV3-Large) and LR-ASPP (MobileNetV3-Large),
each with the optional auxiliary head of its builder (LR-ASPP has none). Nothing is downloaded:
`pretrain: imagenet` reads the backbone file torchvision would have downloaded into torch's hub cache,
`pretrain: coco` its COCO-VOC file (all but the layers that predict the classes); FAMILY.locate names
the file, and torchvision_weights.py reads it (or the copy the runner hands a trial).
"""

from __future__ import annotations

from trainables.errors import WeightsError
from trainables.models import ModelFamily
from trainables.models.caches import torch_hub_file

# arch -> its backbone, whether its builder can add an auxiliary head, and the file of its COCO-VOC weights
# (the basename of torchvision's COCO_WITH_VOC_LABELS_V1 url; tests/test_model_families.py checks each)
ARCHS = {
    "fcn_resnet50": ("resnet50", True, "fcn_resnet50_coco-1167a1af.pth"),
    "fcn_resnet101": ("resnet101", True, "fcn_resnet101_coco-7ecb50ca.pth"),
    "deeplabv3_resnet50": ("resnet50", True, "deeplabv3_resnet50_coco-cd0a2569.pth"),
    "deeplabv3_resnet101": ("resnet101", True, "deeplabv3_resnet101_coco-586e9e4e.pth"),
    "deeplabv3_mobilenet_v3_large": ("mobilenet_v3_large", True, "deeplabv3_mobilenet_v3_large-fc3c493d.pth"),
    "lraspp_mobilenet_v3_large": ("mobilenet_v3_large", False, "lraspp_mobilenet_v3_large-d234d4ea.pth"),
}
# backbone -> torchvision's ImageNet weights (TrainConfig.imagenet_weights) -> their file in the hub cache
IMAGENET_FILES = {
    "resnet50": {"IMAGENET1K_V1": "resnet50-0676ba61.pth", "IMAGENET1K_V2": "resnet50-11ad3fa6.pth"},
    "resnet101": {"IMAGENET1K_V1": "resnet101-63fe2227.pth", "IMAGENET1K_V2": "resnet101-cd907fc2.pth"},
    "mobilenet_v3_large": {"IMAGENET1K_V1": "mobilenet_v3_large-8738ca79.pth",
                           "IMAGENET1K_V2": "mobilenet_v3_large-5c1a4163.pth"},
}
DEFAULT_IMAGENET = "IMAGENET1K_V2"  # what torchvision's DEFAULT means for all three backbones


def _rules(arch: str, settings: dict) -> str | None:
    if not ARCHS[arch][1] and settings.get("aux_loss_weight", 0.0) > 0:
        return f"aux_loss_weight: {arch} has no auxiliary head; expected 0, got {settings['aux_loss_weight']}"
    return None


def _label(settings: dict) -> str:
    aux = settings.get("aux_loss_weight", 0.0)
    return f"{settings['arch']} (aux head x{aux:g})" if aux else str(settings["arch"])


def imagenet_weights_name(settings: dict) -> str:
    """IMAGENET1K_V1 or IMAGENET1K_V2: the ImageNet weights a configuration asks for (DEFAULT resolved)."""
    name = settings.get("imagenet_weights", "DEFAULT")
    return DEFAULT_IMAGENET if name == "DEFAULT" else name


def _locate(settings: dict) -> str:
    """The local file of `pretrain: imagenet` (the backbone's) or `pretrain: coco`; a WeightsError when absent."""
    import os

    arch = settings["arch"]
    backbone, _, coco_file = ARCHS[arch]
    if settings["pretrain"] == "coco":
        path = torch_hub_file(coco_file)
        what, alternative = f"the {arch} COCO-VOC weights", f"{arch}_coco.pth"
    else:
        name = imagenet_weights_name(settings)
        path = torch_hub_file(IMAGENET_FILES[backbone][name])
        what, alternative = f"the {backbone} ImageNet weights {name}", f"{backbone}.pth"
    if not os.path.isfile(path):
        raise WeightsError(
            f"pretrain '{settings['pretrain']}': {what} are not in the local cache; expected the file {path}. "
            f"Nothing can be downloaded here. Place that file there (TORCH_HOME moves the cache), or set pretrain to "
            f"the path of a local copy (`pretrain: /path/to/{alternative}` in a study file, `--pretrain "
            f"/path/to/{alternative}` for study train).")
    return path


FAMILY = ModelFamily(
    name="torchvision",
    archs=tuple(ARCHS),
    module=__name__,
    options=("aux_loss_weight", "imagenet_weights"),
    weights=("imagenet", "coco"),
    arch_options={arch: ("imagenet_weights",) for arch, (_, has_aux, _) in ARCHS.items() if not has_aux},
    rules=_rules,
    label=_label,
    locate=_locate,
)


def build(config, weights: str | None = None):
    """torchvision's model for `config`, wrapped so that its backbone is the `encoder` (torchvision_wrapper.py).

    `weights`: for pretrain imagenet or coco, the file to read (default: the one FAMILY.locate finds)."""
    from torchvision.models import segmentation

    from trainables.models import torchvision_weights
    from trainables.models.torchvision_wrapper import TorchvisionSegmentation

    backbone, has_aux, _ = ARCHS[config.arch]
    kwargs = {"aux_loss": config.aux_loss_weight > 0} if has_aux else {}
    # weights_backbone=None: torchvision's default would fetch ImageNet weights; they are read below instead,
    # from a local file with weights_only=True (the builder's own loading would unpickle).
    net = getattr(segmentation, config.arch)(weights=None, weights_backbone=None, num_classes=config.classes,
                                             **kwargs)
    model = TorchvisionSegmentation(net, config.arch)
    if config.pretrain == "none":
        return model
    if config.pretrain in FAMILY.weights:
        path = weights or _locate(config.to_dict())
        expect = "imagenet" if config.pretrain == "imagenet" else "segmentation"
        what = (f"{backbone} ImageNet weights {imagenet_weights_name(config.to_dict())}"
                if expect == "imagenet" else "COCO-VOC weights")
    else:
        path, expect, what = config.pretrain, None, "weights"
    dialect = torchvision_weights.load_file(model, path, backbone, expect, f"pretrain '{config.pretrain}'")
    model.weights_read = f"read {config.arch} {what} ({dialect}) from {path}"
    return model
