"""Datasets as preprocessed uint8 arrays, from a declaration (declaration.py) of where the files are and
what their mask values mean: a folder layout, Hugging Face Parquet shards, or a preset (pets, cityscapes,
voc, ade20k).

`load_split(declaration, root, role)` lists a split (layouts.py, parquet.py), decodes and resizes it once
into a cache (cache.py; masks read by labels.py) and returns memory-mapped arrays; `check_dataset` names
every problem of a dataset and counts its pixels per class. Roles are "train" and "val"; a preset's own
split names (pets: trainval, test) are accepted for them, and a preset's name for its declaration.
`image_size` is (height, width); an int means a square.

What a preset is (class names, colours) is in classes.py and presets.py, which need no numpy: the
readers of a study's record import them alone. The decoding modules load on first use.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from trainables.data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTES, class_names, palette
from trainables.data.declaration import FORMATS, ROLES, DataDeclaration, declare, preset
from trainables.data.presets import PRESETS
from trainables.errors import ConfigError, DatasetError

_LAZY = {"check_dataset": "trainables.data.check", "synth_dataset": "trainables.data.synth_layouts",
         "synth_declared": "trainables.data.synth_layouts", "SYNTH_LAYOUTS": "trainables.data.presets",
         "SplitArrays": "trainables.data.cache", "DatasetProblems": "trainables.data.cache"}
# Each preset's own names of its train and val splits (pets: trainval and test).
SPLITS = {name: tuple(preset(name).split_name(role) for role in ROLES) for name in PRESETS}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve(declaration: DataDeclaration | str) -> DataDeclaration:
    """A declaration as it is, or a preset's by its name."""
    if isinstance(declaration, DataDeclaration):
        return declaration
    if isinstance(declaration, str):
        return preset(declaration)
    raise ConfigError(f"expected a dataset declaration or a preset's name, got {declaration!r}")


def role_of(declaration: DataDeclaration, split: str) -> str:
    """"train" or "val": a role, or the name of the split that has it (pets: trainval -> train)."""
    if split in ROLES:
        return split
    names = {declaration.split_name(role): role for role in ROLES}
    if split not in names:
        raise ConfigError(f"{split!r} is not a split of this {declaration.format} dataset: expected a role (train, "
                          f"val) or a split's name ({', '.join(names)})")
    return names[split]


def load_split(
    declaration: DataDeclaration | str,
    root: str | Path,
    role: str,
    image_size: int | tuple[int, int] = (64, 64),
    cache_dir: str | Path | None = None,
    max_samples: int | None = None,
    progress: bool = True,
    workers: int | None = None,
):
    """One split as uint8 arrays at image_size, from the cache (built where missing); a SplitArrays.

    The arrays are read-only memory maps of the cache files: copy them (np.array)
    before writing, or before torch.from_numpy, which warns on read-only memory.
    max_samples keeps the first N samples of the split sorted by image path.
    workers: decoding threads when the cache is built (default: one per available core).
    Bad data raises DatasetError naming every bad file of the split (DatasetProblems).
    """
    from trainables.data.cache import DatasetProblems, default_cache_dir, load_cached
    from trainables.data.layouts import list_split

    declaration = resolve(declaration)
    role = role_of(declaration, role)
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples: expected None or an integer >= 1, got {max_samples!r}")
    root = Path(root).expanduser()
    size = as_size(image_size)
    samples, problems = list_split(declaration, root, role)
    if problems:
        raise DatasetProblems(problems)
    if not samples:
        raise DatasetError(f"the {declaration.format} {declaration.split_name(role)} split at {root} has no samples")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(root)
    return load_cached(declaration.format, cache_label(declaration, role), root, samples, size, cache_dir,
                       max_samples, progress, workers)


def dataset_fingerprint(declaration: DataDeclaration | str, root: str | Path) -> str:
    """16 hex digits of the bytes of every source file of both splits (and of which split holds it), and, for
    a declaration that is not a preset, of how its masks are read (a preset's name fixes that).

    Reading the files happens once per state of the tree; the result is remembered
    in the default cache folder under the files' names, sizes and modification times.
    """
    from trainables.data.cache import DatasetProblems, content_fingerprint, default_cache_dir
    from trainables.data.labels import label_semantics
    from trainables.data.layouts import list_split

    declaration = resolve(declaration)
    root = Path(root).expanduser()
    names = [declaration.split_name(role) for role in ROLES]
    if len(set(names)) < len(names):
        names = list(ROLES)
    samples_by_split = {}
    for name, role in zip(names, ROLES):
        samples, problems = list_split(declaration, root, role)
        if problems:
            raise DatasetProblems(problems)
        samples_by_split[name] = samples
    semantics = ""
    if not (declaration.is_preset and declaration == preset(declaration.format)):
        semantics = json.dumps({**label_semantics(declaration), "columns": _columns(declaration)}, sort_keys=True)
    return content_fingerprint(root, samples_by_split, default_cache_dir(root), semantics)


def label_files(declaration: DataDeclaration | str, image_name: str) -> list:
    """[(file name, reader)]: where the dataset keeps an image's ground truth, preferred first.

    The reader turns the file (the dataset's own encoding: pets trimaps 1/2/3, Cityscapes label
    ids or train ids, ...) into uint8 class ids, 255 = ignore, exactly as the training cache does.
    """
    from trainables.data.layouts import label_files as files

    return files(resolve(declaration), Path(image_name).name)


def class_pixel_counts(arrays):
    """int64 [256]: pixels of each mask value of a SplitArrays (class ids; 255 = ignored), from the
    cache's meta.json where it counted exactly these masks, else counted now."""
    import numpy as np

    if arrays.pixels is not None:
        return np.asarray(arrays.pixels, np.int64)
    return np.bincount(np.asarray(arrays.masks).ravel(), minlength=256).astype(np.int64)


def cache_label(declaration: DataDeclaration, role: str) -> str:
    """The split's name as its cache folders show it (a safe file name)."""
    return re.sub(r"[^A-Za-z0-9_.+=-]", "-", declaration.split_name(role))[:60] or role


def _columns(declaration: DataDeclaration) -> list[str] | None:
    return [declaration.image_column, declaration.label_column] if declaration.format == "parquet" else None


def as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"image_size: expected (height, width) in pixels or one int, got {image_size!r}")
    return size


__all__ = [
    "SPLITS", "NUM_CLASSES", "CLASS_NAMES", "IGNORE_INDEX", "PALETTES", "FORMATS", "ROLES", "class_names", "palette",
    "DataDeclaration", "declare", "preset", "resolve", "SplitArrays", "DatasetProblems", "load_split",
    "dataset_fingerprint", "check_dataset", "synth_dataset", "synth_declared", "SYNTH_LAYOUTS", "label_files",
    "class_pixel_counts",
]
