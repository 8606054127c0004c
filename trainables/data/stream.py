"""A split that does not fit the training device's memory budget, read from its cache files batch by batch.

The cache's `images.npy` and `masks.npy` are read by rows with os.preadv at their offsets (rows that follow
each other in the file in one call), never through a memory map: a map's pages would count in the process's
resident memory as they are touched, and over an epoch the whole split would be. The operating system's
page cache still keeps what fits, at no cost to the process. A background thread reads the next batches
(into pinned buffers on CUDA) while the current one trains; each batch is moved to the device and
normalised (or augmented) there by the same code as a resident split's (device.make_batch), from the same
epoch plan, so a streamed split gives exactly the batches of a resident one.

`open_split` picks: resident (device.DeviceSplit) when the split's bytes on the device fit the budget
(the `data_memory_mib` setting; by default a quarter of the device's memory), else streamed.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from trainables.data.augment import Augmentation
from trainables.data.device import (
    FLOAT_COPY_BYTES,
    UINT8_BYTES,
    DeviceSplit,
    epoch_plan,
    make_batch,
    normalization_constants,
)
from trainables.errors import DatasetError

PREFETCH = 2  # batches read ahead of the one training
IOV_MAX = 1024  # rows per preadv call (the Linux limit on buffers per call)


def memory_budget(device: torch.device, mib: int | None) -> int:
    """Bytes a split may take on the device: `mib` MiB, or a quarter of the device's memory."""
    if mib is not None:
        return mib * 2**20
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // 4


def resident_bytes(shape: tuple[int, ...], normalised: bool) -> int:
    """Bytes of a DeviceSplit of masks shape (N, H, W): uint8 images and masks, and its float copy if kept."""
    count, height, width = shape[:3]
    return count * height * width * (UINT8_BYTES + (FLOAT_COPY_BYTES if normalised else 0))


def open_split(arrays, device: torch.device, channels_last: bool, budget: int, normalised: bool = True):
    """A DeviceSplit when the split fits `budget` bytes on the device, else a StreamedSplit.

    arrays: a cache.SplitArrays; normalised: whether a resident split keeps a normalised float copy
    (worth it when batches are not augmented pixel by pixel)."""
    if resident_bytes(arrays.masks.shape, normalised) <= budget:
        return DeviceSplit(arrays.images, arrays.masks, device, channels_last=channels_last, normalised=normalised)
    return StreamedSplit(arrays, device, channels_last=channels_last)


class _Rows:
    """Fixed-size rows of one .npy file, read at their offsets into caller's buffers."""

    def __init__(self, path: Path, count: int, row_shape: tuple[int, ...]):
        self.path = path
        self.row_bytes = int(np.prod(row_shape))
        try:
            with open(path, "rb") as file:
                version = np.lib.format.read_magic(file)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(file)
                self.offset = file.tell()
        except (OSError, ValueError) as error:
            raise DatasetError(f"cannot read the cache file {path}: {error}") from error
        if dtype != np.uint8 or fortran or tuple(shape[1:]) != tuple(row_shape) or shape[0] < count:
            raise DatasetError(f"the cache file {path} holds {dtype} {shape}, expected uint8 rows of {row_shape}")
        self.fd = os.open(path, os.O_RDONLY)
        self._close = weakref.finalize(self, os.close, self.fd)

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """out[k] = row rows[k]; `out` a C-contiguous uint8 array of len(rows) rows."""
        flat = out.reshape(len(rows), self.row_bytes)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        # Runs of consecutive rows: one call each (a validation epoch reads each batch in one call).
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        for run in np.split(np.arange(len(rows)), breaks):
            for part in np.array_split(run, -(-len(run) // IOV_MAX)):
                first = int(sorted_rows[part[0]])
                self._read_into([flat[k] for k in order[part]], self.offset + first * self.row_bytes)

    def _read_into(self, buffers: list[np.ndarray], offset: int) -> None:
        wanted = len(buffers) * self.row_bytes
        views = [memoryview(b) for b in buffers]
        done = 0
        while done < wanted:  # a read may return less than asked (signals, network file systems)
            got = os.preadv(self.fd, views, offset + done)
            if got <= 0:
                raise DatasetError(f"the cache file {self.path} ended early (offset {offset + done}); it changed "
                                   f"while training: remove its folder to rebuild it")
            done += got
            views = _advance(views, got)

    def close(self) -> None:
        self._close()


def _advance(views: list[memoryview], count: int) -> list[memoryview]:
    while count and views:
        if count >= len(views[0]):
            count -= len(views[0])
            views = views[1:]
        else:
            views = [views[0][count:], *views[1:]]
            count = 0
    return views


class _Slot:
    """One batch's host buffers (pinned on CUDA), and the event after which a device copy has left them."""

    def __init__(self, batch_size: int, image_size: tuple[int, int], pin: bool):
        height, width = image_size
        self.images = torch.empty((batch_size, height, width, 3), dtype=torch.uint8, pin_memory=pin)
        self.masks = torch.empty((batch_size, height, width), dtype=torch.uint8, pin_memory=pin)
        self.event = None


class StreamedSplit:
    """The batches of a DeviceSplit of the same cache, with a flat memory footprint: see the module docstring."""

    def __init__(self, arrays, device: torch.device, channels_last: bool = False, prefetch: int = PREFETCH):
        if arrays.folder is None:
            raise ValueError("a streamed split needs the cache folder of its arrays")
        count, height, width = arrays.masks.shape
        self.count, self.device, self.channels_last, self.prefetch = count, device, channels_last, prefetch
        self.image_size = (height, width)
        folder = Path(arrays.folder)
        self._images = _Rows(folder / "images.npy", count, (height, width, 3))
        self._masks = _Rows(folder / "masks.npy", count, (height, width))
        self._mean, self._inv_std = normalization_constants(device)
        self._slots: dict[int, list[_Slot]] = {}

    def __len__(self) -> int:
        return self.count

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Augmentation | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """As DeviceSplit.batches: the same batches for the same generator state."""
        order, draws = epoch_plan(self.count, shuffle, generator, augment, self.image_size)
        flips = draws.flips.to(self.device) if draws is not None and draws.flips is not None else None
        free: queue.Queue = queue.Queue()
        for slot in self._slots_for(batch_size):
            free.put(slot)
        ready: queue.Queue = queue.Queue()
        stop = threading.Event()
        reader = threading.Thread(target=self._read_ahead, args=(order.numpy(), batch_size, free, ready, stop),
                                  name="segstudy-stream", daemon=True)
        reader.start()
        try:
            for start in range(0, self.count, batch_size):
                stop_row = min(start + batch_size, self.count)
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                slot, rows = item
                images = slot.images[:rows].to(self.device, non_blocking=True)
                masks = slot.masks[:rows].to(self.device, non_blocking=True)
                batch = make_batch(images, masks, None, None if draws is None else draws.rows(start, stop_row),
                                   augment, self._mean, self._inv_std, self.channels_last,
                                   flips=None if flips is None else flips[start:stop_row])
                if self.device.type == "cuda":  # the slot is free once the copies above have run
                    slot.event = torch.cuda.Event()
                    slot.event.record()
                free.put(slot)  # on CPU the batch holds new tensors: the slot is free now
                yield batch
        finally:
            stop.set()
            free.put(None)  # wakes the reader if it waits for a slot
            reader.join()

    def _read_ahead(self, order: np.ndarray, batch_size: int, free: queue.Queue, ready: queue.Queue,
                    stop: threading.Event) -> None:
        try:
            for start in range(0, len(order), batch_size):
                slot = free.get()
                if slot is None or stop.is_set():
                    return
                if slot.event is not None:
                    slot.event.synchronize()
                rows = order[start : start + batch_size]
                self._images.read(rows, slot.images[: len(rows)].numpy())
                self._masks.read(rows, slot.masks[: len(rows)].numpy())
                ready.put((slot, len(rows)))
        except BaseException as error:  # raised in the training thread, which waits for this batch
            ready.put(error)

    def mask_counts(self, chunk: int = 64) -> np.ndarray:
        """Pixels of each mask value 0-255 over the split, read by rows as batches are (never mapped)."""
        height, width = self.image_size
        buffer = np.empty((chunk, height, width), dtype=np.uint8)
        total = np.zeros(256, dtype=np.int64)
        for start in range(0, self.count, chunk):
            rows = np.arange(start, min(start + chunk, self.count))
            self._masks.read(rows, buffer[: len(rows)])
            total += np.bincount(buffer[: len(rows)].reshape(-1), minlength=256)
        return total

    def _slots_for(self, batch_size: int) -> list[_Slot]:
        if batch_size not in self._slots:
            self._slots.clear()  # one batch size at a time (train and validation splits are separate objects)
            pin = self.device.type == "cuda"
            self._slots[batch_size] = [_Slot(min(batch_size, self.count), self.image_size, pin)
                                       for _ in range(self.prefetch + 1)]
        return self._slots[batch_size]

    def close(self) -> None:
        self._images.close()
        self._masks.close()
