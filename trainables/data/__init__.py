"""Datasets as preprocessed uint8 arrays: Oxford-IIIT Pet (3 classes) and Cityscapes (19).

`load_split` lists a split through torchvision's dataset class, decodes and resizes
it once into a cache (see cache.py) and returns memory-mapped arrays.
`image_size` is (height, width); an int means a square.

What a dataset is (class names, colours, splits) is in classes.py, which needs no numpy: the
readers of a study's record import that alone. The decoding modules load on first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from trainables.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTES, SPLITS, class_names, palette
from trainables.errors import ConfigError, DatasetError

_LAZY = {"check_dataset": "trainables.data.check", "synth_dataset": "trainables.data.synth",
         "SplitArrays": "trainables.data.cache"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_split(
    dataset: str,
    root: str | Path,
    split: str,
    image_size: int | tuple[int, int] = (64, 64),
    cache_dir: str | Path | None = None,
    max_samples: int | None = None,
    progress: bool = True,
    workers: int | None = None,
):
    """One split as uint8 arrays at image_size, from the cache (built where missing).

    The arrays are read-only memory maps of the cache files: copy them (np.array)
    before writing, or before torch.from_numpy, which warns on read-only memory.
    max_samples keeps the first N samples of the split sorted by image path.
    workers: decoding threads when the cache is built (default: one per available core).
    """
    from trainables.data.cache import default_cache_dir, load_cached

    module = _module(dataset)
    if split not in module.SPLITS:
        raise ConfigError(f"{dataset} has the splits {list(module.SPLITS)}, not {split!r}")
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples: expected None or an integer >= 1, got {max_samples!r}")
    root = Path(root).expanduser()
    size = as_size(image_size)
    samples = module.list_samples(root, split)
    if not samples:
        raise DatasetError(f"the {dataset} {split} split at {root} has no samples")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(root)
    return load_cached(dataset, split, root, samples, size, cache_dir, max_samples, progress, workers)


def dataset_fingerprint(dataset: str, root: str | Path) -> str:
    """16 hex digits of the bytes of every source file of all splits (and of which split holds it).

    Reading the files happens once per state of the tree; the result is remembered
    in the default cache folder under the files' names, sizes and modification times.
    """
    from trainables.data.cache import content_fingerprint, default_cache_dir

    module = _module(dataset)
    root = Path(root).expanduser()
    samples_by_split = {split: module.list_samples(root, split) for split in module.SPLITS}
    return content_fingerprint(root, samples_by_split, default_cache_dir(root))


def label_files(dataset: str, image_name: str) -> list:
    """[(file name, reader)]: where the dataset keeps an image's ground truth, preferred first.

    The reader turns the file (the dataset's own encoding: pets trimaps 1/2/3, Cityscapes label
    ids or train ids) into uint8 class ids, 255 = ignore, exactly as the training cache does.
    """
    return _module(dataset).label_files(Path(image_name).name)


def as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"image_size: expected (height, width) in pixels or one int, got {image_size!r}")
    return size


def _module(dataset: str):
    if dataset not in SPLITS:
        raise ConfigError(f"unknown dataset {dataset!r}; known: {list(SPLITS)}")
    return importlib.import_module(f"trainables.data.{dataset}")


__all__ = [
    "SPLITS", "NUM_CLASSES", "CLASS_NAMES", "IGNORE_INDEX", "PALETTES", "class_names", "palette", "SplitArrays",
    "load_split", "dataset_fingerprint", "check_dataset", "synth_dataset", "label_files",
]
