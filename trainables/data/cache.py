"""Decode and resize a split once into uint8 arrays on disk; every later load maps them.

A cache lives in `<cache_dir>/<dataset>-<split>-<H>x<W>[-first<N>]-<fingerprint16>/`:
`images.npy` (uint8 N,H,W,3), `masks.npy` (uint8 N,H,W; class ids, 255 = ignore) and
`meta.json`, written last, with each array's size, shape and sha256.

The fingerprint covers the sorted sample list (paths relative to the root, sizes,
modification times, the label reader) and the preprocessing (size, CODE_VERSION):
a changed file or setting gives a new key and a new cache; an unchanged tree is
reused without decoding anything. A cache is built in a temporary folder and
renamed into place, so concurrent builders never corrupt it: the first rename
wins and the others use the winner's. A damaged cache (missing meta, wrong size or
shape, checksum mismatch) is reported on stderr, removed and rebuilt. Sizes and
shapes are checked on every load, checksums on a process's first load of a cache
(and again if its files change): ~0.2 s for pets at 64x64, seconds for large caches.

Preprocessing: every PIL mode becomes RGB through `convert("RGB")` (an alpha
channel is dropped, as torchvision's dataset classes do; 16-bit greys are scaled
to 8 bits first instead of being clipped); images are resized bilinearly with
PIL's antialiasing, label maps with nearest neighbour only. Normalisation is
left to the training device.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from trainables.errors import DatasetError

CODE_VERSION = 1  # bump when decoding or resizing changes: every cache key changes with it
ARRAYS = ("images", "masks")


class Sample(NamedTuple):
    image: str
    label: str
    read_label: Callable[[str], np.ndarray]  # label file -> validated uint8 class ids, full resolution


@dataclass(frozen=True, eq=False)
class SplitArrays:
    images: np.ndarray  # uint8 [N, H, W, 3], memory-mapped from the cache
    masks: np.ndarray  # uint8 [N, H, W], class ids, 255 = ignore
    dataset: str
    split: str
    fingerprint: str  # of the source files and preprocessing settings of exactly these samples
    folder: Path | None = None  # the cache folder the arrays map (their first N rows): what streaming reads


class CacheDamaged(Exception):
    """A cache folder whose files do not match its meta.json."""


# Caches whose checksums this process has verified, keyed by the arrays' file identities:
# large caches are then not re-hashed on every load, and a file edited since still is.
_verified: set[tuple] = set()


# -- decoding (runs in worker threads) ---------------------------------------------
def open_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I;16"):
                image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
            return image.convert("RGB")
    except Exception as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def open_label(path: str) -> np.ndarray:
    """A single-channel label image as an integer array, values untouched."""
    try:
        with Image.open(path) as label:
            label.load()
            mode = label.mode
            values = np.asarray(label)
    except Exception as error:
        raise DatasetError(f"cannot read label image {path}: {error}") from error
    if mode not in ("L", "P") and not mode.startswith("I"):
        raise DatasetError(f"{path}: expected a single-channel label image (mode L or P), got mode {mode}")
    return values


def unexpected_values(values: np.ndarray, allowed: Sequence[int]) -> list[int]:
    present = np.flatnonzero(np.bincount(values.ravel())) if values.dtype == np.uint8 else np.unique(values)
    return sorted(set(present.tolist()) - set(allowed))


def decode_sample(sample: Sample, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 H,W,3 image; uint8 H,W class ids) at size (height, width)."""
    image = open_rgb(sample.image)
    classes = sample.read_label(sample.label)
    if classes.shape != (image.height, image.width):
        raise DatasetError(
            f"label {sample.label} is {classes.shape[1]}x{classes.shape[0]} (width x height) "
            f"but its image {sample.image} is {image.width}x{image.height}"
        )
    return np.asarray(resize_image(image, size)), resize_label(classes, size)


def resize_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An RGB image at size (height, width), as the cache holds it: bilinear, antialiased when reducing."""
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR, reducing_gap=None)  # PIL antialiases when reducing
    return image


def resize_label(classes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 class ids at size (height, width), as the cache holds them: nearest neighbour, never interpolated."""
    height, width = size
    return np.asarray(Image.fromarray(classes).resize((width, height), Image.NEAREST))


def decode_chunk(samples: list[Sample], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [decode_sample(sample, size) for sample in samples]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# -- fingerprints ------------------------------------------------------------------
def file_records(root: Path, samples: Sequence[Sample]) -> list[list]:
    """Per sample: relative paths, sizes and modification times of its two files."""
    records = []
    for sample in samples:
        record = [sample.read_label.__qualname__]
        for path in (sample.image, sample.label):
            try:
                stat = os.stat(path)
            except OSError as error:
                raise DatasetError(f"{path} is listed in the split but cannot be read: {error}") from error
            record += [_relative(path, root), stat.st_size, stat.st_mtime_ns]
        records.append(record)
    return records


def _relative(path: str, root: Path) -> str:
    # Listed paths start with the root; a prefix cut is much faster than os.path.relpath.
    prefix = os.path.join(str(root), "")
    return path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)


def fingerprint(records: Sequence[list], settings: dict) -> str:
    text = json.dumps({"code": CODE_VERSION, **settings, "files": list(records)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def content_fingerprint(root: Path, samples_by_split: dict[str, list[Sample]], cache_dir: Path) -> str:
    """Hash of every source file's bytes, split membership included.

    Remembered under the cheap stat fingerprint, so the files are read once per tree state.
    """
    stat_key = fingerprint([[split, r] for split, samples in samples_by_split.items()
                            for r in file_records(root, samples)], {"kind": "content"})[:16]
    memo = cache_dir / "fingerprints" / stat_key
    if memo.is_file():
        return memo.read_text().strip()
    paths = [p for samples in samples_by_split.values() for s in samples for p in (s.image, s.label)]
    with concurrent.futures.ThreadPoolExecutor(available_cores()) as pool:  # hashlib releases the GIL
        digests = dict(zip(paths, pool.map(_file_sha256, paths)))
    total = hashlib.sha256()
    for split, samples in samples_by_split.items():
        for sample in samples:
            for path in (sample.image, sample.label):
                total.update(f"{split}\0{_relative(path, root)}\0{digests[path]}\n".encode())
    result = total.hexdigest()[:16]
    memo.parent.mkdir(parents=True, exist_ok=True)
    partial = memo.with_name(f".{stat_key}-{os.getpid()}-{secrets.token_hex(4)}")
    partial.write_text(result + "\n")
    os.replace(partial, memo)
    return result


def _file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- the cache ---------------------------------------------------------------------
def default_cache_dir(root: Path) -> Path:
    """`<root>/.segstudy-cache` where that can be written, else the user's cache folder."""
    beside_data = root / ".segstudy-cache"
    if os.access(beside_data if beside_data.exists() else root, os.W_OK):
        return beside_data
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segstudy"


def load_cached(
    dataset: str,
    split: str,
    root: Path,
    samples: list[Sample],
    size: tuple[int, int],
    cache_dir: Path,
    max_samples: int | None,
    progress: bool,
    workers: int | None,
) -> SplitArrays:
    """The split's arrays from its cache, built first where missing or damaged.

    With max_samples below the split's size, the first max_samples samples come from
    the full split's cache when that exists, else from a cache of just those samples.
    """
    records = file_records(root, samples)
    settings = {"dataset": dataset, "split": split, "size": list(size)}
    height, width = size
    full_key = fingerprint(records, settings)
    full_folder = cache_dir / f"{dataset}-{split}-{height}x{width}-{full_key[:16]}"
    if max_samples is None or max_samples >= len(samples):
        images, masks = _open_or_build(full_folder, full_key, samples, settings, progress, workers)
        return SplitArrays(images, masks, dataset, split, full_key, full_folder)

    key = fingerprint(records[:max_samples], settings)
    if full_folder.exists():
        opened = _try_open(full_folder, full_key)
        if opened is not None:
            images, masks = opened
            return SplitArrays(images[:max_samples], masks[:max_samples], dataset, split, key, full_folder)
    folder = cache_dir / f"{dataset}-{split}-{height}x{width}-first{max_samples}-{key[:16]}"
    images, masks = _open_or_build(folder, key, samples[:max_samples], settings, progress, workers)
    return SplitArrays(images, masks, dataset, split, key, folder)


def _open_or_build(folder: Path, key: str, samples, settings, progress, workers) -> tuple[np.ndarray, np.ndarray]:
    opened = _try_open(folder, key) if folder.exists() else None
    if opened is not None:
        return opened
    _build(folder, key, samples, settings, progress, workers)
    try:
        return _open(folder, key)
    except CacheDamaged as error:  # only if someone damaged it within this instant
        raise DatasetError(f"the cache {folder} was damaged right after it was built: {error}") from error


def _try_open(folder: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return _open(folder, key)
    except CacheDamaged as error:
        print(f"warning: the cache {folder} is damaged ({error}); removing and rebuilding it", file=sys.stderr)
        _discard(folder)
        return None


def _open(folder: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return _open_checked(folder, key)
    except (OSError, ValueError, KeyError, TypeError) as error:  # missing files, bad meta.json, bad .npy header
        raise CacheDamaged(f"{type(error).__name__}: {error}") from error


def _open_checked(folder: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    meta = json.loads((folder / "meta.json").read_text())
    if meta["fingerprint"] != key:
        raise CacheDamaged("meta.json names another fingerprint")
    arrays = []
    identity = [str(folder)]
    for name in ARRAYS:
        path, expected = folder / f"{name}.npy", meta["files"][name]
        stat = path.stat()
        if stat.st_size != expected["bytes"]:
            raise CacheDamaged(f"{path.name} has {stat.st_size} bytes, meta.json says {expected['bytes']}")
        array = np.load(path, mmap_mode="r")
        if list(array.shape) != expected["shape"] or array.dtype != np.uint8:
            raise CacheDamaged(f"{path.name} holds {array.dtype} {array.shape}, meta.json says {expected['shape']}")
        identity += [stat.st_ino, stat.st_size, stat.st_mtime_ns, expected["sha256"]]
        arrays.append(array)
    if tuple(identity) not in _verified:
        for name in ARRAYS:
            if _file_sha256(folder / f"{name}.npy") != meta["files"][name]["sha256"]:
                raise CacheDamaged(f"{name}.npy does not match its checksum")
        _verified.add(tuple(identity))
    return arrays[0], arrays[1]


def _discard(folder: Path) -> None:
    # Rename first so that no other process can open a half-deleted folder.
    doomed = folder.with_name(f".trash-{folder.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(folder, doomed)
    except FileNotFoundError:  # another process discarded it already
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _build(folder: Path, key: str, samples: list[Sample], settings: dict, progress: bool, workers: int | None) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".tmp-{folder.name}-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir()
    try:
        height, width = settings["size"]
        count = len(samples)
        images = np.lib.format.open_memmap(partial / "images.npy", "w+", np.uint8, (count, height, width, 3))
        masks = np.lib.format.open_memmap(partial / "masks.npy", "w+", np.uint8, (count, height, width))
        label = f"{settings['dataset']}/{settings['split']} {height}x{width}"
        _decode_into(images, masks, samples, (height, width), label, progress, workers)
        shapes = {"images": list(images.shape), "masks": list(masks.shape)}
        images.flush()
        masks.flush()
        del images, masks
        files = {}
        for name in ARRAYS:
            path = partial / f"{name}.npy"
            files[name] = {"bytes": path.stat().st_size, "shape": shapes[name], "sha256": _file_sha256(path)}
        meta = {**settings, "count": count, "fingerprint": key, "code_version": CODE_VERSION, "files": files}
        (partial / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(partial, folder)
        except OSError:
            if not folder.exists():
                raise
            shutil.rmtree(partial, ignore_errors=True)  # another process finished first: use its cache
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _decode_into(images, masks, samples, size, label, progress, workers) -> None:
    # Threads, not processes: PIL decodes and resizes with the GIL released (1.7x on 2 cores
    # for 500x375 JPEGs, as much as worker processes), and threads need no re-import of
    # the caller's __main__ and are safe to start inside threaded callers (Ray, torch).
    count = len(samples)
    workers = available_cores() if workers is None else max(1, workers)
    chunk = max(1, min(64, count // (workers * 8)))
    starts = range(0, count, chunk)
    report = _Progress(label, count, progress).update
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(decode_chunk, samples[start : start + chunk], size): start for start in starts}
        done = 0
        try:
            for future in concurrent.futures.as_completed(futures):
                start = futures[future]
                chunk_images, chunk_masks = future.result()  # a DatasetError naming the file is raised here
                images[start : start + len(chunk_images)] = chunk_images
                masks[start : start + len(chunk_masks)] = chunk_masks
                done += len(chunk_images)
                report(done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class _Progress:
    """Lines on stderr: one at the start, one every ~10% when a build takes a while, one at the end."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.started = self.last_line = time.perf_counter()
        self.next_share = 0.1
        self._say(f"{total} images")

    def update(self, done: int) -> None:
        now = time.perf_counter()
        seconds = max(now - self.started, 1e-9)
        if done >= self.total:
            self._say(f"{done} images in {seconds:.1f} s ({done / seconds:.0f} images/s)")
        elif done >= self.next_share * self.total and now - self.last_line >= 1.0:
            self._say(f"{done}/{self.total} ({done / seconds:.0f} images/s)")
            self.next_share = done / self.total + 0.1
            self.last_line = now

    def _say(self, text: str) -> None:
        if self.enabled:
            print(f"building cache {self.label}: {text}", file=sys.stderr, flush=True)


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
