"""Models out of a study: a trial's model rebuilt from its record and loaded with its stored weights.

A finished trial keeps the weights after its last epoch (`weights_final`) and those of its best
validated epoch (`weights_best`, the same file when that epoch was the last), as safetensors:
nothing is unpickled. The model is built from the trial's settings in the record; its encoder
weights come from the file, so no pretraining source or ImageNet download is needed.
"""

from __future__ import annotations

from study.errors import StudyError
from study.record import settings_from_row
from study.storage import open_uri
from trainables.config import TrainConfig
from trainables.errors import ConfigError

WHICH = ("best", "last")


def trial_config(row: dict) -> TrainConfig:
    """The trial's settings, with the weights to come from its own files (no pretrained source)."""
    settings = settings_from_row(row)
    try:
        return TrainConfig.from_dict({**settings, "pretrain": "none", "freeze": "none"})
    except ConfigError as error:
        raise StudyError(f"trial {row.get('trial_key')}: its recorded settings do not make a model ({error})") from None


def weights_location(row: dict, which: str = "best") -> str:
    if which not in WHICH:
        raise StudyError(f"--which: expected one of {list(WHICH)}, got {which!r}")
    location = row.get("weights_best" if which == "best" else "weights_final")
    if not isinstance(location, str) or not location:
        raise StudyError(f"trial {row.get('trial_key')} ({row.get('status')}) has no stored {which} weights; "
                         f"only ended trials with a final checkpoint have them")
    return location


def read_weights(location: str) -> dict:
    """A safetensors state dict from a path or URI, read into memory (never unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    filesystem, path = open_uri(location)
    try:
        with filesystem.open_input_stream(path) as stream:
            data = stream.read()
    except (FileNotFoundError, OSError) as error:
        raise StudyError(f"{location}: the weights file cannot be read ({error})") from None
    try:
        return load(data)
    except (SafetensorError, ValueError) as error:
        raise StudyError(f"{location}: not a readable safetensors file ({error})") from None


def load_trial_model(row: dict, which: str = "best", device: str = "cpu"):
    """(model in eval mode, its TrainConfig) of a trial's record row."""
    import torch

    from trainables.models import build_model

    config = trial_config(row)
    state = read_weights(weights_location(row, which))
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise StudyError(f"trial {row.get('trial_key')}: its {which} weights do not fit its model "
                         f"({str(error).splitlines()[0]})") from None
    return model.to(torch.device(device)).eval(), config
