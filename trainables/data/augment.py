"""Training augmentation on the training device, on whole batches, as mmsegmentation's pipeline does it:
random resize (RandomResize's ratio_range), random crop (RandomCrop with cat_max_ratio), horizontal flip
(RandomFlip) and photometric distortion (PhotoMetricDistortion), then the padding of its data preprocessor.

Random numbers. Every draw of an epoch is made at its start on the trial's CPU generator, in a fixed order
and amount that depend on the settings only, never on the data: the permutation (by the caller), then the
flips (exactly as before augmentation existed), the scales, the crop offsets (10 per image when
cat_max_ratio < 1, else 1) and the photometric parameters. So the generator's state after an epoch is the
same whatever happens in it, a resumed trial continues exactly, and a streamed split gets the batches of a
resident one. With every setting at its default nothing beyond the old draws is made.

Geometry, per image of H x W cached pixels, scale s, crop ch x cw, per axis (n = H or W, c = ch or cw):
the scaled length is round(n s); where it is at most c the whole axis is resized to it and the rest of the
crop is padding (bottom and right, as mmseg pads); otherwise a window of round(c / s) source pixels (at most
n) at a random offset is resized to c. A crop is thus resized from a window of the cached image, which is
what makes the fast CPU path possible (crop first, resize the window in uint8): both paths sample the same
source coordinates, (y + 0.5) * window / output - 0.5 from the window's first pixel, clamped to the window
(F.interpolate's bilinear, align_corners=False, no antialiasing). Masks take the nearest pixel by centre:
floor((y + 0.5) * window / output). The flip mirrors the filled part of the crop (mmseg flips before padding).
Padding: 255 (ignore) in masks, 0 in the normalised image, i.e. the ImageNet mean colour (mmseg pads
normalised images with 0).

cat_max_ratio: of the 10 drawn offsets the first whose crop (its nearest-resized mask, ignore excluded) has
no class above that share of its labelled pixels is taken, else the last; a crop without labelled pixels is
redrawn too (mmseg: up to 10 redraws after the first draw, the same test with "<" instead of "<=").

Photometric distortion, per image, in mmseg's order with its ranges and probabilities (each step 1/2):
brightness +U(-32, 32); contrast x U(0.5, 1.5), either second or last (1/2 each); saturation x U(0.5, 1.5);
hue + an integer in [-18, 18] of OpenCV's 180 hue units (2 degrees each). Approximations: it runs in float
on 0..255 values, clamped after each step (saturation and hue as one), without mmseg's rounding to uint8
between steps; saturation is a
blend with the grey level (luma 0.299, 0.587, 0.114, as PIL and torchvision do) instead of a scaling of
HSV's S, and hue a rotation about the grey axis instead of a shift of HSV's H (the same angle); the two are one
3x3 matrix per image. Why: in eager torch the HSV round trip took 5-10 ms per 512x512 image on this project's
2-core CPU, the matrix under 1 ms. Pixels are in RGB order (mmseg's in BGR: the same operations).

Two resampling paths: on CPU each image's window is cropped first and resized in uint8 (torch's vectorised
uint8 bilinear kernel), then finished while it is in cache, images spread over the torch threads; elsewhere
(CUDA) one grid_sample per batch in float. They draw the same numbers and sample the same coordinates; images
differ by the uint8 kernel's rounding only (at most 1 of 255).
"""

from __future__ import annotations

import concurrent.futures
import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE = 255
CROP_TRIES = 10  # offsets drawn per image when cat_max_ratio < 1
PHOTO_DRAWS = 9  # uniforms per image for the photometric distortion
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # OpenCV hue units: 180 per turn
LUMA = (0.299, 0.587, 0.114)  # the grey level of saturation (ITU-R 601, as PIL and torchvision)


@dataclass(frozen=True)
class Augmentation:
    """What the training batches of a run get; the defaults are no augmentation."""

    hflip: bool = False
    scale_range: tuple[float, float] = (1.0, 1.0)
    crop_size: tuple[int, int] | None = None  # None: the cached resolution
    cat_max_ratio: float = 1.0
    photometric: bool = False

    @classmethod
    def of(cls, config) -> Augmentation:
        """The augmentation a TrainConfig asks for."""
        return cls(hflip=config.hflip, scale_range=tuple(config.scale_range),
                   crop_size=None if config.crop_size is None else tuple(config.crop_size),
                   cat_max_ratio=config.cat_max_ratio, photometric=config.photometric)

    def crop(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return tuple(self.crop_size) if self.crop_size is not None else tuple(image_size)

    def resamples(self, image_size: tuple[int, int]) -> bool:
        """Whether images are scaled or cropped (else the geometry is the identity, flips aside)."""
        return tuple(self.scale_range) != (1.0, 1.0) or self.crop(image_size) != tuple(image_size)

    def transforms_pixels(self, image_size: tuple[int, int]) -> bool:
        """Whether batches are built from uint8 pixels (else from a split normalised once, flips aside)."""
        return self.resamples(image_size) or self.photometric


class Draws(NamedTuple):
    """An epoch's random numbers (CPU tensors, one row per position in the epoch's order)."""

    flips: torch.Tensor | None  # bool [N]
    scales: torch.Tensor | None  # float64 [N]
    offsets: torch.Tensor | None  # float64 [N, tries, 2] in [0, 1): (y, x)
    photo: torch.Tensor | None  # float64 [N, PHOTO_DRAWS] in [0, 1)

    def rows(self, start: int, stop: int) -> Draws:
        return Draws(*(None if t is None else t[start:stop] for t in self))


def draw_epoch(augment: Augmentation, count: int, image_size: tuple[int, int],
               generator: torch.Generator | None) -> Draws:
    """All of an epoch's draws, after its permutation. The flips are drawn as before augmentation existed."""
    flips = (torch.rand(count, generator=generator) < 0.5) if augment.hflip else None
    scales = offsets = photo = None
    if augment.resamples(image_size):
        low, high = augment.scale_range
        scales = low + torch.rand(count, generator=generator, dtype=torch.float64) * (high - low)
        tries = CROP_TRIES if augment.cat_max_ratio < 1 else 1
        offsets = torch.rand(count, tries, 2, generator=generator, dtype=torch.float64)
    if augment.photometric:
        photo = torch.rand(count, PHOTO_DRAWS, generator=generator, dtype=torch.float64)
    return Draws(flips, scales, offsets, photo)


class Windows(NamedTuple):
    """Per image: the source windows (one per try) and what they are resized to (CPU int64 tensors)."""

    start: torch.Tensor  # [B, tries, 2] first source row and column of each try's window
    size: torch.Tensor  # [B, 2] window height and width in source pixels
    valid: torch.Tensor  # [B, 2] rows and columns of the crop it fills; the rest is padding


def crop_windows(scales: torch.Tensor, offsets: torch.Tensor, image_size: tuple[int, int],
                 crop: tuple[int, int]) -> Windows:
    """The windows of the module docstring's geometry, from scales [B] and offset draws [B, tries, 2]."""
    length = torch.tensor(image_size, dtype=torch.float64)
    target = torch.tensor(crop, dtype=torch.float64)
    scale = scales.view(-1, 1)
    scaled = torch.floor(length * scale + 0.5).clamp(min=1)  # mmseg rounds so: int(x + 0.5)
    fits = scaled <= target
    size = torch.where(fits, length, torch.floor(target / scale + 0.5).clamp(min=1).minimum(length)).long()
    valid = torch.where(fits, scaled, target).long()
    margin = length.long() - size  # 0 where the whole axis is used
    start = torch.floor(offsets * (margin.unsqueeze(1) + 1)).long().minimum(margin.unsqueeze(1))
    return Windows(start, size, valid)


def identity_windows(count: int, image_size: tuple[int, int]) -> Windows:
    size = torch.tensor(image_size, dtype=torch.int64).expand(count, 2)
    return Windows(torch.zeros(count, 1, 2, dtype=torch.int64), size, size)


def nearest_index(start: torch.Tensor, size: torch.Tensor, valid: torch.Tensor, length: int,
                  flips: torch.Tensor | None = None) -> torch.Tensor:
    """Source index [B, length] of each output row (or column) by nearest centre; padding gets `start`."""
    position = torch.arange(length, device=start.device).view(1, -1)
    valid, size, start = valid.view(-1, 1), size.view(-1, 1), start.view(-1, 1)
    inside = position < valid
    if flips is not None:
        position = torch.where(flips.view(-1, 1), valid - 1 - position, position).clamp(min=0)
    index = ((2 * position + 1) * size).div(2 * valid, rounding_mode="floor").minimum(size - 1)
    return start + torch.where(inside, index, 0)


def bilinear_coordinates(start: torch.Tensor, size: torch.Tensor, valid: torch.Tensor, length: int,
                         flips: torch.Tensor | None = None) -> torch.Tensor:
    """Source coordinate [B, length] (float, pixel units) of each output row (or column), as F.interpolate."""
    position = torch.arange(length, device=start.device, dtype=torch.float32).view(1, -1)
    valid, size, start = valid.view(-1, 1), size.view(-1, 1), start.view(-1, 1)
    if flips is not None:
        position = torch.where(flips.view(-1, 1), valid - 1 - position, position)
    source = ((position + 0.5) * (size / valid).float() - 0.5).clamp(min=0).minimum((size - 1).float())
    return start + source


def choose_tries(masks: torch.Tensor, index: torch.Tensor | None, windows: Windows, crop: tuple[int, int],
                 ratio: float, lazily: bool) -> torch.Tensor:
    """Per image the first try whose crop has no class above `ratio` of its labelled pixels, else the last.

    lazily: look at a try only where the ones before it failed (CPU: most first tries pass); else every try
    of every image at once with no host synchronisation (GPU). Both give the same answer.
    """
    count, tries = windows.start.shape[:2]
    device = masks.device
    if tries == 1:
        return torch.zeros(count, dtype=torch.int64, device=device)
    rows_of = [nearest_index(windows.start[:, t, 0], windows.size[:, 0], windows.valid[:, 0], crop[0])
               for t in range(tries)]
    cols_of = [nearest_index(windows.start[:, t, 1], windows.size[:, 1], windows.valid[:, 1], crop[1])
               for t in range(tries)]
    if lazily:
        chosen = [tries - 1] * count
        valid = windows.valid.tolist()
        rows = range(count) if index is None else index.tolist()

        def check(b: int) -> None:
            source, (height, width) = masks[rows[b]], valid[b]
            for t in range(tries):
                crop_mask = source.index_select(0, rows_of[t][b, :height]).index_select(1, cols_of[t][b, :width])
                counts = torch.bincount(crop_mask.flatten(), minlength=IGNORE + 1)[:IGNORE]
                total = int(counts.sum())
                if total and int(counts.max()) <= ratio * total:
                    chosen[b] = t
                    return

        _each_image(check, list(range(count)))
        return torch.tensor(chosen, device=device)
    source = masks if index is None else masks.index_select(0, index)
    batch = torch.arange(count, device=device)
    valid = windows.valid.to(device)
    inside_rows = torch.arange(crop[0], device=device).view(1, -1) < valid[:, :1]
    inside_cols = torch.arange(crop[1], device=device).view(1, -1) < valid[:, 1:]
    inside = inside_rows.unsqueeze(2) & inside_cols.unsqueeze(1)
    bins = (batch * (IGNORE + 1)).view(-1, 1, 1)
    passed = []
    for t in range(tries):
        rows, cols = rows_of[t].to(device), cols_of[t].to(device)
        crop_mask = source[batch.view(-1, 1, 1), rows.unsqueeze(2), cols.unsqueeze(1)]
        crop_mask = torch.where(inside, crop_mask, IGNORE)
        counts = torch.bincount((bins + crop_mask.long()).flatten(), minlength=count * (IGNORE + 1))
        counts = counts.view(count, IGNORE + 1)[:, :IGNORE]
        total = counts.sum(1)
        passed.append((total > 0) & (counts.amax(1) <= ratio * total))
    passed = torch.stack(passed, 1)
    first = passed.int().argmax(1)  # the first maximum: the first try that passed
    return torch.where(passed.any(1), first, tries - 1)


def chosen_windows(windows: Windows, tries: torch.Tensor) -> Windows:
    """The windows of the chosen tries (start [B, 2]), on the tries' device."""
    device = tries.device
    start = windows.start.to(device)
    start = start[torch.arange(start.shape[0], device=device), tries]
    return Windows(start, windows.size.to(device), windows.valid.to(device))


# -- photometric distortion ----------------------------------------------------------------------------------
class Photometric(NamedTuple):
    """Per image: which steps apply (rows of the batch) and their parameters (CPU tensors)."""

    brightness: list[int]
    beta: torch.Tensor  # float32 [B]: added
    contrast_first: list[int]
    contrast_last: list[int]
    alpha: torch.Tensor  # float32 [B]: multiplied
    colour: list[int]  # saturation or hue or both
    matrix: torch.Tensor  # float32 [B, 3, 3]: hue rotation x saturation, the identity where neither applies


def photometric_parameters(photo: torch.Tensor) -> Photometric:
    """mmseg's draws from 9 uniforms per image: (apply, value) for each step and the contrast's place."""
    u = photo.to(torch.float64)
    applies = (u[:, [0, 3, 5, 7]] < 0.5).tolist()
    contrast_first = (u[:, 2] >= 0.5).tolist()  # mmseg: mode 1 puts the contrast second
    which = [[b for b, a in enumerate(applies) if a[k]] for k in range(4)]
    saturation = SATURATION_RANGE[0] + u[:, 6] * (SATURATION_RANGE[1] - SATURATION_RANGE[0])
    saturation = torch.where(u[:, 5] < 0.5, saturation, 1.0)
    hue_units = torch.where(u[:, 7] < 0.5, torch.floor(u[:, 8] * (2 * HUE_DELTA + 1)) - HUE_DELTA, 0.0)
    matrix = hue_matrix(hue_units * (torch.pi / 90)) @ saturation_matrix(saturation)
    return Photometric(
        brightness=which[0],
        beta=((u[:, 1] * 2 - 1) * BRIGHTNESS_DELTA).float(),
        contrast_first=[b for b in which[1] if contrast_first[b]],
        contrast_last=[b for b in which[1] if not contrast_first[b]],
        alpha=(CONTRAST_RANGE[0] + u[:, 4] * (CONTRAST_RANGE[1] - CONTRAST_RANGE[0])).float(),
        colour=sorted(set(which[2]) | set(which[3])),
        matrix=matrix.float(),
    )


def saturation_matrix(alpha: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3]: each pixel moved from its grey level (luma 0.299, 0.587, 0.114) by alpha (torchvision's and
    PIL's saturation); alpha 1 is the identity."""
    luma = torch.tensor(LUMA, dtype=torch.float64)
    alpha = alpha.to(torch.float64).view(-1, 1, 1)
    return alpha * torch.eye(3, dtype=torch.float64) + (1 - alpha) * luma.view(1, 1, 3)


def hue_matrix(angle: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3]: rotations by `angle` (radians) about the grey axis, red towards yellow for angle > 0."""
    cos, sin = torch.cos(angle.to(torch.float64)), torch.sin(angle.to(torch.float64))
    k, q = (1 - cos) / 3, sin / 3**0.5
    rows = [[cos + k, k - q, k + q], [k + q, cos + k, k - q], [k - q, k + q, cos + k]]
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


def photometric_(images: torch.Tensor, params: Photometric, offset: int = 0) -> None:
    """Distort float RGB images [B, 3, h, w] with values in 0..255 in place; image b uses params row offset + b."""
    count = images.shape[0]

    def apply(rows: list[int], step, values: torch.Tensor) -> None:
        rows = [r - offset for r in rows if offset <= r < offset + count]
        if not rows:
            return
        value = values[[r + offset for r in rows]].to(images.device)
        if len(rows) == count:
            images.copy_(step(images, value))
            return
        index = torch.tensor(rows, device=images.device)
        images.index_copy_(0, index, step(images.index_select(0, index), value))

    def scalar(values: torch.Tensor) -> torch.Tensor:
        return values.view(-1, 1, 1, 1)

    apply(params.brightness, lambda x, beta: x.add_(scalar(beta)).clamp_(0, 255), params.beta)
    apply(params.contrast_first, lambda x, alpha: x.mul_(scalar(alpha)).clamp_(0, 255), params.alpha)
    apply(params.colour, _mix_channels, params.matrix)
    apply(params.contrast_last, lambda x, alpha: x.mul_(scalar(alpha)).clamp_(0, 255), params.alpha)


def _mix_channels(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    # One small matrix product per image over its pixels (channels-last rows: the layout the batch has).
    count, _, height, width = images.shape
    pixels = images.permute(0, 2, 3, 1).reshape(count, height * width, 3)
    mixed = torch.bmm(pixels, matrix.transpose(1, 2)).clamp_(0, 255)
    return mixed.view(count, height, width, 3).permute(0, 3, 1, 2)


# -- the batch ------------------------------------------------------------------------------------------------
def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    index: torch.Tensor | None,
    draws: Draws,
    augment: Augmentation,
    mean: torch.Tensor,
    inv_std: torch.Tensor,
    channels_last: bool = False,
    batched: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented batch: (normalised float32 [B, 3, ch, cw], int64 masks [B, ch, cw], 255 = padding/ignore).

    images uint8 [N, H, W, 3] and masks uint8 [N, H, W] on the training device; the batch is rows `index`
    (None: all N in order); `draws` its rows of the epoch's draws; mean, inv_std from
    device.normalization_constants. batched: one grid_sample per batch (default: on any device but the CPU).
    """
    image_size = tuple(masks.shape[1:])
    count = masks.shape[0] if index is None else index.shape[0]
    batched = images.device.type != "cpu" if batched is None else batched
    crop = augment.crop(image_size)
    resample = augment.resamples(image_size)
    if resample:
        windows = crop_windows(draws.scales, draws.offsets, image_size, crop)
        tries = choose_tries(masks, index, windows, crop, augment.cat_max_ratio, lazily=not batched)
    else:
        windows = identity_windows(count, image_size)
        tries = torch.zeros(count, dtype=torch.int64, device=images.device if batched else "cpu")
    windows = chosen_windows(windows, tries if batched else tries.cpu())
    flips = draws.flips if draws.flips is not None else torch.zeros(count, dtype=torch.bool)
    photo = photometric_parameters(draws.photo) if draws.photo is not None else None
    build = _batched if batched else _per_image
    return build(images, masks, index, windows, flips, photo, crop, resample, mean, inv_std, channels_last)


def _per_image(images, masks, index, windows, flips, photo, crop, resample, mean, inv_std, channels_last):
    # Crop the window first, resize it in uint8, and finish each image while it is in the CPU's cache.
    # The work is on channels-last rows (height, width x 3): the normalisation's per-channel constants then
    # repeat along contiguous memory (4x faster than broadcasting [3, 1, 1] over channels-last pixels).
    count = windows.start.shape[0]
    out = torch.empty(count, *crop, 3, dtype=torch.float32)  # N,H,W,C memory: channels-last N,C,H,W
    out_masks = torch.empty((count, *crop), dtype=torch.int64)
    rows = nearest_index(windows.start[:, 0], windows.size[:, 0], windows.valid[:, 0], crop[0])
    cols = nearest_index(windows.start[:, 1], windows.size[:, 1], windows.valid[:, 1], crop[1], flips)
    mean_row = mean.view(1, 3).repeat(crop[1], 1).view(-1)
    inv_std_row = inv_std.view(1, 3).repeat(crop[1], 1).view(-1)
    rows_of = range(count) if index is None else index.tolist()
    jobs = list(enumerate(zip(rows_of, windows.start.tolist(), windows.size.tolist(), windows.valid.tolist(),
                              flips.tolist())))

    def one(job) -> None:
        b, (i, (y, x), (h, w), (vh, vw), flip) = job
        source = images[i, y : y + h, x : x + w]
        if resample and (h, w) != (vh, vw):
            source = source.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
            source = F.interpolate(source, size=(vh, vw), mode="bilinear", align_corners=False, antialias=False)
            source = source[0].permute(1, 2, 0)
        if flip:
            source = source.flip(1)
        region = out[b, :vh, :vw]
        region.copy_(source)
        if photo is not None:
            photometric_(region.permute(2, 0, 1).unsqueeze(0), photo, offset=b)
        region = region.view(vh, vw * 3)
        region.sub_(mean_row[: vw * 3]).mul_(inv_std_row[: vw * 3])
        if vh < crop[0]:
            out[b, vh:].zero_()
            out_masks[b, vh:].fill_(IGNORE)
        if vw < crop[1]:
            out[b, :vh, vw:].zero_()
            out_masks[b, :vh, vw:].fill_(IGNORE)
        out_masks[b, :vh, :vw] = masks[i].index_select(0, rows[b, :vh]).index_select(1, cols[b, :vw])

    _each_image(one, jobs)
    out = out.permute(0, 3, 1, 2)
    return (out if channels_last else out.contiguous()), out_masks


# Images are independent: with N torch threads, N Python threads each finish whole images with single-threaded
# operations. Measured on a 2-core machine shared with other work: several times the images/s of the same
# operations run one image at a time on 2 intra-op threads, whose every operation waits for both threads.
_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


@functools.cache
def openmp_backend() -> bool:
    """Whether torch's intra-op threads are OpenMP's, whose count can change between operations (the native
    backend's is fixed once work started: there each image runs on the caller's threads instead)."""
    return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def _each_image(work, jobs: list) -> None:
    threads = min(torch.get_num_threads(), len(jobs))
    if threads <= 1 or not openmp_backend():
        for job in jobs:
            work(job)
        return
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="segstudy-augment")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # for these operations only: the caller's setting is restored below
    try:
        for done in pool.map(work, jobs):
            del done
    finally:
        torch.set_num_threads(previous)


def _batched(images, masks, index, windows, flips, photo, crop, resample, mean, inv_std, channels_last):
    # One grid_sample per batch, in float, from the batch's source images.
    device = images.device
    if index is not None:
        images, masks = images.index_select(0, index), masks.index_select(0, index)
    count, height, width = masks.shape
    flips = flips.to(device)
    start, size, valid = windows
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    source = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.channels_last)
    if not resample:  # the pixels themselves
        out = torch.where(flips.view(-1, 1, 1, 1), source.flip(-1), source)
    else:
        ys = bilinear_coordinates(start[:, 0], size[:, 0], valid[:, 0], crop[0])
        xs = bilinear_coordinates(start[:, 1], size[:, 1], valid[:, 1], crop[1], flips)
        grid = torch.stack(torch.broadcast_tensors(((2 * xs + 1) / width - 1).unsqueeze(1),
                                                   ((2 * ys + 1) / height - 1).unsqueeze(2)), dim=-1)
        out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.contiguous(memory_format=memory_format)
    if photo is not None:
        photometric_(out, photo)
    out.sub_(mean).mul_(inv_std)
    rows = nearest_index(start[:, 0], size[:, 0], valid[:, 0], crop[0])
    cols = nearest_index(start[:, 1], size[:, 1], valid[:, 1], crop[1], flips)
    batch = torch.arange(count, device=device).view(-1, 1, 1)
    out_masks = masks[batch, rows.unsqueeze(2), cols.unsqueeze(1)].long()
    inside = ((torch.arange(crop[0], device=device).view(1, -1, 1) < valid[:, :1].unsqueeze(2))
              & (torch.arange(crop[1], device=device).view(1, 1, -1) < valid[:, 1:].unsqueeze(1)))
    out.masked_fill_(~inside.unsqueeze(1), 0)  # padding: 0 after normalisation, the mean colour
    out_masks.masked_fill_(~inside, IGNORE)
    return out, out_masks
