"""A split held where the model trains, normalised once, batched there.

At 64x64 a trial is bound by input handling, not arithmetic, when JPEGs are
decoded every epoch. The preprocessed cache is copied once to the training
device and normalised there once, into the layout the model takes (the pets split at
64x64 is ~50 MB as uint8, ~180 MB as float32); batches are gathered, shuffled and flipped
there: no DataLoader workers, no per-batch conversion, same code on CPU and GPU.

Augmented batches (augment.py: scale, crop, photometric) are made from the uint8 split instead, so a split
that is augmented keeps no float copy (4 bytes a pixel instead of 16). A split over the memory budget is not
held at all but streamed from the cache (stream.py) through the same `epoch_plan` and `make_batch`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from trainables.data.augment import Augmentation, Draws, augment_batch, draw_epoch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLOAT_COPY_BYTES = 12  # per pixel: the split normalised once, float32 x 3 channels
UINT8_BYTES = 4  # per pixel: uint8 image (3) and mask (1)


class DeviceSplit:
    def __init__(self, images: np.ndarray, masks: np.ndarray, device: torch.device, channels_last: bool = False,
                 normalised: bool = True):
        """normalised: keep a float copy of the split normalised once (3x the uint8 bytes), for batches that
        are not augmented pixel by pixel; without it such batches are normalised one by one (the same values)."""
        if images.shape[:3] != masks.shape:
            raise ValueError(f"images {images.shape} and masks {masks.shape} disagree")
        # The cache is memory-mapped read-only; one copy into (device) memory per trial.
        self.images = torch.from_numpy(np.array(images, copy=True)).to(device)  # uint8 N,H,W,3
        self.masks = torch.from_numpy(np.array(masks, copy=True)).to(device)  # uint8 N,H,W
        self.device = device
        self.channels_last = channels_last
        self._mean, self._inv_std = normalization_constants(device)
        self._inputs = None
        if normalised:
            # Normalised once. Channels-last batches are gathered from an N,H,W,C float copy and permuted
            # (a view with channels-last strides, no copy); otherwise from N,C,H,W. Measured on CPU: 1.8x
            # (contiguous) and 4x (channels-last) the batches per second of converting each batch.
            mean, inv_std = self._mean.view(1, 1, 1, 3), self._inv_std.view(1, 1, 1, 3)
            nhwc = self.images.to(torch.float32).sub_(mean).mul_(inv_std)
            self._inputs = nhwc if channels_last else nhwc.permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.masks.shape[1:])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Augmentation | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (normalised float images N,3,h,w; int64 masks N,h,w); the last batch may be smaller.

        h, w: the cached resolution, or augment's crop size when it crops."""
        count = len(self)
        order, draws = epoch_plan(count, shuffle, generator, augment, self.image_size)
        order = order.to(self.device)  # one copy per epoch, none per batch
        flips = draws.flips.to(self.device) if draws is not None and draws.flips is not None else None
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            batch_draws = None if draws is None else draws.rows(start, stop)
            yield make_batch(self.images, self.masks, order[start:stop], batch_draws, augment, self._mean,
                             self._inv_std, self.channels_last, self._inputs,
                             None if flips is None else flips[start:stop])

    def normalize(self, images_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        return normalize_uint8(images_uint8_nhwc, self._mean, self._inv_std, self.channels_last)


def epoch_plan(count: int, shuffle: bool, generator: torch.Generator | None, augment: Augmentation | None,
               image_size: tuple[int, int]) -> tuple[torch.Tensor, Draws | None]:
    """An epoch's order and augmentation draws (CPU tensors), drawn at its start: the same for every split kind.

    The permutation is drawn on the CPU generator so that a run is reproducible whatever the device,
    and the generator's state fits in a checkpoint."""
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    draws = draw_epoch(augment, count, image_size, generator) if augment is not None else None
    return order, draws


def make_batch(images: torch.Tensor, masks: torch.Tensor, index: torch.Tensor | None, draws: Draws | None,
               augment: Augmentation | None, mean: torch.Tensor, inv_std: torch.Tensor, channels_last: bool,
               inputs: torch.Tensor | None = None, flips: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch from uint8 images N,H,W,3 and masks N,H,W on the device: rows `index` (None: all, in order).

    inputs: the same split normalised once (DeviceSplit's float copy), gathered instead of normalising;
    flips: the batch's flips on the device, for batches that are not augmented pixel by pixel.
    New tensors only: nothing returned shares memory with `images` or `masks`."""
    image_size = tuple(masks.shape[1:])
    if augment is not None and augment.transforms_pixels(image_size):
        return augment_batch(images, masks, index, draws, augment, mean, inv_std, channels_last)
    if inputs is not None:
        # index_select, not inputs[index]: the same gather, about twice as fast on CPU
        batch = inputs.index_select(0, index)
        if channels_last:
            batch = batch.permute(0, 3, 1, 2)
    else:
        batch = normalize_uint8(images if index is None else images.index_select(0, index), mean, inv_std,
                                channels_last)
    batch_masks = (masks if index is None else masks.index_select(0, index)).long()
    if flips is not None:
        batch = torch.where(flips.view(-1, 1, 1, 1), batch.flip(-1), batch)
        batch_masks = torch.where(flips.view(-1, 1, 1), batch_masks.flip(-1), batch_masks)
    return batch, batch_masks


def normalization_constants(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean * 255, 1 / (std * 255)) as [1, 3, 1, 1] tensors: ImageNet normalisation of uint8 pixels."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    return mean, 1 / (torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255)


def normalize_uint8(images_uint8_nhwc: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor,
                    channels_last: bool = False) -> torch.Tensor:
    """uint8 N,H,W,3 pixels -> normalised float32 N,3,H,W, exactly as training and validation see them.

    `mean`, `inv_std` from normalization_constants. One conversion straight into the layout the model
    wants, then in-place arithmetic: on CPU five times faster than float() -> (x - mean) / std -> contiguous().
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images_uint8_nhwc.permute(0, 3, 1, 2).to(torch.float32, memory_format=memory_format)
    return images.sub_(mean).mul_(inv_std)
