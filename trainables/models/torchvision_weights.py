"""torchvision's weights from local files only: torch's hub cache, or a file the study names.

ImageNet backbones (`pretrain: imagenet`) are the files torchvision itself would download into
`$TORCH_HOME/hub/checkpoints/` (resnet50-0676ba61.pth, resnet50-11ad3fa6.pth, resnet101-63fe2227.pth,
resnet101-cd907fc2.pth, mobilenet_v3_large-8738ca79.pth, mobilenet_v3_large-5c1a4163.pth); COCO-VOC
weights (`pretrain: coco`) are its `*_coco-*.pth` files, of which everything but the layers that
predict the 21 VOC classes is loaded. A missing file is a WeightsError that says where to put it.
Every file is read with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import os

import torch
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights, segmentation

from trainables.errors import WeightsError
from trainables.models.torchvision_wrapper import from_torchvision_keys
from trainables.models.transfer import EncoderDecoder, load_encoder_file, load_encoder_state

BACKBONE_WEIGHTS = {"resnet50": ResNet50_Weights, "resnet101": ResNet101_Weights,
                    "mobilenet_v3_large": MobileNet_V3_Large_Weights}
COCO_WEIGHTS = {
    "fcn_resnet50": segmentation.FCN_ResNet50_Weights, "fcn_resnet101": segmentation.FCN_ResNet101_Weights,
    "deeplabv3_resnet50": segmentation.DeepLabV3_ResNet50_Weights,
    "deeplabv3_resnet101": segmentation.DeepLabV3_ResNet101_Weights,
    "deeplabv3_mobilenet_v3_large": segmentation.DeepLabV3_MobileNet_V3_Large_Weights,
    "lraspp_mobilenet_v3_large": segmentation.LRASPP_MobileNet_V3_Large_Weights,
}
_SHOWN = 5


def cache_file(weights) -> str:
    """Where torchvision looks for these weights before downloading them."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def imagenet_backbone(backbone: str, name: str):
    """The torchvision Weights of a backbone's ImageNet weights `name` (DEFAULT, IMAGENET1K_V1, ...), cached here."""
    weights = BACKBONE_WEIGHTS[backbone][name]
    _require_cached(weights, f"pretrain 'imagenet': the {backbone} weights {name} ({weights.name})",
                    f"a local {backbone} state dict", f"{backbone}.pth")
    return weights


def load_coco(model: EncoderDecoder, arch: str) -> None:
    """torchvision's COCO-VOC weights of `arch` into `model`: all but the layers that predict VOC's 21 classes
    (those keep their initialisation when the model predicts another number of classes)."""
    weights = COCO_WEIGHTS[arch].COCO_WITH_VOC_LABELS_V1
    path = _require_cached(weights, f"pretrain 'coco': the {arch} COCO-VOC weights", f"a local {arch} state dict",
                           f"{arch}.pth")
    state = from_torchvision_keys(_read(path))
    own = model.state_dict()
    if model.aux is None:  # weights of an aux head the model was built without
        state = {k: v for k, v in state.items() if not k.startswith("aux.")}
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(fitting))
    missing = sorted(set(own) - set(state))
    # Only the layers that predict the classes may differ: 21 outputs in the file, K in the model.
    wrong = [k for k in skipped if k not in own or own[k].shape[1:] != state[k].shape[1:] or state[k].shape[0] != 21]
    if missing or wrong:
        raise WeightsError(f"pretrain 'coco': {path} does not fit {arch}: missing {missing[:_SHOWN]}, "
                           f"unexpected or of another shape {wrong[:_SHOWN]}")
    model.load_state_dict(fitting, strict=False)


def load_backbone_file(model: EncoderDecoder, path: str, backbone: str) -> None:
    """`pretrain: PATH`: a torchvision classification state dict of the backbone (its `fc`/`classifier`
    dropped; MobileNet's `features.` prefix removed) or an encoder file exported by a study."""
    state = load_encoder_file(path)
    if backbone.startswith("resnet"):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    elif any(k.startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    load_encoder_state(model, state, path)


def _require_cached(weights, what: str, alternative: str, example: str) -> str:
    path = cache_file(weights)
    if not os.path.isfile(path):
        raise WeightsError(
            f"{what} are not in the local cache; expected the file {path}. Nothing can be downloaded here. "
            f"Place that file there (TORCH_HOME moves the cache), or set pretrain to the path of {alternative} "
            f"(`pretrain: /path/to/{example}` in a study file, `--pretrain /path/to/{example}` for study train).")
    return path


def _read(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a bad or foreign file
        raise WeightsError(f"{path}: not a readable PyTorch state dict ({type(error).__name__})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds no state dict")
    return state
