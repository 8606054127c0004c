"""A trial's model rebuilt from its record and loaded with its stored weights (safetensors, never unpickled).

A finished trial keeps the weights after its last epoch (`weights_final`) and those of its best
validated epoch (`weights_best`, the same file when that epoch was the last). The model is built
from the trial's settings in the record; its encoder weights come from the file, so no pretraining
source or ImageNet download is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from study.errors import StudyError
from study.models.checkpoints import checkpoint_epoch, checkpoint_val_miou, outcome_metrics, weights_location
from study.models.choose import model_trial
from study.planning.record import settings_from_row
from study.storage import open_uri
from trainables.config import TrainConfig
from trainables.errors import ConfigError


# -- weights and models ---------------------------------------------------------------------
def trial_config(row: dict) -> TrainConfig:
    """The trial's settings, with the weights to come from its own files (no pretrained source)."""
    settings = settings_from_row(row)
    try:
        return TrainConfig.from_dict({**settings, "pretrain": "none", "freeze": "none"})
    except ConfigError as error:
        raise StudyError(f"trial {row.get('trial_key')}: its recorded settings do not make a model ({error})") from None


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
    location = weights_location(row, which)
    try:
        state = read_weights(location)
    except StudyError as error:
        raise StudyError(f"trial {row.get('trial_key')}, {which} weights: {error}") from None
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise StudyError(f"trial {row.get('trial_key')}: its {which} weights do not fit its model "
                         f"({str(error).splitlines()[0]})") from None
    return model.to(torch.device(device)).eval(), config


@dataclass(frozen=True, eq=False)
class StudyModel:
    """A trial's model in eval mode (fp32) with what is needed to use it.

    Inputs are RGB images at `input_size` (height, width), normalised with `mean` and `std` (of
    pixel values in [0, 1]); `preprocess` does both as the study's training did. The model returns
    logits [N, len(class_names), H, W] at its input's size.
    """

    model: Any  # torch.nn.Module
    study: str
    trial_key: str
    which: str  # best | last
    epoch: int | None  # the epoch whose weights these are
    dataset: str
    declaration: Any  # the dataset's DataDeclaration: how its ground truth is read
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB per class id
    input_size: tuple[int, int]  # (height, width): the study's working resolution
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    settings: dict  # the trial's settings as recorded (TrainConfig fields)
    metrics: dict  # the trial's outcome columns (study/planning/record.py)
    val_miou: float | None  # the validation mIoU recorded for these weights
    weights: str  # where they were read from
    config: TrainConfig  # the settings the model was built from (weights from the file, so pretrain none)
    notes: tuple[str, ...] = ()

    @property
    def device(self):
        return next(self.model.parameters()).device

    def preprocess(self, images) -> Any:
        """Images (paths or PIL images, one or a list) -> a normalised float batch [N, 3, H, W] on the model's device.

        Read and resized as the study's caches are (any PIL mode to RGB; bilinear with antialiasing).
        """
        import numpy as np
        import torch

        from trainables.data.cache import open_rgb, resize_image
        from trainables.data.device import normalization_constants, normalize_uint8

        if not isinstance(images, (list, tuple)):
            images = [images]
        pixels = np.stack([np.asarray(resize_image(_rgb(image, open_rgb), self.input_size)) for image in images])
        mean, inv_std = normalization_constants(self.device)
        return normalize_uint8(torch.from_numpy(pixels).to(self.device), mean, inv_std, self.config.channels_last)

    def normalize(self, images) -> Any:
        """Float images in [0, 1], [N, 3, H, W] -> the model's input (what an exported program does first)."""
        import torch

        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        return ((images - mean) / std).contiguous(memory_format=memory_format)

    def predict(self, images) -> Any:
        """Class ids [N, H, W] at the working resolution of images (as `preprocess` takes them)."""
        import torch

        with torch.no_grad():
            return self.model(self.preprocess(images)).argmax(1)


def _rgb(image, open_rgb):
    from PIL import Image

    return image.convert("RGB") if isinstance(image, Image.Image) else open_rgb(str(image))


def load_study_model(results, trial: str | None = None, which: str = "best", device: str = "cpu") -> StudyModel:
    """The model of `trial` (default: the study's best by best_val_miou) with its `which` weights."""
    import torch

    from trainables.data.device import IMAGENET_MEAN, IMAGENET_STD

    row, notes = model_trial(results, trial, which)
    model, config = load_trial_model(row, which, device)
    if config.channels_last:  # as it trained and validated: the same kernels give the same numbers
        model = model.to(memory_format=torch.channels_last)
    return StudyModel(
        model=model, study=results.name, trial_key=str(row["trial_key"]), which=which,
        epoch=checkpoint_epoch(row, which), dataset=config.dataset,
        class_names=tuple(results.plan.class_names(config.dataset, config.classes)),
        palette=tuple(results.plan.palette(config.dataset, config.classes)), declaration=results.plan.declaration(
            config.dataset), input_size=tuple(config.image_size),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, settings=settings_from_row(row), metrics=outcome_metrics(row),
        val_miou=checkpoint_val_miou(row, which), weights=weights_location(row, which), config=config,
        notes=tuple(notes))
