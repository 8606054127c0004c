"""The SegFormer family: segformer_b0 ... segformer_b5, the project's own model (segformer.py).

Sizes are NVlabs' and Hugging Face's (MiT-B0 ... B5; decoder 256 for B0/B1, 768 for B2-B5). ImageNet
encoders are read from local files only (trainables/models/mit_weights.py reads both key dialects).
"""

from __future__ import annotations

from trainables.models import ModelFamily

VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")


def _label(settings: dict) -> str:
    return f"{settings['arch']} ({settings.get('segformer_stem', 'paper')} stem)"


FAMILY = ModelFamily(
    name="segformer",
    archs=tuple(f"segformer_{variant}" for variant in VARIANTS),
    module=__name__,
    options=("segformer_stem", "drop_path"),
    encoder_options=("segformer_stem",),
    weights=("imagenet",),
    label=_label,
)


def build(config, weights: str | None = None):
    """The SegFormer of `config`: random weights, or its encoder from pretrain (imagenet, or a file)."""
    from trainables.models.segformer import Segformer, SegformerConfig
    from trainables.models.transfer import load_encoder_state

    variant = config.arch.removeprefix("segformer_")
    model = Segformer(SegformerConfig.mit(variant, stem=config.segformer_stem, drop_path_rate=config.drop_path),
                      config.classes)
    if config.pretrain == "imagenet":
        from trainables.models.mit_weights import imagenet_encoder_state

        state, source = imagenet_encoder_state(variant, config.segformer_stem)
        load_encoder_state(model, state, source)
    elif config.pretrain not in ("none", "coco"):
        from trainables.models.mit_weights import encoder_state_from_file

        load_encoder_state(model, encoder_state_from_file(config.pretrain, model), config.pretrain)
    return model
