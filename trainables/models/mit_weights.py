"""MiT (SegFormer encoder) weights from local files: the project's own encoder files for now."""

from __future__ import annotations

from trainables.errors import WeightsError
from trainables.models.transfer import load_encoder_file


def encoder_state_from_file(path: str, model) -> dict:
    return load_encoder_file(path)


def imagenet_encoder_state(variant: str, stem: str) -> tuple[dict, str]:
    raise WeightsError(f"pretrain 'imagenet': no local MiT-{variant.upper()} ImageNet weights found")
