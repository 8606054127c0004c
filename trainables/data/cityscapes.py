"""Cityscapes (fine annotations): file listing through torchvision, 19 train ids.

`root` is the folder that contains `leftImg8bit/` and `gtFine/`. Raw label ids map
to train ids through cityscapesscripts' official table (255 for the ids that are
not trained on); a `*_gtFine_labelTrainIds.png` beside a labelIds file is used as
it is. torchvision is imported only where the files are listed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as OFFICIAL_LABELS

from trainables.data.cache import Sample, open_label, unexpected_values
from trainables.data.classes import CLASS_NAMES as CLASSES
from trainables.data.classes import SPLITS as ALL_SPLITS
from trainables.errors import DatasetError

SPLITS = ALL_SPLITS["cityscapes"]
IGNORE = 255
CLASS_NAMES = CLASSES["cityscapes"]

KNOWN_IDS = tuple(label.id for label in OFFICIAL_LABELS if label.id >= 0)  # license plate (-1) never appears in files
ID_TO_TRAIN_ID = np.full(256, IGNORE, dtype=np.uint8)
for _label in OFFICIAL_LABELS:
    if _label.id >= 0 and 0 <= _label.trainId < IGNORE:
        ID_TO_TRAIN_ID[_label.id] = _label.trainId
TRAIN_IDS = (*range(len(CLASS_NAMES)), IGNORE)

EXPECTED_LAYOUT = """\
<root>/
  leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
  gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
                        (optional: ..._gtFine_labelTrainIds.png beside it, used as it is)"""


def list_samples(root: Path, split: str) -> list[Sample]:
    """The split's (image, label) files, sorted by image path."""
    if not root.is_dir():
        raise DatasetError(f"cityscapes dataset at {root}: the folder {root} does not exist; expected this layout:\n"
                           f"{EXPECTED_LAYOUT}")
    for needed in (root / "leftImg8bit" / split, root / "gtFine" / split):
        if not needed.is_dir():
            hint = ""
            if root.name in ("leftImg8bit", "gtFine"):  # a common slip: one of the two folders itself
                hint = f"\npass the folder that holds both leftImg8bit/ and gtFine/, e.g. {root.parent}"
            raise DatasetError(
                f"cityscapes dataset at {root}: {needed} is missing; expected this layout:\n{EXPECTED_LAYOUT}{hint}")

    from torchvision.datasets import Cityscapes

    try:
        listing = Cityscapes(root, split=split, mode="fine", target_type="semantic")
    except OSError as error:  # e.g. a stray file where torchvision expects only city folders
        raise DatasetError(f"cannot list the cityscapes {split} split at {root}: {error}") from error
    samples = []
    # torchvision lists in directory order, which differs between file systems
    for image, (label_ids,) in sorted(zip(listing.images, listing.targets)):
        if not image.endswith("_leftImg8bit.png"):
            continue
        train_ids = label_ids.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
        if os.path.exists(train_ids):
            samples.append(Sample(image, train_ids, read_train_ids))
        elif os.path.exists(label_ids):
            samples.append(Sample(image, label_ids, read_label_ids))
        else:
            raise DatasetError(f"the image {image} has no label file: expected {label_ids}")
    return samples


def label_files(image_name: str) -> list[tuple[str, Callable[[str], np.ndarray]]]:
    """File names that may hold an image's labels, preferred first, with their readers:
    `{city}_{seq}_{frame}_leftImg8bit.png` -> `..._gtFine_labelTrainIds.png` (as it is), `..._gtFine_labelIds.png`."""
    suffix = "_leftImg8bit.png"
    base = image_name[: -len(suffix)] if image_name.endswith(suffix) else Path(image_name).stem
    return [(f"{base}_gtFine_labelTrainIds.png", read_train_ids), (f"{base}_gtFine_labelIds.png", read_label_ids)]


def read_label_ids(path: str) -> np.ndarray:
    values = open_label(path)
    bad = unexpected_values(values, KNOWN_IDS)
    if bad:
        raise DatasetError(f"{path}: label ids {bad} are not in the Cityscapes label table (ids 0-33)")
    return ID_TO_TRAIN_ID[values]


def read_train_ids(path: str) -> np.ndarray:
    values = open_label(path)
    bad = unexpected_values(values, TRAIN_IDS)
    if bad:
        raise DatasetError(f"{path}: train ids must be 0-{len(CLASS_NAMES) - 1} or {IGNORE}; found {bad}")
    return values.astype(np.uint8)
