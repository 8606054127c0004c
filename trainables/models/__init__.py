"""The model of a training run, built from its TrainConfig."""

from __future__ import annotations

from torch import nn

from trainables.config import TrainConfig
from trainables.errors import ConfigError
from trainables.models.fcn import FCNResNet50, resnet50_backbone_state
from trainables.models.segformer import Segformer, SegformerConfig
from trainables.models.transfer import EncoderDecoder, freeze_encoder, load_encoder_file, load_encoder_state


def build_model(config: TrainConfig) -> EncoderDecoder:
    """The model for `config`, with its pretrained encoder loaded and frozen when asked."""
    weights_file = config.pretrain if config.pretrain not in ("none", "imagenet") else None
    if config.arch == "fcn_resnet50":
        imagenet_weights = config.imagenet_weights if config.pretrain == "imagenet" else None
        model = FCNResNet50(config.num_classes, imagenet_weights)
        if weights_file is not None:
            # a torchvision ResNet-50 classification state dict or an exported FCN encoder
            load_encoder_state(model, resnet50_backbone_state(load_encoder_file(weights_file)), weights_file)
    elif config.arch == "segformer_b0":
        segformer_config = SegformerConfig.mit("b0", stem=config.segformer_stem, drop_path_rate=config.drop_path)
        model = Segformer(segformer_config, config.num_classes)
        if weights_file is not None:
            load_encoder_state(model, load_encoder_file(weights_file), weights_file)
    else:
        raise ConfigError(f"arch: no model is built for {config.arch!r}")
    if config.freeze == "encoder":
        freeze_encoder(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


__all__ = ["build_model", "count_parameters"]
