"""Oxford-IIIT Pet: file listing through torchvision, trimaps read as 3 classes.

`root` is the folder that contains `oxford-iiit-pet/`, as for
`torchvision.datasets.OxfordIIITPet`. torchvision (and with it torch) is imported
only where the files are listed, so that `study data synth` starts quickly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainables.data.cache import Sample, open_label, unexpected_values
from trainables.data.classes import CLASS_NAMES as CLASSES
from trainables.data.classes import SPLITS as ALL_SPLITS
from trainables.errors import DatasetError

SPLITS = ALL_SPLITS["pets"]
SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*\Z")
CLASS_NAMES = CLASSES["pets"]

EXPECTED_LAYOUT = """\
<root>/
  oxford-iiit-pet/
    images/<Name>.jpg                    e.g. Abyssinian_100.jpg, beagle_12.jpg
    annotations/
      trainval.txt, test.txt             lines 'Abyssinian_100 1 1 1' (name class species breed)
      trimaps/<Name>.png                 1 pet, 2 background, 3 border"""


def list_samples(root: Path, split: str) -> list[Sample]:
    """The split's (image, trimap) files, sorted by image path."""
    base = root / "oxford-iiit-pet"
    list_file = base / "annotations" / f"{split}.txt"
    if not root.is_dir():
        raise DatasetError(f"pets dataset at {root}: the folder {root} does not exist; expected this layout:\n"
                           f"{EXPECTED_LAYOUT}")
    for needed in (base / "images", base / "annotations" / "trimaps", list_file):
        if not needed.exists():
            hint = ""
            if (root / "annotations").is_dir():  # a common slip: the dataset folder itself
                hint = f"\n{root} looks like the oxford-iiit-pet folder itself: pass its parent folder, {root.parent}"
            raise DatasetError(
                f"pets dataset at {root}: {needed} is missing; expected this layout:\n{EXPECTED_LAYOUT}{hint}")
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{list_file}: not UTF-8 text (byte {error.start}); expected lines "
                           f"'Name class species breed'") from None
    # torchvision would fail on a malformed line with a bare unpacking error
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if len(fields) != 4 or not all(field.isdigit() for field in fields[1:]):
            raise DatasetError(f"{list_file}, line {number}: expected 'Name class species breed', got {line!r:.120}")
        if not SAFE_NAME.match(fields[0]):  # the name becomes a path under images/ and trimaps/: never outside
            raise DatasetError(f"{list_file}, line {number}: {fields[0]!r:.120} is not an image name (letters, digits "
                               f"and _ . + - only, no folders); it would name a file outside {base}")

    from torchvision.datasets import OxfordIIITPet

    listing = OxfordIIITPet(root, split=split, target_types="segmentation", download=False)
    # torchvision keeps the file lists in private attributes; the paths are what the
    # decoder opens (and what every error message names).
    pairs = sorted(zip(map(str, listing._images), map(str, listing._segs)))
    return [Sample(image, trimap, read_trimap) for image, trimap in pairs]


def label_files(image_name: str) -> list[tuple[str, Callable[[str], np.ndarray]]]:
    """The file name of an image's trimap (`Abyssinian_1.jpg` -> `Abyssinian_1.png`) with its reader."""
    return [(f"{Path(image_name).stem}.png", read_trimap)]


def read_trimap(path: str) -> np.ndarray:
    """Trimap 1 pet / 2 background / 3 border -> class ids 0 / 1 / 2."""
    values = open_label(path)
    bad = unexpected_values(values, allowed=(1, 2, 3))
    if bad:
        raise DatasetError(f"{path}: trimap values must be 1 (pet), 2 (background) or 3 (border); found {bad}")
    return (values - 1).astype(np.uint8)
