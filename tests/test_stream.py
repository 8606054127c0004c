"""Splits over the memory budget stream from the cache files (trainables/data/stream.py)."""

import ctypes
import ctypes.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.data import load_split
from trainables.data.device import IMAGENET_STD, DeviceSplit
from trainables.data.stream import StreamedSplit, memory_budget, open_split, resident_bytes
from trainables.engine import fit, load_device_split
from trainables.errors import DatasetError


def tiny_net(num_classes: int) -> nn.Module:
    """A model factory (arch "tests.test_stream:tiny_net"): cheap, so the test times the input path's memory."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))


def test_the_budget_decides_between_resident_and_streamed(pets_root, tmp_path):
    cpu = torch.device("cpu")
    assert memory_budget(cpu, 3) == 3 * 2**20
    assert memory_budget(cpu, None) == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    arrays = load_split("pets", pets_root, "test", (32, 32), tmp_path / "cache", progress=False)
    assert resident_bytes(arrays.masks.shape, normalised=True) == 24 * 32 * 32 * 16
    assert resident_bytes(arrays.masks.shape, normalised=False) == 24 * 32 * 32 * 4
    needed = resident_bytes(arrays.masks.shape, normalised=True)
    assert isinstance(open_split(arrays, cpu, False, needed), DeviceSplit)
    assert isinstance(open_split(arrays, cpu, False, needed - 1), StreamedSplit)
    assert isinstance(open_split(arrays, cpu, False, needed - 1, normalised=False), DeviceSplit)  # no float copy


def test_a_cache_cut_short_while_streaming_is_named(pets_root, tmp_path):
    arrays = load_split("pets", pets_root, "test", (32, 32), tmp_path / "cache", progress=False)
    split = StreamedSplit(arrays, torch.device("cpu"))
    images = Path(arrays.folder) / "images.npy"
    os.truncate(images, images.stat().st_size - 5000)
    with pytest.raises(DatasetError, match=r"images\.npy ended early"):
        list(split.batches(8))


def test_streaming_reads_the_first_rows_of_a_larger_cache(pets_root, tmp_path):
    whole = load_split("pets", pets_root, "trainval", (32, 32), tmp_path / "cache", progress=False)
    first = load_split("pets", pets_root, "trainval", (32, 32), tmp_path / "cache", max_samples=10, progress=False)
    assert first.folder == whole.folder  # the first 10 rows of the full split's cache
    images, masks = next(StreamedSplit(first, torch.device("cpu")).batches(64))
    resident = next(DeviceSplit(first.images, first.masks, torch.device("cpu")).batches(64))
    assert images.shape[0] == 10 and torch.equal(images, resident[0]) and torch.equal(masks, resident[1])


def test_a_streamed_split_counts_its_pixels_as_a_resident_one(pets_root, tmp_path):
    from trainables.engine import class_pixel_counts

    arrays = load_split("pets", pets_root, "trainval", (32, 32), tmp_path / "cache", progress=False)
    resident = DeviceSplit(arrays.images, arrays.masks, torch.device("cpu"))
    streamed = StreamedSplit(arrays, torch.device("cpu"))
    expected = np.bincount(np.asarray(arrays.masks).reshape(-1), minlength=256)
    assert streamed.mask_counts(chunk=5).tolist() == expected.tolist()
    assert class_pixel_counts(streamed, 3) == class_pixel_counts(resident, 3) == expected[:3].tolist()


def resident_kib() -> int:
    """The process's resident memory after returning freed heap memory to the system (so that what is
    counted is what is alive, not what the allocator keeps at hand)."""
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def mapped_kib(folder: Path) -> int:
    """Resident KiB of this process's mappings of files under `folder` (a memory-mapped read would count)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            inside = len(fields) >= 6 and fields[5].startswith(str(folder))
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists() or not ctypes.util.find_library("c"),
                    reason="reads Linux's /proc and glibc's malloc_trim")
def test_a_split_over_the_budget_trains_with_flat_memory(pets_root, tmp_path):
    """48 pictures at 128x128 (3 MiB as uint8, 12 MiB with the float copy) over a 1 MiB budget: both splits
    stream, no page of the cache files is held by the process, and its memory at each epoch's end stays
    within half of the split's bytes of the second epoch's."""
    config = TrainConfig(arch="tests.test_stream:tiny_net", dataset="pets", data_root=str(pets_root),
                         cache_dir=str(tmp_path / "cache"), image_size=(128, 128), epochs=8, batch_size=16,
                         val_interval=1, device="cpu", num_threads=1, data_memory_mib=1, hflip=True,
                         scale_range=(0.5, 2.0), crop_size=(96, 96), photometric=True)
    for split, augmented in (("trainval", True), ("test", False)):
        assert isinstance(load_device_split(config, split, torch.device("cpu"), None, augmented=augmented),
                          StreamedSplit)
    samples = []
    result = fit(config, on_epoch_end=lambda record, snapshot: samples.append(
        (resident_kib(), mapped_kib(tmp_path / "cache"))))
    assert [r["epoch"] for r in result.records] == list(range(1, 9)) and result.status == "finished"
    assert [mapped for _, mapped in samples] == [0] * 8
    # After two epochs the run holds what it keeps (measured: up to 1.8 MiB more after the second epoch than
    # after the first, in this process; then within 0.1 MiB over six epochs); a leak of a quarter of the split
    # per epoch would add 4.5 MiB by the end.
    split_kib = 48 * 128 * 128 * 4 / 1024
    growth = max(rss for rss, _ in samples[2:]) - samples[1][0]
    assert growth < split_kib / 2, (growth, [rss for rss, _ in samples])
    # the control: a memory-mapped read of the same cache does show in the mapping count
    arrays = load_split("pets", pets_root, "trainval", (128, 128), tmp_path / "cache", progress=False)
    assert int(np.asarray(arrays.images).sum(dtype=np.int64)) > 0
    assert mapped_kib(tmp_path / "cache") >= 0.9 * arrays.images.nbytes / 1024


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_streamed_batches_equal_resident_ones_and_the_cpus(pets_root, tmp_path):
    """Pinned buffers, asynchronous copies and one grid_sample per batch: the batches of the CPU's batched path."""
    from trainables.data.augment import Augmentation

    arrays = load_split("pets", pets_root, "trainval", (64, 80), tmp_path / "cache", progress=False)
    augment = Augmentation(hflip=True, scale_range=(0.5, 2.0), crop_size=(48, 48), cat_max_ratio=0.75,
                           photometric=True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    splits = [DeviceSplit(arrays.images, arrays.masks, cuda, True, normalised=False), StreamedSplit(arrays, cuda, True)]
    generators = [torch.Generator().manual_seed(4) for _ in range(3)]
    reference = DeviceSplit(arrays.images, arrays.masks, cpu, True, normalised=False)
    for _ in range(2):
        batches = [list(split.batches(16, shuffle=True, generator=g, augment=augment))
                   for split, g in zip(splits, generators)]
        on_cpu = []
        for images, masks in reference.batches(16, shuffle=True, generator=generators[2], augment=augment):
            on_cpu.append((images, masks))
        assert len(batches[0]) == len(on_cpu) == 3
        for (a, am), (b, bm), (c, cm) in zip(*batches, on_cpu):
            assert torch.equal(a, b) and torch.equal(am, bm)
            assert torch.equal(am.cpu(), cm)  # the same crops, flips and cat_max_ratio choices
            # the CPU resizes in uint8 (within 1 of 255), which photometric contrast and colour may stretch
            difference = (a.cpu() - c).abs() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
            assert difference.max() < 4 and difference.mean() < 0.6  # measured on CPU: 2.1 and 0.3
