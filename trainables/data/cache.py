"""Decode and resize a split once into uint8 arrays on disk; every later load maps them.

A cache lives in `<cache_dir>/<dataset>-<split>-<H>x<W>[-first<N>]-<fingerprint16>/`:
`images.npy` (uint8 N,H,W,3), `masks.npy` (uint8 N,H,W; class ids, 255 = ignore) and
`meta.json`, written last, with each array's size, shape and sha256, the count of each mask value
(`pixels`, 256 counts at the working resolution) and the raw mask values the split holds (`raw_values`,
index masks): what `check` reports and warns about, so rerunning it reads meta.json alone.

The fingerprint covers the sorted sample list (paths relative to the root, sizes,
modification times, what the label reader makes of values) and the preprocessing (size, CODE_VERSION):
a changed file or setting gives a new key and a new cache; an unchanged tree is
reused without decoding anything. A cache is built in a temporary folder and
renamed into place, so concurrent builders never corrupt it: the first rename
wins and the others use the winner's. A damaged cache (missing meta, wrong size or
shape, checksum mismatch) is reported on stderr, removed and rebuilt. A build decodes every sample
before it stops: all bad files of a split are named at once (DatasetProblems), and nothing is kept. Sizes and
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
import io
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.data.declaration import MAX_VALUE
from trainables.data.labels import Sample, open_label_image, sample_name, unreadable
from trainables.errors import DatasetError

CODE_VERSION = 2  # bump when decoding or resizing changes: every cache key changes with it
ARRAYS = ("images", "masks")
SHOWN_PROBLEMS = 30  # lines of a DatasetProblems message before "... and N more"


@dataclass(frozen=True, eq=False)
class SplitArrays:
    images: np.ndarray  # uint8 [N, H, W, 3], memory-mapped from the cache
    masks: np.ndarray  # uint8 [N, H, W], class ids, 255 = ignore
    dataset: str
    split: str
    fingerprint: str  # of the source files and preprocessing settings of exactly these samples
    pixels: tuple[int, ...] | None = None  # count of each mask value 0-255 (from meta.json); None: not counted
    folder: Path | None = None  # the cache folder the arrays map (their first N rows): what streaming reads


class DatasetProblems(DatasetError):
    """Every bad file of a dataset, one line each (`problems`); the message shows the first SHOWN_PROBLEMS."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(dict.fromkeys(problems))
        super().__init__(format_problems(self.problems))


def format_problems(problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    shown = "\n".join(f"  {line}" for line in problems[:SHOWN_PROBLEMS])
    more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return f"{len(problems)} problems in the dataset:\n{shown}{more}"


class CacheDamaged(Exception):
    """A cache folder whose files do not match its meta.json."""


# Caches whose checksums this process has verified, keyed by the arrays' file identities:
# large caches are then not re-hashed on every load, and a file edited since still is.
_verified: set[tuple] = set()


# -- decoding (runs in worker threads) ---------------------------------------------
def open_rgb(path, name: str | None = None) -> Image.Image:
    """An image file (or file object, named `name` in messages) as RGB."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I;16"):
                image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
            return image.convert("RGB")
    except Exception as error:
        raise DatasetError(f"cannot read image {name or path}: {unreadable(error)}") from error


def decode_sample(sample: Sample, size: tuple[int, int]):
    """(uint8 H,W,3 image; uint8 H,W class ids; count per raw mask value or None; problems) at size (height,
    width). With problems, the arrays are None: every problem of the sample is named, nothing raised."""
    image_name, label_name = sample_name(sample, "image"), sample_name(sample, "label")
    problems = []
    image = mask = None
    try:
        image_source, label_source = (sample.image, sample.label) if sample.row is None else (
            tuple(io.BytesIO(data) for data in sample.fetch(sample)))
    except DatasetError as error:
        return None, None, None, [str(error)]
    try:
        image = open_rgb(image_source, image_name)
    except DatasetError as error:
        problems.append(str(error))
    try:
        mask = open_label_image(label_source, label_name)
    except DatasetError as error:
        problems.append(str(error))
    if problems:
        return None, None, None, problems
    if mask.size != image.size:
        return None, None, None, [f"label {label_name} is {mask.width}x{mask.height} (width x height) but its image "
                                  f"{image_name} is {image.width}x{image.height}"]
    classes, counts, problems = sample.labels.read(mask, label_name)
    if problems:
        return None, None, None, problems
    return np.asarray(resize_image(image, size)), resize_label(classes, size), counts, []


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


def decode_chunk(samples: list[Sample], size: tuple[int, int]):
    """(images N,H,W,3; masks N,H,W; which raw values occur (bool per value) or None; problems)."""
    height, width = size
    images = np.zeros((len(samples), height, width, 3), np.uint8)
    masks = np.zeros((len(samples), height, width), np.uint8)
    present, problems = None, []
    for index, sample in enumerate(samples):
        image, mask, counts, found = decode_sample(sample, size)
        if found:
            problems += found
            continue
        images[index], masks[index] = image, mask
        if counts is not None:
            present = np.zeros(MAX_VALUE + 1, bool) if present is None else present
            present[: len(counts)] |= counts > 0
    return images, masks, present, problems


# -- fingerprints ------------------------------------------------------------------
def file_records(root: Path, samples: Sequence[Sample]) -> list[list]:
    """Per sample: how its labels are read, relative paths, sizes and modification times of its files."""
    records, stats = [], {}
    for sample in samples:
        record = [sample.labels.tag]
        for path in (sample.image,) if sample.row is not None else (sample.image, sample.label):
            if path not in stats:
                try:
                    stats[path] = os.stat(path)
                except OSError as error:
                    raise DatasetError(f"{path} is listed in the split but cannot be read: {error}") from error
            record += [_relative(path, root), stats[path].st_size, stats[path].st_mtime_ns]
        if sample.row is not None:
            record.append(sample.row)
        records.append(record)
    return records


def _relative(path: str, root: Path) -> str:
    # Listed paths start with the root; a prefix cut is much faster than os.path.relpath.
    prefix = os.path.join(str(root), "")
    return path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)


def fingerprint(records: Sequence[list], settings: dict) -> str:
    text = json.dumps({"code": CODE_VERSION, **settings, "files": list(records)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def content_fingerprint(root: Path, samples_by_split: dict[str, list[Sample]], cache_dir: Path,
                        semantics: str = "") -> str:
    """Hash of every source file's bytes, split membership included (and `semantics`, when not empty).

    Remembered under the cheap stat fingerprint, so the files are read once per tree state.
    """
    stat_key = fingerprint([[split, r] for split, samples in samples_by_split.items()
                            for r in file_records(root, samples)], {"kind": "content", "semantics": semantics})[:16]
    memo = cache_dir / "fingerprints" / stat_key
    if memo.is_file():
        return memo.read_text().strip()
    paths = list(dict.fromkeys(p for samples in samples_by_split.values() for s in samples for p in (s.image, s.label)))
    with concurrent.futures.ThreadPoolExecutor(available_cores()) as pool:  # hashlib releases the GIL
        digests = dict(zip(paths, pool.map(_file_sha256, paths)))
    total = hashlib.sha256()
    for split, samples in samples_by_split.items():
        for sample in samples:
            if sample.row is not None:
                total.update(f"{split}\0{_relative(sample.image, root)}#{sample.row}\0{digests[sample.image]}\n"
                             .encode())
                continue
            for path in (sample.image, sample.label):
                total.update(f"{split}\0{_relative(path, root)}\0{digests[path]}\n".encode())
    if semantics:
        total.update(f"labels\0{semantics}\n".encode())
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


@dataclass(frozen=True)
class Planned:
    """Where a split's cache is (or will be) and what goes in it."""

    folder: Path
    key: str
    samples: list[Sample]
    settings: dict


def plan_cache(dataset: str, split: str, root: Path, samples: list[Sample], size: tuple[int, int],
               cache_dir: Path, max_samples: int | None = None) -> tuple[Planned, Planned | None]:
    """(the cache of the split's first max_samples samples, the full split's cache when that is another one)."""
    records = file_records(root, samples)
    settings = {"dataset": dataset, "split": split, "size": list(size)}
    if samples and samples[0].fetch is not None:  # Parquet rows: which columns are read
        settings["columns"] = list(samples[0].fetch.columns)
    height, width = size
    name = f"{dataset}-{split}-{height}x{width}"
    full_key = fingerprint(records, settings)
    full = Planned(cache_dir / f"{name}-{full_key[:16]}", full_key, samples, settings)
    if max_samples is None or max_samples >= len(samples):
        return full, None
    key = fingerprint(records[:max_samples], settings)
    return Planned(cache_dir / f"{name}-first{max_samples}-{key[:16]}", key, samples[:max_samples], settings), full


def load_cached(dataset: str, split: str, root: Path, samples: list[Sample], size: tuple[int, int], cache_dir: Path,
                max_samples: int | None, progress: bool, workers: int | None) -> SplitArrays:
    """The split's arrays from its cache, built first where missing or damaged.

    With max_samples below the split's size, the first max_samples samples come from
    the full split's cache when that exists, else from a cache of just those samples.
    """
    wanted, full = plan_cache(dataset, split, root, samples, size, cache_dir, max_samples)
    if full is not None and full.folder.exists():
        opened = _try_open(full.folder, full.key)
        if opened is not None:
            images, masks, _ = opened
            return SplitArrays(images[:max_samples], masks[:max_samples], dataset, split, wanted.key,
                               folder=full.folder)
    opened = _try_open(wanted.folder, wanted.key) if wanted.folder.exists() else None
    if opened is None:
        commit(build(wanted, progress, workers), wanted.folder)
        try:
            opened = _open(wanted.folder, wanted.key)
        except CacheDamaged as error:  # only if someone damaged it within this instant
            raise DatasetError(f"the cache {wanted.folder} was damaged right after it was built: {error}") from error
    images, masks, meta = opened
    return SplitArrays(images, masks, dataset, split, wanted.key, tuple(meta["pixels"]), wanted.folder)


def cached_meta(planned: Planned) -> dict | None:
    """The meta.json of a complete cache (sizes checked, not checksums: check reads no arrays), else None."""
    try:
        meta = json.loads((planned.folder / "meta.json").read_text())
        ok = meta["fingerprint"] == planned.key and all(
            (planned.folder / f"{name}.npy").stat().st_size == meta["files"][name]["bytes"] for name in ARRAYS)
        return meta if ok and "pixels" in meta else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _try_open(folder: Path, key: str):
    try:
        return _open(folder, key)
    except CacheDamaged as error:
        print(f"warning: the cache {folder} is damaged ({error}); removing and rebuilding it", file=sys.stderr)
        discard(folder)
        return None


def _open(folder: Path, key: str):
    try:
        return _open_checked(folder, key)
    except (OSError, ValueError, KeyError, TypeError) as error:  # missing files, bad meta.json, bad .npy header
        raise CacheDamaged(f"{type(error).__name__}: {error}") from error


def _open_checked(folder: Path, key: str) -> tuple[np.ndarray, np.ndarray, dict]:
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
    if len(meta.get("pixels", ())) != 256:
        raise CacheDamaged("meta.json has no pixel counts")
    return arrays[0], arrays[1], meta


def discard(folder: Path) -> None:
    # Rename first so that no other process can open a half-deleted folder.
    doomed = folder.with_name(f".trash-{folder.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(folder, doomed)
    except FileNotFoundError:  # another process discarded it already
        return
    shutil.rmtree(doomed, ignore_errors=True)


def build(planned: Planned, progress: bool, workers: int | None) -> Path:
    """The cache built in a temporary folder beside its place (returned: commit or discard it).

    Every sample is decoded before this stops: with any problem, the folder is removed and
    DatasetProblems names them all."""
    folder, samples, settings = planned.folder, planned.samples, planned.settings
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".tmp-{folder.name}-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir()
    try:
        height, width = settings["size"]
        count = len(samples)
        images = np.lib.format.open_memmap(partial / "images.npy", "w+", np.uint8, (count, height, width, 3))
        masks = np.lib.format.open_memmap(partial / "masks.npy", "w+", np.uint8, (count, height, width))
        label = f"{settings['dataset']}/{settings['split']} {height}x{width}"
        pixels, present, problems = _decode_into(images, masks, samples, (height, width), label, progress, workers)
        if problems:
            raise DatasetProblems(problems)
        shapes = {"images": list(images.shape), "masks": list(masks.shape)}
        images.flush()
        masks.flush()
        del images, masks
        files = {}
        for name in ARRAYS:
            path = partial / f"{name}.npy"
            files[name] = {"bytes": path.stat().st_size, "shape": shapes[name], "sha256": _file_sha256(path)}
        raw_values = None if present is None else np.flatnonzero(present).tolist()
        meta = {**settings, "count": count, "fingerprint": planned.key, "code_version": CODE_VERSION, "files": files,
                "pixels": pixels.tolist(), "raw_values": raw_values}
        (partial / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        return partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def commit(partial: Path, folder: Path) -> None:
    """Move a built cache into place; where another process finished first, use its cache."""
    try:
        os.rename(partial, folder)
    except OSError:
        if not folder.exists():
            shutil.rmtree(partial, ignore_errors=True)
            raise
        shutil.rmtree(partial, ignore_errors=True)


def _decode_into(images, masks, samples, size, label, progress, workers):
    # Threads, not processes: PIL decodes and resizes with the GIL released (1.7x on 2 cores
    # for 500x375 JPEGs, as much as worker processes), and threads need no re-import of
    # the caller's __main__ and are safe to start inside threaded callers (Ray, torch).
    count = len(samples)
    workers = available_cores() if workers is None else max(1, workers)
    chunk = max(1, min(64, count // (workers * 8)))
    starts = range(0, count, chunk)
    report = _Progress(label, count, progress).update
    pixels = np.zeros(256, np.int64)
    present, problems = None, []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(decode_chunk, samples[start : start + chunk], size): start for start in starts}
        done = 0
        try:
            for future in concurrent.futures.as_completed(futures):
                start = futures[future]
                chunk_images, chunk_masks, chunk_present, chunk_problems = future.result()
                images[start : start + len(chunk_images)] = chunk_images
                masks[start : start + len(chunk_masks)] = chunk_masks
                pixels += np.bincount(chunk_masks.ravel(), minlength=256)
                if chunk_present is not None:
                    present = chunk_present if present is None else present | chunk_present
                problems.append((start, chunk_problems))
                done += len(chunk_images)
                report(done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return pixels, present, [line for _, lines in sorted(problems, key=lambda p: p[0]) for line in lines]


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
