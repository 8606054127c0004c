"""What each dataset is: its splits, class names and colours (what a report, a prediction and an export
name and draw). Plain Python: the readers of a study's record import this without numpy.

Cityscapes' come from the official `cityscapesscripts` table (names and colours of the 19 train
ids); the pets' three trimap classes get names and colours of their own.
"""

from __future__ import annotations

from cityscapesscripts.helpers.labels import labels as OFFICIAL_LABELS

IGNORE_INDEX = 255
SPLITS = {"pets": ("trainval", "test"), "cityscapes": ("train", "val")}  # (train split, validation split)
_TRAINED = sorted((label for label in OFFICIAL_LABELS if 0 <= label.trainId < IGNORE_INDEX),
                  key=lambda label: label.trainId)
CLASS_NAMES = {
    "pets": ("pet", "background", "border"),
    "cityscapes": tuple(label.name for label in _TRAINED),
}
# RGB per class id; ignored pixels are drawn black.
PALETTES = {
    "pets": ((230, 159, 0), (86, 180, 233), (240, 228, 66)),
    "cityscapes": tuple(tuple(label.color) for label in _TRAINED),
}
NUM_CLASSES = {name: len(names) for name, names in CLASS_NAMES.items()}


def class_names(dataset: str | None, count: int) -> list[str]:
    """The dataset's class names; "class i" past their end (or for a dataset not known)."""
    known = CLASS_NAMES.get(dataset, ())
    return [known[i] if i < len(known) else f"class {i}" for i in range(count)]


def palette(dataset: str | None, count: int) -> list[tuple[int, int, int]]:
    """An RGB colour per class id: the dataset's own, then distinct greys past their end."""
    known = PALETTES.get(dataset, ())
    return [known[i] if i < len(known) else (40 + (i * 37) % 200,) * 3 for i in range(count)]
