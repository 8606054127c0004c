"""torchvision's weights from a local file, in whichever of its forms the file holds.

    torchvision classification model   resnet50-11ad3fa6.pth & co. (pretrain: imagenet): the backbone,
                                       without its `fc` (ResNet) or `classifier` (MobileNet's `features.*`)
    torchvision segmentation model     *_coco-*.pth (pretrain: coco), keys backbone/classifier/aux_classifier
    segstudy model                     a trial's weights (final.safetensors), keys encoder/decoder/aux
    segstudy encoder                   an encoder file exported by a study (or the bare backbone state dict)

A segmentation model's file fills everything but the layers that predict the classes (they keep their
initialisation, whatever the model's number of classes); its aux head only when the model has one and
the file holds it. Files are read with safetensors or `torch.load(..., weights_only=True)`
(transfer.load_encoder_file): nothing in a weights file runs code.
"""

from __future__ import annotations

from trainables.errors import WeightsError
from trainables.models.torchvision_wrapper import class_layer_prefixes, from_torchvision_keys
from trainables.models.transfer import (
    EncoderDecoder,
    load_encoder_file,
    load_encoder_state,
    state_mismatch,
    with_batch_norm_counts,
)

CLASSIFICATION, SEGMENTATION = "torchvision classification model", "torchvision segmentation model"
OUR_MODEL, OUR_ENCODER = "segstudy model", "segstudy encoder"


def dialect_of(state: dict) -> str:
    """Which of the four forms a state dict is in (by its keys)."""
    if any(key.startswith("backbone.") for key in state):
        return SEGMENTATION
    if any(key.startswith("encoder.") for key in state) and any(key.startswith("decoder.") for key in state):
        return OUR_MODEL
    if any(key.startswith(("fc.", "features.")) for key in state):
        return CLASSIFICATION
    return OUR_ENCODER


def load_file(model: EncoderDecoder, path: str, backbone: str, expect: str | None, label: str) -> str:
    """Read `path` into `model` and return its dialect. `expect` "imagenet" or "segmentation" refuses a file
    of the other kind (what pretrain imagenet or coco promise); None takes any."""
    state = load_encoder_file(path)
    dialect = dialect_of(state)
    whole = dialect in (SEGMENTATION, OUR_MODEL)
    if expect == "imagenet" and whole or expect == "segmentation" and not whole:
        wanted = "a segmentation model's weights" if expect == "segmentation" else f"{backbone} ImageNet weights"
        raise WeightsError(f"{label}: {path} holds a {dialect}'s weights, not {wanted}")
    if whole:
        load_segmentation_state(model, from_torchvision_keys(state), f"{path} ({dialect})")
    else:
        load_encoder_state(model, backbone_state(state, backbone), f"{path} ({dialect})")
    return dialect


def backbone_state(state: dict, backbone: str) -> dict:
    """A classification model's state dict as the encoder's: ResNet without `fc`, MobileNet's `features` only."""
    if backbone.startswith("resnet"):
        return {k: v for k, v in state.items() if not k.startswith("fc.")}
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return state


def load_segmentation_state(model: EncoderDecoder, state: dict, source: str) -> None:
    """A whole model's state dict (our keys) into `model`: all but the class layers, which keep their
    initialisation; the aux head's weights when the model has one and the file holds them."""
    classes = class_layer_prefixes(model.arch)
    has_aux = any(k.startswith("aux.") for k in state)
    if model.aux is None or not has_aux:
        state = {k: v for k, v in state.items() if not k.startswith("aux.")}
    expected = {k: v for k, v in model.state_dict().items()
                if not k.startswith(classes) and (has_aux or not k.startswith("aux."))}
    fitting = with_batch_norm_counts(expected, {k: v for k, v in state.items() if not k.startswith(classes)})
    problem = state_mismatch(expected, fitting)
    if problem:
        raise WeightsError(f"pretrain: the weights in {source} do not fit {model.arch}: {problem}")
    model.load_state_dict(fitting, strict=False)
