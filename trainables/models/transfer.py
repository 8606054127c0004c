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

from trainables.errors import ConfigError, WeightsError

# how many offending keys an error message lists
_SHOWN_KEYS = 5


class EncoderDecoder(nn.Module):
    """A segmentation model split into `encoder` and `decoder`, the parts transfer and freezing act on.

    Subclasses set `encoder`, `decoder`, `arch` and `segformer_stem` (None outside SegFormer). A family's
    build sets `weights_read` when it loaded pretrained weights: which file, in which dialect (for the log).
    """

    arch: str
    segformer_stem: str | None
    encoder: nn.Module
    decoder: nn.Module
    weights_read: str | None = None

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


# The files a weights folder may hold (a Hugging Face snapshot), in the order they are taken.
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")
# Keys under which a checkpoint keeps its state dict (ours: encoder; mmseg/mmcv: state_dict; others: model).
WRAPPERS = ("encoder", "state_dict", "model")


def load_encoder_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a weights file: an encoder file, a bare state dict, or a checkpoint wrapping one (under
    encoder, state_dict or model). A folder: its model.safetensors or pytorch_model.bin."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = [os.path.join(path, name) for name in FOLDER_FILES if os.path.isfile(os.path.join(path, name))]
        if not found:
            raise WeightsError(f"pretrain: the folder {path!r} holds none of {', '.join(FOLDER_FILES)}")
        path = found[0]
    if not os.path.isfile(path):
        raise WeightsError(f"pretrain: no weights file at {path!r}")
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
        raise WeightsError(f"pretrain: {path} is not a readable PyTorch state dict "
                           f"({type(error).__name__}: {reason})") from None
    state = content
    if isinstance(content, dict) and not _all_tensors(content):
        state = next((content[key] for key in WRAPPERS if isinstance(content.get(key), dict)), content)
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        raise WeightsError(f"pretrain: {path} holds neither an encoder file nor a state dict of tensors")
    return state


def _all_tensors(state: dict) -> bool:
    return all(isinstance(value, torch.Tensor) for value in state.values())


def _is_safetensors(path: str | os.PathLike) -> bool:
    """safetensors starts with an 8-byte header length and then a JSON object; a torch file is a zip or a pickle."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """How `given` differs from `expected` (missing, unexpected and misshapen keys, the first few of each by
    name); None when every key and shape matches."""
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    mismatched = [f"{key} {tuple(given[key].shape)} (model: {tuple(value.shape)})"
                  for key, value in expected.items() if key in given and given[key].shape != value.shape]
    problems = [f"{label} {len(keys)} key(s): {', '.join(keys[:_SHOWN_KEYS])}"
                f"{', ...' if len(keys) > _SHOWN_KEYS else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch in", mismatched))
                if keys]
    return "; ".join(problems) or None


def with_batch_norm_counts(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> dict:
    """`given` with the BatchNorm counters it lacks taken from `expected`: files saved before PyTorch 0.4.1 (such as
    torchvision's resnet50-0676ba61.pth) have no num_batches_tracked, which BatchNorm itself fills in the same way."""
    absent = {key: value for key, value in expected.items()
              if key.endswith(".num_batches_tracked") and key not in given}
    return {**given, **absent} if absent else given


def load_encoder_state(model: EncoderDecoder, encoder_state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `encoder_state` into `model.encoder`; every key and shape must match (`source` names it in errors)."""
    if model.encoder is None:
        raise ConfigError(f"pretrain: the model of {model.arch} has no `encoder` submodule to load {source} into")
    expected = model.encoder.state_dict()
    encoder_state = with_batch_norm_counts(expected, encoder_state)
    problem = state_mismatch(expected, encoder_state)
    if problem:
        stem = f" (segformer_stem {model.segformer_stem})" if model.segformer_stem else ""
        raise WeightsError(f"pretrain: the weights in {source} do not fit the {model.arch}{stem} encoder: "
                           f"{problem}. Were they made for another arch or segformer_stem?")
    model.encoder.load_state_dict(encoder_state, strict=True)


def freeze_encoder(model: EncoderDecoder) -> None:
    """No gradients for the encoder, and its normalisation layers stay in eval mode from now on."""
    if model.encoder is None:
        raise ConfigError(f"freeze: the model of {model.arch} has no `encoder` submodule to freeze")
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)
    model.encoder_frozen = True
    model.encoder.eval()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should get: those that still require gradients."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]
