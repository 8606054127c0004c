"""Validate a dataset tree and count its pixels per class at the working resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables.errors import ConfigError


def check_dataset(dataset: str, root: str | Path, image_size: int | tuple[int, int] = (64, 64)) -> dict:
    """{"dataset", "image_size": [H, W], "splits": {split: {"samples": N, "pixels": {"0": n, ...}}}}.

    Every split is decoded (through the cache, which this builds or reuses), so a bad
    file raises DatasetError naming it. Pixel counts are taken after label mapping;
    "255" (ignore) appears only where such pixels exist.
    """
    from trainables.data import NUM_CLASSES, SPLITS, as_size, load_split  # the package imports this module

    if dataset not in SPLITS:
        raise ConfigError(f"unknown dataset {dataset!r}; known: {list(SPLITS)}")
    size = as_size(image_size)
    report = {"dataset": dataset, "image_size": list(size), "splits": {}}
    for split in SPLITS[dataset]:
        arrays = load_split(dataset, root, split, size)
        counts = np.bincount(np.asarray(arrays.masks).ravel(), minlength=256)
        pixels = {str(class_id): int(counts[class_id]) for class_id in range(NUM_CLASSES[dataset])}
        if counts[255]:
            pixels["255"] = int(counts[255])
        report["splits"][split] = {"samples": int(arrays.masks.shape[0]), "pixels": pixels}
    return report
