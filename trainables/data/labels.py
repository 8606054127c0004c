"""A mask's pixel values -> class ids (uint8, 255 = ignored), with every surprise named.

`LabelReader(declaration)` holds a table from every raw value (0-65535) to its class id, 255, or
"not allowed" (-1), built once from the declaration (declaration.py's docstring says in which order the
fields apply); reading a mask is one bincount (which values occur, how often) and one table lookup.
A problem (an RGB mask under `index`, a colour not in the palette, a value that is no class) is
returned as one line naming the file, the values and their pixel counts, never raised: the cache and
the check collect every problem of a split before they stop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainables.data.declaration import MAX_VALUE, DataDeclaration
from trainables.data.presets import PRESETS
from trainables.errors import DatasetError

IGNORED = 255  # what the cache stores for an ignored pixel
NOT_ALLOWED = -1
SHOWN_VALUES = 8  # values (or colours) listed per file before "and N more"


class Sample(NamedTuple):
    image: str  # an image file, or the Parquet shard that holds the row
    label: str  # its mask file, or the same shard
    labels: LabelReader  # reads the mask's values into class ids
    row: int | None = None  # the row in a Parquet shard; None: image and label are files
    fetch: Callable[[Sample], tuple[bytes, bytes]] | None = None  # a row's image and mask bytes


def sample_name(sample: Sample, which: str) -> str:
    """What messages call a sample's image or mask: its file, or "<shard>, row N (<column>)"."""
    if sample.row is None:
        return sample.image if which == "image" else sample.label
    return f"{sample.image}, row {sample.row} ({which})"


class LabelReader:
    """Reads masks as the declaration says; `ready`: files that already hold class ids (the preset's
    READY_MASK_SUFFIX files), read with no label_map and no reduce_zero_label."""

    def __init__(self, declaration: DataDeclaration, ready: bool = False):
        self.declaration, self.ready = declaration, ready
        self.rgb = declaration.mask_encoding == "rgb" and not ready
        self.table = value_table(declaration, ready)
        self.lookup = np.where(self.table >= 0, self.table, 0).astype(np.uint8)  # applied once values are valid
        self.key = json.dumps(label_semantics(declaration, ready), sort_keys=True)
        self.tag = hashlib.sha256(self.key.encode()).hexdigest()[:12]  # what the cache's per-file records name
        if self.rgb:
            codes = [_code(c) for c in declaration.palette] + [_code(c) for c in declaration.ignore_colors]
            values = list(range(len(declaration.palette))) + [declaration.ignore_index] * len(declaration.ignore_colors)
            order = np.argsort(codes)
            self.codes = np.asarray(codes, np.int64)[order]
            self.code_values = np.asarray(values, np.int64)[order]

    def read(self, mask: Image.Image, name: str) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
        """(uint8 class ids H,W or None; the count of each raw value (index masks) or None; problems)."""
        if self.rgb:
            values, problems = self._palette_values(mask, name)
            if values is None:
                return None, None, problems
            counts = np.bincount(values.ravel(), minlength=len(self.table))
        else:
            values, problems = self._index_values(mask, name)
            if values is None:
                return None, None, problems
            counts = np.bincount(values.ravel(), minlength=256)
        bad = np.flatnonzero((counts[: len(self.table)] > 0) & (self.table[: len(counts)] < 0))
        if bad.size:
            return None, None, [self._bad_values_line(name, bad, counts)]
        classes = self.lookup[values]
        return classes, (None if self.rgb else counts), []

    def read_file(self, path: str) -> np.ndarray:
        """A mask file's class ids; the first problem raised as DatasetError (for one file, e.g. ground truth)."""
        classes, _, problems = self.read(open_label_image(path), path)
        if problems:
            raise DatasetError(problems[0])
        return classes

    def _index_values(self, mask: Image.Image, name: str) -> tuple[np.ndarray | None, list[str]]:
        mode = mask.mode
        if mode in ("L", "P"):
            return np.asarray(mask), []
        if mode == "1":
            return np.asarray(mask).astype(np.uint8), []
        if mode.startswith("I"):
            values = np.asarray(mask).astype(np.int64)
            outside = values[(values < 0) | (values > MAX_VALUE)]
            if outside.size:
                found, counts = np.unique(outside, return_counts=True)
                return None, [f"{name}: values outside 0-{MAX_VALUE}: {_listed(found, counts)}"]
            return values.astype(np.int32), []
        fix = ("declare mask_encoding: rgb with a palette of its colours, or save the masks as single-channel class "
               "ids (mode L or P)")
        if mode in ("RGB", "RGBA"):
            pixels = np.asarray(mask)
            if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
                fix = "its three channels are equal: save one channel, e.g. Image.open(mask).convert('L')"
        return None, [f"{name}: an RGB mask (mode {mode}) but mask_encoding is index; {fix}"]

    def _palette_values(self, mask: Image.Image, name: str) -> tuple[np.ndarray | None, list[str]]:
        if mask.mode.startswith(("I", "F")):
            return None, [f"{name}: a {mask.mode} mask (integer values) but mask_encoding is rgb; expected colours"]
        pixels = np.asarray(mask.convert("RGB")).astype(np.int64)
        codes = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
        where = np.searchsorted(self.codes, codes).clip(max=len(self.codes) - 1)
        known = self.codes[where] == codes
        if not known.all():
            found, counts = np.unique(codes[~known], return_counts=True)
            colours = [f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) in {_pixels(n)}"
                       for c, n in zip(found[:SHOWN_VALUES].tolist(), counts[:SHOWN_VALUES].tolist())]
            more = f", and {len(found) - SHOWN_VALUES} more colours" if len(found) > SHOWN_VALUES else ""
            return None, [f"{name}: colours not in the palette: {', '.join(colours)}{more}; add each to palette "
                          f"(a class) or ignore_colors"]
        return self.code_values[where].astype(np.int32), []

    def _bad_values_line(self, name: str, bad: np.ndarray, counts: np.ndarray) -> str:
        d = self.declaration
        how = ""
        if not self.ready and d.reduce_zero_label:
            how = " after reduce_zero_label (value k is class k-1)"
        elif not self.ready and d.label_map:
            how = " after label_map"
        what = "palette positions" if self.rgb else "values"
        return (f"{name}: {what} outside the classes (0-{d.num_classes - 1}) and the ignore index "
                f"({d.ignore_index}){how}: {_listed(bad, counts[bad])}")


def value_table(declaration: DataDeclaration, ready: bool = False) -> np.ndarray:
    """int16 per raw value 0-65535: its class id, IGNORED, or NOT_ALLOWED."""
    d = declaration
    raw = np.arange(MAX_VALUE + 1, dtype=np.int64)
    if ready:
        mapped = raw
    elif d.reduce_zero_label:
        mapped = np.where((raw == 0) | (raw == d.ignore_index), d.ignore_index, raw - 1)
    else:
        mapped = raw.copy()
        for value, class_id in d.label_map.items():
            mapped[value] = class_id
    ignore = IGNORED if ready else d.ignore_index
    table = np.where(mapped == ignore, IGNORED, np.where(mapped < d.num_classes, mapped, NOT_ALLOWED))
    return table.astype(np.int16)


def label_semantics(declaration: DataDeclaration, ready: bool = False) -> dict:
    """Everything that decides a mask's class ids (cache keys and fingerprints cover it)."""
    d = declaration
    semantics = {"classes": d.num_classes, "ready": ready}
    if not ready:
        semantics.update(encoding=d.mask_encoding, ignore_index=d.ignore_index,
                         reduce_zero_label=d.reduce_zero_label, label_map=sorted(d.label_map.items()))
        if d.mask_encoding == "rgb":
            semantics.update(palette=[list(c) for c in d.palette], ignore_colors=[list(c) for c in d.ignore_colors])
    return semantics


def unreadable(error: Exception) -> str:
    """Why PIL could not read a file, without PIL's repr of an in-memory file (Parquet rows have no path)."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow can read (truncated, damaged or another format)"
    return str(error)


def open_label_image(source, name: str | None = None) -> Image.Image:
    """A mask image, loaded (a path, or a file object named `name` in messages)."""
    try:
        with Image.open(source) as label:
            label.load()
        return label
    except Exception as error:
        raise DatasetError(f"cannot read label image {name or source}: {unreadable(error)}") from error


def value_warnings(declaration: DataDeclaration, role: str, raw_values: list[int]) -> list[str]:
    """The binary-mask traps: a split's masks hold only {0, 255}, or only {0, 1} (besides the ignore index),
    where the declaration reads them as fewer than two classes, or declares more classes than two values hold."""
    d = declaration
    present = set(raw_values)
    if present != {0, 255}:
        present -= {d.ignore_index}
    if present not in ({0, 255}, {0, 1}) or d.mask_encoding != "index":
        return []
    high = max(present)
    read = {value: d.class_of_value(value) for value in sorted(present)}
    where = f"the {role} masks hold only 0 and {high}"
    if read[high] is None and read[0] is None:
        return [f"{where}; both are read as ignored, so no pixel is trained; for binary masks set "
                f"reduce_zero_label: false and label_map: {{{high}: 1}}"]
    if read[high] is None:
        return [f"{where}; {high} is read as ignored, so no pixel is foreground; if {high} is a class, set "
                f"label_map: {{{high}: 1}}"]
    if read[0] is None:
        return [f"{where}; reduce_zero_label reads 0 as ignored and {high} as class {read[high]}, so only one class "
                f"is trained; if 0 is a class (background), set reduce_zero_label: false"]
    if read[0] == read[high]:
        return [f"{where}; label_map reads both as class {read[0]}, so only one class is trained"]
    if d.num_classes > 2:
        return [f"{where} (binary masks), but {d.num_classes} classes are declared; classes "
                f"{sorted(set(range(d.num_classes)) - set(read.values()))[:10]} never appear; if the masks are "
                f"binary, declare two classes"]
    return []


def unmatched_label_map(declaration: DataDeclaration, raw_values: list[int]) -> list[str]:
    """A warning when a label_map key the user wrote is a value no mask of any split holds: the map was likely
    written for other masks (e.g. {255: 1} for masks that hold 0/1), and the values it should have caught are
    read as is. A preset's own map (Cityscapes' label ids) is a table of every id, not a guess: never warned."""
    preset = PRESETS.get(declaration.format, {}).get("label_map", {})
    written = {key for key, value in declaration.label_map.items() if preset.get(key) != value}
    unmatched = sorted(written - set(raw_values))
    if not unmatched:
        return []
    held = sorted(set(raw_values))
    shown = ", ".join(map(str, held[:SHOWN_VALUES])) + (", ..." if len(held) > SHOWN_VALUES else "")
    return [f"label_map: no mask holds the value(s) {', '.join(map(str, unmatched))}; the masks hold {shown}: "
            f"check that the map was written for these masks"]


def _code(colour) -> int:
    return (int(colour[0]) << 16) | (int(colour[1]) << 8) | int(colour[2])


def _pixels(count: int) -> str:
    return f"{count:,} pixel" + ("" if count == 1 else "s")


def _listed(values: np.ndarray, counts: np.ndarray) -> str:
    shown = [f"{v} ({_pixels(n)})" for v, n in zip(values[:SHOWN_VALUES].tolist(), counts[:SHOWN_VALUES].tolist())]
    more = f", and {len(values) - SHOWN_VALUES} more values" if len(values) > SHOWN_VALUES else ""
    return ", ".join(shown) + more
