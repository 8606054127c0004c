"""Moving an encoder between models, and freezing it.

An encoder file made here is safetensors of `model.encoder.state_dict()` with the metadata
arch, segformer_stem and settings (trainables/checkpoint.py). A user's file may also be a
PyTorch state dict (`.pt`/`.pth`, e.g. torchvision's ResNet-50 weights), read with
`weights_only=True`: nothing in a weights file ever runs code.
Only the encoder travels: the decoder keeps its own initialisation, so an encoder trained
with 19 classes fits a 3-class model.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from trainables.errors import WeightsError

# how many offending keys an error message lists
_SHOWN_KEYS = 5


class EncoderDecoder(nn.Module):
    """A segmentation model split into `encoder` and `decoder`, the parts transfer and freezing act on.

    Subclasses set `encoder`, `decoder`, `arch` and `segformer_stem` (None outside SegFormer).
    """

    arch: str
    segformer_stem: str | None
    encoder: nn.Module
    decoder: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.encoder_frozen = False

    def train(self, mode: bool = True) -> EncoderDecoder:
        super().train(mode)
        # A frozen encoder keeps its normalisation statistics (BatchNorm running mean/var) and runs without
        # stochastic depth, whatever mode the training loop sets.
        if self.encoder_frozen:
            self.encoder.eval()
        return self


def export_encoder_state(model: EncoderDecoder) -> dict[str, torch.Tensor]:
    """A CPU copy of the encoder's weights; later training does not change it."""
    return {key: value.detach().to("cpu", copy=True) for key, value in model.encoder.state_dict().items()}


def save_encoder(model: EncoderDecoder, path: str | os.PathLike, config) -> None:
    """The model's encoder as an encoder file; `config` (a TrainConfig) names what it fits."""
    from trainables.checkpoint import save_encoder as save

    save(path, export_encoder_state(model), config)


def load_encoder_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The encoder state dict in an encoder file, or in a file holding a bare state dict."""
    if not os.path.isfile(path):
        raise WeightsError(f"pretrain: no weights file at {os.fspath(path)!r}")
    if _is_safetensors(path):
        from trainables.checkpoint import CheckpointError, load_weights

        try:
            return load_weights(path)
        except CheckpointError as error:
            raise WeightsError(f"pretrain: {error}") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a bad or foreign file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise WeightsError(f"pretrain: {os.fspath(path)} is not a readable PyTorch state dict "
                           f"({type(error).__name__}: {reason})") from None
    state = content
    if isinstance(content, dict) and isinstance(content.get("encoder"), dict):
        state = content["encoder"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise WeightsError(f"pretrain: {os.fspath(path)} holds neither an encoder file nor a state dict of tensors")
    return state


def _is_safetensors(path: str | os.PathLike) -> bool:
    """safetensors starts with an 8-byte header length and then a JSON object; a torch file is a zip or a pickle."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_encoder_state(model: EncoderDecoder, encoder_state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `encoder_state` into `model.encoder`; every key and shape must match (`source` names it in errors)."""
    expected = model.encoder.state_dict()
    missing = sorted(set(expected) - set(encoder_state))
    unexpected = sorted(set(encoder_state) - set(expected))
    mismatched = [f"{key} {tuple(encoder_state[key].shape)} (model: {tuple(value.shape)})"
                  for key, value in expected.items()
                  if key in encoder_state and encoder_state[key].shape != value.shape]
    problems = [f"{label} {len(keys)} key(s): {', '.join(keys[:_SHOWN_KEYS])}"
                f"{', ...' if len(keys) > _SHOWN_KEYS else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch in", mismatched))
                if keys]
    if problems:
        stem = f" (segformer_stem {model.segformer_stem})" if model.segformer_stem else ""
        raise WeightsError(f"pretrain: the weights in {source} do not fit the {model.arch}{stem} encoder: "
                           f"{'; '.join(problems)}. Were they made for another arch or segformer_stem?")
    model.encoder.load_state_dict(encoder_state, strict=True)


def freeze_encoder(model: EncoderDecoder) -> None:
    """No gradients for the encoder, and its normalisation layers stay in eval mode from now on."""
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)
    model.encoder_frozen = True
    model.encoder.eval()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should get: those that still require gradients."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]
