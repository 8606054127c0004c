"""Augmentation on the training device (trainables/data/augment.py), the batches of a split with and without it,
and training with it: resumed exactly, streamed or resident alike."""

import colorsys
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.checkpoint import load_training_state, save_checkpoint
from trainables.config import TrainConfig
from trainables.data import load_split, synth_dataset
from trainables.data.augment import (
    CROP_TRIES,
    Augmentation,
    Draws,
    augment_batch,
    choose_tries,
    crop_windows,
    draw_epoch,
    hue_matrix,
    openmp_backend,
    photometric_,
    photometric_parameters,
    saturation_matrix,
)
from trainables.data.device import IMAGENET_MEAN, IMAGENET_STD, DeviceSplit, normalization_constants
from trainables.data.stream import StreamedSplit
from trainables.engine import fit, load_device_split
from trainables.errors import ConfigError

MEAN, INV_STD = normalization_constants("cpu")
FULL = Augmentation(hflip=True, scale_range=(0.5, 2.0), crop_size=(24, 28), cat_max_ratio=0.75, photometric=True)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """A real cache of generated pets: 8 train and 4 val pictures at 40x48."""
    root = tmp_path_factory.mktemp("pets-small")
    synth_dataset("pets", root, train=8, val=4, seed=1)
    cache = root / "cache"
    return root, cache, load_split("pets", root, "trainval", (40, 48), cache, progress=False)


def noise(count=6, size=(30, 40), classes=4, seed=0):
    """Random pixels (any misplaced sample shows) and masks of a few classes with some ignore."""
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (count, *size, 3), dtype=np.uint8))
    masks = rng.integers(0, classes, (count, *size), dtype=np.uint8)
    masks[:, :2] = 255
    return images, torch.from_numpy(masks)


def pixels(normalised: torch.Tensor) -> torch.Tensor:
    """Normalised images back to 0..255 values."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    return normalised * (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255) + mean


def todays_batches(images, masks, batch_size, shuffle, generator, hflip, channels_last):
    """DeviceSplit.batches as it was before augmentation existed (commit 4bed0d7), for the seed protocol."""
    images, masks = torch.from_numpy(np.array(images)), torch.from_numpy(np.array(masks))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 1, 3) * 255
    inv_std = 1 / (torch.tensor(IMAGENET_STD).view(1, 1, 1, 3) * 255)
    nhwc = images.to(torch.float32).sub_(mean).mul_(inv_std)
    inputs = nhwc if channels_last else nhwc.permute(0, 3, 1, 2).contiguous()
    count = len(images)
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    flips = (torch.rand(count, generator=generator) < 0.5) if hflip else None
    for start in range(0, count, batch_size):
        index = order[start : start + batch_size]
        batch = inputs.index_select(0, index)
        if channels_last:
            batch = batch.permute(0, 3, 1, 2)
        batch_masks = masks.index_select(0, index).long()
        if flips is not None:
            flip = flips[start : start + batch_size]
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
            batch_masks = torch.where(flip.view(-1, 1, 1), batch_masks.flip(-1), batch_masks)
        yield batch, batch_masks


def assert_same_batches(first, second):
    first, second = list(first), list(second)
    assert len(first) == len(second)
    for (images, masks), (other_images, other_masks) in zip(first, second):
        assert images.shape == other_images.shape and images.stride() == other_images.stride()
        assert torch.equal(images, other_images) and torch.equal(masks, other_masks)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("hflip", [False, True])
def test_default_settings_give_the_batches_of_before(small_cache, channels_last, hflip):
    """The seed protocol: with every augmentation setting at its default (hflip either way), resident and
    streamed splits give bit for bit the batches, and leave the generator in the state, of the old code."""
    _, _, arrays = small_cache
    default = Augmentation.of(TrainConfig(hflip=hflip))
    assert not default.transforms_pixels((40, 48))
    splits = [DeviceSplit(arrays.images, arrays.masks, torch.device("cpu"), channels_last),
              DeviceSplit(arrays.images, arrays.masks, torch.device("cpu"), channels_last, normalised=False),
              StreamedSplit(arrays, torch.device("cpu"), channels_last)]
    for split in splits:
        for shuffle in (True, False):
            generator, reference = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
            for _ in range(2):  # two epochs: the second starts where the first left the generator
                assert_same_batches(split.batches(3, shuffle=shuffle, generator=generator, augment=default),
                                    todays_batches(arrays.images, arrays.masks, 3, shuffle, reference, hflip,
                                                   channels_last))
            assert torch.equal(generator.get_state(), reference.get_state())


def test_streamed_batches_equal_resident_ones_with_augmentation(small_cache):
    _, _, arrays = small_cache
    resident = DeviceSplit(arrays.images, arrays.masks, torch.device("cpu"), True, normalised=False)
    streamed = StreamedSplit(arrays, torch.device("cpu"), True)
    first, second = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(3):
        assert_same_batches(resident.batches(3, shuffle=True, generator=first, augment=FULL),
                            streamed.batches(3, shuffle=True, generator=second, augment=FULL))
    assert torch.equal(first.get_state(), second.get_state())
    # the draws do not depend on the data: the generator moves by the same amount for any split of that size
    third = torch.Generator().manual_seed(2)
    for _ in range(3):
        torch.randperm(8, generator=third)
        draw_epoch(FULL, 8, (40, 48), third)
    assert torch.equal(first.get_state(), third.get_state())


def test_an_abandoned_stream_stops_its_reader(small_cache):
    import threading

    _, _, arrays = small_cache
    streamed = StreamedSplit(arrays, torch.device("cpu"))
    batches = streamed.batches(2, shuffle=True, generator=torch.Generator().manual_seed(0))
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name == "segstudy-stream"]
    assert sum(len(images) for images, _ in streamed.batches(3)) == 8  # and the split streams again


@pytest.mark.parametrize("augment", [
    Augmentation(scale_range=(0.5, 2.0), crop_size=(24, 28)),
    Augmentation(hflip=True, scale_range=(0.7, 1.6), crop_size=(32, 32)),
    Augmentation(hflip=True, scale_range=(0.5, 2.0), crop_size=(24, 28), cat_max_ratio=0.5),
])
def test_the_cpu_and_the_batched_path_sample_the_same_places(augment):
    """The per-image uint8 path (CPU) and one grid_sample per batch (GPU): the same masks, images within the
    uint8 rounding of the first, on noise, where a sample off by a fraction of a pixel shows."""
    images, masks = noise()
    draws = draw_epoch(augment, 6, (30, 40), torch.Generator().manual_seed(1))
    index = torch.tensor([4, 0, 5, 2, 3, 1])
    per_image = augment_batch(images, masks, index, draws, augment, MEAN, INV_STD, True, batched=False)
    batched = augment_batch(images, masks, index, draws, augment, MEAN, INV_STD, False, batched=True)
    assert per_image[0].shape == batched[0].shape == (6, 3, *augment.crop((30, 40)))
    assert torch.equal(per_image[1], batched[1])
    difference = (pixels(per_image[0]) - pixels(batched[0])).abs()
    assert difference.max() <= 1.01 and difference.mean() < 0.35  # uint8 rounding (a tenth of a pixel off: ~8)
    assert set(per_image[1].unique().tolist()) <= {0, 1, 2, 3, 255}  # nearest: no new labels
    assert per_image[0].is_contiguous(memory_format=torch.channels_last) and batched[0].is_contiguous()


def test_images_spread_over_the_torch_threads_as_the_backend_allows():
    """The adapter to torch's parallel_info text: this project's torch builds use OpenMP (fails on a change)."""
    assert openmp_backend()
    images, masks = noise(count=8)
    draws = draw_epoch(FULL, 8, (30, 40), torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    try:
        batches = []
        for count in (1, 3):
            torch.set_num_threads(count)
            batches.append(augment_batch(images, masks, None, draws, FULL, MEAN, INV_STD, batched=False))
            assert torch.get_num_threads() == count  # the caller's setting is back
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])


def test_the_geometry_scales_crops_pads_and_flips():
    images, masks = noise(count=1, size=(20, 30))
    augment = Augmentation(scale_range=(0.5, 0.5), crop_size=(16, 24))
    draws = draw_epoch(augment, 1, (20, 30), torch.Generator())
    batch, batch_masks = augment_batch(images, masks, None, draws, augment, MEAN, INV_STD, batched=False)
    # half size: 10 x 15 pixels of the whole image, the rest of the 16 x 24 crop padding
    assert (batch_masks[0, 10:] == 255).all() and (batch_masks[0, :, 15:] == 255).all()
    assert (batch[0, :, 10:] == 0).all() and (batch[0, :, :, 15:] == 0).all()  # the mean colour
    expected = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(10, 15), mode="bilinear", align_corners=False)
    assert (pixels(batch)[0, :, :10, :15] - expected[0]).abs().max() <= 1.01  # the uint8 kernel: within 1
    assert torch.equal(batch_masks[0, :10, :15], masks[0, 1::2, 1::2].long())  # nearest by centre
    # flipped: the filled part mirrored, the padding where it was
    flipped = draws._replace(flips=torch.tensor([True]))
    mirror, mirror_masks = augment_batch(images, masks, None, flipped, augment, MEAN, INV_STD, batched=False)
    assert torch.equal(mirror[0, :, :10, :15], batch[0, :, :10, :15].flip(-1))
    assert torch.equal(mirror_masks[0, :10, :15], batch_masks[0, :10, :15].flip(-1))
    assert (mirror_masks[0, :, 15:] == 255).all()
    # scale 2, crop smaller than the image: a window of crop / 2 source pixels at the drawn offset
    windows = crop_windows(torch.tensor([2.0]), torch.tensor([[[0.999, 0.0]]], dtype=torch.float64), (20, 30),
                           (16, 24))
    assert windows.size.tolist() == [[8, 12]] and windows.valid.tolist() == [[16, 24]]
    assert windows.start.tolist() == [[[12, 0]]]  # the last of the 13 rows a window of 8 may start at
    # scale 1 and the crop the image: the identity, padding nowhere
    same = crop_windows(torch.tensor([1.0]), torch.tensor([[[0.7, 0.3]]], dtype=torch.float64), (20, 30), (20, 30))
    assert same.start.tolist() == [[[0, 0]]] and same.size.tolist() == same.valid.tolist() == [[20, 30]]


def first_passing_try(mask: np.ndarray, windows, b: int, crop, ratio: float) -> int:
    """The reference: the crop of each try by nearest centre, counted with numpy."""
    (height, width), (vh, vw) = windows.size[b].tolist(), windows.valid[b].tolist()
    for t in range(windows.start.shape[1]):
        y, x = windows.start[b, t].tolist()
        rows = y + np.minimum((2 * np.arange(vh) + 1) * height // (2 * vh), height - 1)
        cols = x + np.minimum((2 * np.arange(vw) + 1) * width // (2 * vw), width - 1)
        labels = mask[np.ix_(rows, cols)]
        counts = np.bincount(labels[labels != 255], minlength=256)
        if counts.sum() and counts.max() <= ratio * counts.sum():
            return t
    return windows.start.shape[1] - 1


def test_cat_max_ratio_takes_the_first_crop_no_class_dominates():
    # Masks of one large class with a small other one in a corner: many crops see one class only.
    masks = torch.zeros(12, 40, 40, dtype=torch.uint8)
    masks[:, :12, :12] = 1
    masks[1:3] = 255  # no labelled pixel at all: every try fails, the last is kept
    draws = draw_epoch(Augmentation(scale_range=(1.0, 2.0), crop_size=(20, 20), cat_max_ratio=0.9), 12, (40, 40),
                       torch.Generator().manual_seed(3))
    assert draws.offsets.shape == (12, CROP_TRIES, 2)
    windows = crop_windows(draws.scales, draws.offsets, (40, 40), (20, 20))
    lazily = choose_tries(masks, None, windows, (20, 20), 0.9, lazily=True)
    at_once = choose_tries(masks, None, windows, (20, 20), 0.9, lazily=False)
    assert torch.equal(lazily, at_once)
    expected = [first_passing_try(masks[b].numpy(), windows, b, (20, 20), 0.9) for b in range(12)]
    assert lazily.tolist() == expected
    assert lazily[1] == lazily[2] == CROP_TRIES - 1 and len(set(expected)) > 2  # redraws happened


def reference_photometric(image: np.ndarray, u: np.ndarray) -> np.ndarray:
    """mmseg's PhotoMetricDistortion.transform on one RGB float image [h, w, 3] from our 9 uniforms, with the
    documented approximations: float throughout, saturation as a blend with the luma grey level and hue as a
    rotation about the grey axis (Rodrigues' formula), the two clamped once."""
    image = image.astype(np.float64)
    if u[0] < 0.5:
        image = np.clip(image + (u[1] * 2 - 1) * 32, 0, 255)
    contrast_first = u[2] >= 0.5
    if contrast_first and u[3] < 0.5:
        image = np.clip(image * (0.5 + u[4]), 0, 255)
    if u[5] < 0.5 or u[7] < 0.5:
        if u[5] < 0.5:
            grey = image @ np.array([0.299, 0.587, 0.114])
            image = grey[..., None] + (0.5 + u[6]) * (image - grey[..., None])
        if u[7] < 0.5:
            angle = np.radians((np.floor(u[8] * 37) - 18) * 2)  # OpenCV hue units of 2 degrees
            axis = np.ones(3) / np.sqrt(3)
            cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
            image = image @ rotation.T
        image = np.clip(image, 0, 255)
    if not contrast_first and u[3] < 0.5:
        image = np.clip(image * (0.5 + u[4]), 0, 255)
    return image


def test_photometric_distortion_is_mmsegs_with_the_documented_approximations():
    images, _ = noise(count=24, size=(6, 7), seed=4)
    photo = torch.rand(24, 9, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    photo[:4, [0, 3, 5, 7]] = 0.1  # a few images with every step, either contrast place
    photo[:2, 2], photo[2:4, 2] = 0.9, 0.1
    for layout in (torch.contiguous_format, torch.channels_last):
        batch = images.permute(0, 3, 1, 2).float().contiguous(memory_format=layout)
        photometric_(batch, photometric_parameters(photo))
        for b in range(24):
            expected = reference_photometric(images[b].numpy(), photo[b].numpy())
            assert np.abs(batch[b].permute(1, 2, 0).numpy() - expected).max() < 1e-3, b
    untouched = torch.full((2, 9), 0.9, dtype=torch.float64)  # no step applies
    batch = images[:2].permute(0, 3, 1, 2).float()
    photometric_(batch, photometric_parameters(untouched))
    assert torch.equal(batch, images[:2].permute(0, 3, 1, 2).float())


def test_hue_rotation_and_saturation_matrices():
    red, grey = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.full((3,), 0.4, dtype=torch.float64)
    turn = hue_matrix(torch.tensor([2 * np.pi / 3, 0.3], dtype=torch.float64))
    assert torch.allclose(turn[0] @ red, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(turn[1] @ grey, grey) and torch.allclose(turn[1] @ hue_matrix(torch.tensor([-0.3]))[0],
                                                                   torch.eye(3, dtype=torch.float64))
    # a small angle moves a colour's HSV hue by about that angle (hexagonal and circular hue differ a little)
    for colour in ([0.8, 0.3, 0.2], [0.2, 0.6, 0.4], [0.3, 0.35, 0.9]):
        turned = (hue_matrix(torch.tensor([np.radians(20)]))[0] @ torch.tensor(colour, dtype=torch.float64)).tolist()
        moved = (colorsys.rgb_to_hsv(*turned)[0] - colorsys.rgb_to_hsv(*colour)[0]) * 360
        assert 12 < moved < 28, (colour, moved)
    assert torch.allclose(saturation_matrix(torch.tensor([0.0]))[0] @ red,
                          torch.tensor([0.299] * 3, dtype=torch.float64))
    assert torch.equal(saturation_matrix(torch.tensor([1.0]))[0], torch.eye(3, dtype=torch.float64))


def test_val_stride_must_not_leave_gaps():
    with pytest.raises(ConfigError, match="val_stride"):
        TrainConfig(image_size=(64, 64), val_crop=(32, 32), val_stride=(40, 16))
    assert TrainConfig(image_size=(64, 64), val_crop=(32, 32), val_stride=(32, 8)).val_stride == (32, 8)


def augmented_config(root, cache, **changes) -> TrainConfig:
    values = dict(arch="segformer_b0", dataset="pets", data_root=str(root), cache_dir=str(cache),
                  image_size=(176, 192), epochs=4, batch_size=3, val_interval=2, device="cpu", seed=7,
                  num_threads=1, hflip=True, scale_range=(0.5, 2.0), crop_size=(32, 32), cat_max_ratio=0.75,
                  photometric=True, val_crop=(64, 64))
    values.update(changes)
    return TrainConfig(**values)


def without_timing(records: list[dict]) -> str:
    """The records as JSON text (NaN equal to NaN, floats exact) without the wall-clock figures."""
    return json.dumps([{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")}
                       for r in records])


def test_an_augmented_run_resumed_equals_the_uninterrupted_one(small_cache, tmp_path):
    """Killed after epoch 2 and resumed from its training state, resident or streamed, bit for bit."""
    root, cache, _ = small_cache
    config = augmented_config(root, cache)
    # At 176x192 the 8 (4) pictures take over 1 MiB as uint8 (with the float copy): data_memory_mib=1 streams both
    for split, augmented in (("trainval", True), ("test", False)):
        assert isinstance(load_device_split(config, split, torch.device("cpu"), None, augmented=augmented),
                          DeviceSplit)
        assert isinstance(load_device_split(config.replace(data_memory_mib=1), split, torch.device("cpu"), None,
                                            augmented=augmented), StreamedSplit)
    kept, final = tmp_path / "epoch2", {}

    def keep(record, snapshot):
        if record["epoch"] == 2:
            kept.mkdir()
            save_checkpoint(kept, snapshot)
        if snapshot.final:
            final.update({k: v.clone() for k, v in snapshot.weights().items()})

    uninterrupted = fit(config, on_epoch_end=keep)
    for resumed_config in (config, config.replace(data_memory_mib=1)):  # the second streams both splits
        weights = {}

        def keep_final(record, snapshot, weights=weights):
            if snapshot.final:
                weights.update(snapshot.weights())

        resumed = fit(resumed_config, resume_state=load_training_state(kept), on_epoch_end=keep_final)
        assert without_timing(resumed.records) == without_timing(uninterrupted.records)
        assert weights.keys() == final.keys() and all(torch.equal(weights[k], final[k]) for k in final)
    assert uninterrupted.records[-1]["val_miou"] is not None


def test_augmentation_changes_the_batches_it_should(small_cache):
    """Each setting on its own changes the batches (a setting wired to nothing would not)."""
    _, _, arrays = small_cache
    split = DeviceSplit(arrays.images, arrays.masks, torch.device("cpu"), normalised=False)

    def first_batch(augment):
        return next(split.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0), augment=augment))

    plain = first_batch(Augmentation())
    for augment in (Augmentation(scale_range=(0.8, 1.25)), Augmentation(crop_size=(32, 40)),
                    Augmentation(photometric=True), Augmentation(hflip=True)):
        images, masks = first_batch(augment)
        assert images.shape != plain[0].shape or not torch.equal(images, plain[0]), augment
    assert isinstance(draw_epoch(Augmentation(), 4, (8, 8), None), Draws)
