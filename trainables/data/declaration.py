"""A dataset's declaration: where its images and masks are and what a mask's values mean.

One frozen dataclass whose fields are the keys of a study file's `datasets.<name>` entry (each field's
meaning in `metadata["doc"]`, from which the README's reference is made), the presets as fixed values
of those fields (presets.py), and `declare`, which validates an entry and returns every problem with
its key path instead of raising. Plain Python: the study side reads declarations without numpy.

How a mask becomes class ids (labels.py does it, check.py counts it): index masks are read as they
are (P-mode PNGs by palette index), rgb masks through `palette` (a colour's position is its value,
`ignore_colors` are ignored); then `reduce_zero_label` (0 -> ignored, k -> k-1) or `label_map` (raw value
-> class id or ignore_index; other values pass unchanged); then every value must be a class id or
`ignore_index`, which the cache stores as 255.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from trainables.data.classes import distinct_colours
from trainables.data.presets import PRESETS
from trainables.errors import ConfigError

FORMATS = ("folder", "parquet", *PRESETS)
ENCODINGS = ("index", "rgb")
ROLES = ("train", "val")
SPLIT_KINDS = ("{subdir: X}", "{list: FILE}", "{images: A, masks: B}", "{fraction: F, seed: S} (val only)")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
MAX_CLASSES = 255  # class ids are stored as uint8 beside the ignore value 255
MAX_VALUE = 65535  # the largest value of a 16-bit mask
FOLDER_KEYS = ("images", "masks", "image_suffix", "mask_suffix", "splits")
PARQUET_KEYS = ("files", "image_column", "label_column", "id2label")


def _key(default: Any, doc: str) -> Any:
    if callable(default):
        return field(default_factory=default, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class DataDeclaration:
    format: str = field(metadata={"doc": "folder, parquet, pets, cityscapes, voc or ade20k (the last four are "
                                         "presets: fixed values of every other key)"})
    images: str = _key("images", "folder: the images' folder under root, searched recursively")
    masks: str = _key("masks", "folder: the masks' folder under root; a pair = the same relative path with the "
                               "suffixes swapped")
    image_suffix: str = _key(".jpg", "folder: how an image's file name ends")
    mask_suffix: str = _key(".png", "folder: how a mask's file name ends, e.g. _mask.png or "
                                    "_gtFine_labelTrainIds.png; .jpg masks are refused (lossy)")
    mask_encoding: str = _key("index", "index (pixel value = class id; P-mode PNGs too) or rgb (colour -> class id "
                                       "through palette)")
    classes: tuple[str, ...] = _key((), "class names; class id = position; required for folder and parquet "
                                        "(parquet: or id2label)")
    palette: tuple[tuple[int, int, int], ...] | None = _key(None, "[[r, g, b], ...]: rgb: required, a colour's "
                                                                  "position is its value; index: drawing colours "
                                                                  "per class (optional)")
    ignore_colors: tuple[tuple[int, int, int], ...] = _key((), "rgb only: mask colours read as ignored")
    ignore_index: int = _key(255, "the value read as ignored after reduce_zero_label / label_map; not a class id")
    reduce_zero_label: bool = _key(False, "ADE20K style: 0 -> ignored, k -> k-1")
    label_map: dict[int, int] = _key(dict, "raw file value -> class id or ignore_index, e.g. {255: 1} for 0/255 "
                                           "masks; values not in it pass unchanged; not with reduce_zero_label")
    splits: dict[str, dict] = _key(dict, "folder: the roles train and val, each one of {subdir: X} (images/X + "
                                         "masks/X), {list: FILE} (one relative stem per line), {images: A, masks: "
                                         "B} (sibling folders under root), {fraction: F, seed: S} (val only: "
                                         "carved from the folder; train, omitted, is the rest)")
    files: dict[str, str] = _key(dict, "parquet: {train: GLOB, val: GLOB}, shards under root, e.g. "
                                       "data/train-*.parquet")
    image_column: str = _key("image", "parquet: the images' column (struct {bytes, path}, as the Hub stores it)")
    label_column: str = _key("label", "parquet: the masks' column (struct {bytes, path})")
    id2label: str | None = _key(None, 'parquet: a JSON file under root, {"0": "name", ...}, giving the classes')

    def __hash__(self) -> int:  # the dict fields are never changed after construction
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def colours(self) -> list[tuple[int, int, int]]:
        """An RGB colour per class id: the palette's (under rgb, the colour each class is read from), else
        distinct generated colours."""
        generated = distinct_colours(self.num_classes)
        if self.palette is None:
            return generated
        if self.mask_encoding == "index":
            return [tuple(c) for c in self.palette]
        found: dict[int, tuple[int, int, int]] = {}
        for position, colour in enumerate(self.palette):
            class_id = self.class_of_value(position)
            if class_id is not None:
                found.setdefault(class_id, tuple(colour))
        return [found.get(k, generated[k]) for k in range(self.num_classes)]

    @property
    def is_preset(self) -> bool:
        return self.format in PRESETS

    def class_of_value(self, raw: int) -> int | None:
        """The class id a raw mask value (rgb: a palette position) is read as; None: ignored, or no class."""
        if self.reduce_zero_label:
            mapped = None if raw in (0, self.ignore_index) else raw - 1
        else:
            mapped = self.label_map.get(raw, raw)
        if mapped is None or mapped == self.ignore_index or not 0 <= mapped < self.num_classes:
            return None
        return mapped

    def split_name(self, role: str) -> str:
        """A split's own name: its subdir, its list file's stem, its images folder; else the role.
        Cache folders are named by it, and for the presets it is the dataset's (pets: trainval, test)."""
        spec = self.splits.get(role) or {}
        if "subdir" in spec:
            return str(spec["subdir"])
        if "list" in spec:
            return PurePosixPath(spec["list"]).stem
        if "images" in spec:
            return str(spec["images"])
        return role

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists for tuples, string keys for label_map (from_dict reads it back)."""
        values = dataclasses.asdict(self)
        values["classes"] = list(self.classes)
        values["palette"] = None if self.palette is None else [list(c) for c in self.palette]
        values["ignore_colors"] = [list(c) for c in self.ignore_colors]
        values["label_map"] = {str(k): v for k, v in sorted(self.label_map.items())}
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataDeclaration:
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown dataset declaration key(s) {unknown}; known: {list(FIELDS)}")
        values = dict(values)
        values["classes"] = tuple(values.get("classes") or ())
        if values.get("palette") is not None:
            values["palette"] = tuple(tuple(int(v) for v in c) for c in values["palette"])
        values["ignore_colors"] = tuple(tuple(int(v) for v in c) for c in values.get("ignore_colors") or ())
        values["label_map"] = {int(k): int(v) for k, v in (values.get("label_map") or {}).items()}
        values["splits"] = {role: dict(spec) for role, spec in (values.get("splits") or {}).items()}
        values["files"] = dict(values.get("files") or {})
        return cls(**values)


FIELDS = {f.name: f for f in dataclasses.fields(DataDeclaration)}


def reference() -> str:
    """The README's reference of a declaration's keys (tests/test_readme.py keeps the two equal)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for name, item in FIELDS.items():
        if item.default is not dataclasses.MISSING:
            default = json.dumps(item.default)
        elif item.default_factory is not dataclasses.MISSING:
            default = json.dumps(item.default_factory())
        else:
            default = "required"
        lines.append(f"| `{name}` | `{default}` | {item.metadata['doc']} |")
    return "\n".join(lines)


def preset(name: str) -> DataDeclaration:
    """The preset declaration of pets, cityscapes, voc or ade20k."""
    if name not in PRESETS:
        raise ConfigError(f"{name!r} is not a preset dataset (presets: {', '.join(PRESETS)}); declare it under "
                          f"datasets in the study file and pass its declaration")
    return DataDeclaration.from_dict(PRESETS[name])


# -- validation ------------------------------------------------------------------------
Problems = list[tuple[str, str]]


def declare(name: str, mapping: Any, root: str | Path) -> tuple[DataDeclaration | None, Problems]:
    """Validate a study file's entry (without the study's own keys root, env and generate).

    Returns (the declaration, []) or (None, every problem as (key path in the entry, message)); never
    raises. An entry without `format` named after a preset is that preset. `root` is read for id2label.
    """
    problems: Problems = []
    if not isinstance(mapping, dict):
        return None, [("", f"expected a mapping of declaration keys, got {_shown(mapping)}")]
    values = dict(mapping)
    form = values.get("format", name if name in PRESETS else None)
    if form is None:
        return None, [("format", f"required: one of {list(FORMATS)}")]
    if form not in FORMATS:
        return None, [("format", f"expected one of {list(FORMATS)}, got {_shown(form)}{_suggest(form, FORMATS)}")]
    for key in values:
        if key not in FIELDS:
            problems.append((str(key), f"unknown key{_suggest(key, FIELDS)}; known: {', '.join(FIELDS)}"))
    if form in PRESETS:
        for key in values:
            if key in FIELDS and key != "format":
                problems.append((key, f"format {form} is a preset: its {key} is fixed; remove {key}, or declare "
                                      f"format: folder with the values you need"))
        return (None, problems) if problems else (preset(form), [])
    for key in values:
        wrong_format = FOLDER_KEYS if form == "parquet" else PARQUET_KEYS
        if key in wrong_format:
            problems.append((key, f"only for format {'folder' if form == 'parquet' else 'parquet'}"))
    checked = _Checker(values, problems)
    fields: dict[str, Any] = {"format": form}
    if form == "folder":
        for key in ("images", "masks"):
            fields[key] = checked.path(key, FIELDS[key].default)
        for key in ("image_suffix", "mask_suffix"):
            fields[key] = checked.suffix(key, FIELDS[key].default)
        if fields["mask_suffix"].lower().endswith(LOSSY_SUFFIXES):
            problems.append(("mask_suffix", f"masks saved as JPEG are lossy (their values change at every edge); "
                                            f"save them as PNG, got {fields['mask_suffix']!r}"))
        if (fields["images"], fields["image_suffix"]) == (fields["masks"], fields["mask_suffix"]):
            problems.append(("mask_suffix", "images and masks share a folder and a suffix: a file cannot be both"))
    else:
        fields["image_column"] = checked.text("image_column", "image")
        fields["label_column"] = checked.text("label_column", "label")
    fields["mask_encoding"] = checked.choice("mask_encoding", ENCODINGS, "index")
    fields["classes"], fields["id2label"] = _classes(form, checked, root)
    count = len(fields["classes"])
    fields["palette"] = checked.colours("palette", None)
    rgb = fields["mask_encoding"] == "rgb"
    fields["ignore_colors"] = checked.colours("ignore_colors", ())
    if fields["ignore_colors"] and not rgb:
        problems.append(("ignore_colors", "only with mask_encoding: rgb (index masks ignore ignore_index)"))
    fields["ignore_index"] = checked.integer("ignore_index", 255, 0, MAX_VALUE)
    if count and fields["ignore_index"] < count:
        problems.append(("ignore_index", f"expected a value that is not a class id (>= {count}, e.g. 255), got "
                                         f"{fields['ignore_index']}"))
    fields["reduce_zero_label"] = checked.boolean("reduce_zero_label", False)
    fields["label_map"] = checked.label_map(count, fields["ignore_index"])
    if fields["label_map"] and fields["reduce_zero_label"]:
        problems.append(("label_map", "not with reduce_zero_label (both rewrite the values): keep one; "
                                      "reduce_zero_label is label_map {0: ignore_index, k: k-1}"))
    transformed = bool(fields["label_map"]) or fields["reduce_zero_label"]
    _check_palette(fields, rgb, transformed, count, problems)
    if form == "folder":
        fields["splits"] = _splits(checked)
    else:
        fields["files"] = _files(checked)
    if problems:
        return None, problems
    return DataDeclaration(**fields), []


def _classes(form: str, checked: _Checker, root) -> tuple[tuple[str, ...], str | None]:
    values, problems = checked.values, checked.problems
    if "classes" in values and values.get("id2label") is not None:
        problems.append(("id2label", "give classes or id2label, not both"))
        return (), None
    if values.get("id2label") is not None and form == "parquet":
        where = checked.path("id2label", None)
        return _read_id2label(Path(root) / where, problems) if where else (), where
    if "classes" not in values:
        needed = "classes (or id2label)" if form == "parquet" else "classes"
        problems.append(("classes", f"required for format {form}: {needed}, the class names in id order, e.g. "
                                    f"[background, road, car]"))
        return (), None
    classes = values["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) and c.strip() for c in classes):
        problems.append(("classes", f"expected a list of class names, got {_shown(classes)}"))
        return (), None
    if not 1 <= len(classes) <= MAX_CLASSES:
        problems.append(("classes", f"expected 1 to {MAX_CLASSES} classes, got {len(classes)}"))
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        problems.append(("classes", f"each class once: {repeated} repeat"))
    return tuple(classes), None


def _read_id2label(path: Path, problems: Problems) -> tuple[str, ...]:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(("id2label", f"cannot read {path}: {error}"))
        return ()
    expected = 'expected {"0": "name", "1": "name", ...} with every id from 0'
    if not isinstance(table, dict) or not all(isinstance(v, str) and v.strip() for v in table.values()):
        problems.append(("id2label", f"{path}: {expected}, got {_shown(table)}"))
        return ()
    ids = sorted(int(k) for k in table if str(k).isdigit())
    if len(ids) != len(table) or ids != list(range(len(ids))) or not 1 <= len(ids) <= MAX_CLASSES:
        problems.append(("id2label", f"{path}: {expected} to N-1 (1 to {MAX_CLASSES} classes), got the keys "
                                     f"{sorted(table, key=str)[:10]}"))
        return ()
    return tuple(table[str(i)] for i in ids)


def _check_palette(fields: dict, rgb: bool, transformed: bool, count: int, problems: Problems) -> None:
    palette = fields["palette"]
    if palette is None:
        if rgb:
            problems.append(("palette", "required with mask_encoding: rgb: the colour of each class id, e.g. "
                                        "[[0, 0, 0], [128, 64, 128]]"))
        return
    if rgb:
        repeated = sorted({c for c in palette if palette.count(c) > 1})
        if repeated:
            problems.append(("palette", f"each colour once (a colour is read as one class): {repeated} repeat"))
        both = sorted(set(palette) & set(fields["ignore_colors"]))
        if both:
            problems.append(("ignore_colors", f"{both} are in the palette too"))
    if count and len(palette) != count and not (rgb and transformed):
        problems.append(("palette", f"expected one colour per class ({count}), got {len(palette)}"))


def _splits(checked: _Checker) -> dict[str, dict]:
    splits, problems = checked.values.get("splits"), checked.problems
    example = "e.g. {train: {subdir: train}, val: {subdir: val}} or {val: {fraction: 0.15, seed: 0}}"
    if splits is None:
        problems.append(("splits", f"required for format folder: {example}"))
        return {}
    if not isinstance(splits, dict):
        problems.append(("splits", f"expected a mapping of the roles train and val, {example}; got {_shown(splits)}"))
        return {}
    result = {}
    for role, spec in splits.items():
        path = f"splits.{role}"
        if role not in ROLES:
            problems.append((path, f"unknown role{_suggest(role, ROLES)}; the roles are train and val"))
            continue
        kinds = [k for k in ("subdir", "list", "images", "fraction") if isinstance(spec, dict) and k in spec]
        if len(kinds) != 1:
            problems.append((path, f"expected one of {', '.join(SPLIT_KINDS)}, got {_shown(spec)}"))
            continue
        kind = kinds[0]
        allowed = {"subdir": {"subdir"}, "list": {"list"}, "images": {"images", "masks"},
                   "fraction": {"fraction", "seed"}}[kind]
        for extra in sorted(set(spec) - allowed, key=str):
            problems.append((f"{path}.{extra}", f"unknown key for a {{{kind}: ...}} split; expected "
                                                f"{' and '.join(sorted(allowed))}"))
        sub = _Checker(spec, problems, prefix=f"{path}.")
        if kind == "fraction":
            if role != "val":
                problems.append((f"{path}.fraction", "only val is carved as a fraction; train is the rest"))
            fraction = spec["fraction"]
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                problems.append((f"{path}.fraction", f"expected a number between 0 and 1, got {_shown(fraction)}"))
            result[role] = {"fraction": float(fraction) if isinstance(fraction, (int, float)) else fraction,
                            "seed": sub.integer("seed", 0, 0, 2**32 - 1)}
        elif kind == "images":
            if "masks" not in spec:
                problems.append((f"{path}.masks", "required beside images: the masks' sibling folder"))
            result[role] = {"images": sub.path("images", ""), "masks": sub.path("masks", "")}
        else:
            result[role] = {kind: sub.path(kind, "")}
    carved = "fraction" in result.get("val", {})
    if "val" not in splits:
        problems.append(("splits.val", f"required: the validation split, {example}"))
    elif carved and "train" in splits:
        problems.append(("splits.train", "omit it when val is a fraction: train is the rest of the folder"))
    elif not carved and "train" not in splits:
        problems.append(("splits.train", "required (unless val is {fraction: F}, when train is the rest)"))
    return result


def _files(checked: _Checker) -> dict[str, str]:
    files, problems = checked.values.get("files"), checked.problems
    example = 'e.g. {train: "data/train-*.parquet", val: "data/validation-*.parquet"}'
    if not isinstance(files, dict):
        problems.append(("files", f"required for format parquet: the shards of each role, {example}; got "
                                  f"{_shown(files)}"))
        return {}
    sub = _Checker(files, problems, prefix="files.")
    for role in files:
        if role not in ROLES:
            problems.append((f"files.{role}", f"unknown role{_suggest(role, ROLES)}; the roles are train and val"))
    for role in ROLES:
        if role not in files:
            problems.append((f"files.{role}", f"required: the {role} shards, {example}"))
    return {role: sub.path(role, "") for role in ROLES if role in files}


class _Checker:
    """Reads one key of a mapping at a time, adding (key path, message) for a bad value and returning a default."""

    def __init__(self, values: dict, problems: Problems, prefix: str = ""):
        self.values, self.problems, self.prefix = values, problems, prefix

    def _bad(self, key: str, expected: str, default: Any) -> Any:
        self.problems.append((self.prefix + key, f"expected {expected}, got {_shown(self.values[key])}"))
        return default

    def text(self, key: str, default: Any) -> Any:
        value = self.values.get(key, default)
        if key in self.values and (not isinstance(value, str) or not value.strip() or "\0" in value):
            return self._bad(key, "a non-empty string", default)
        return value

    def path(self, key: str, default: Any) -> Any:
        value = self.text(key, default)
        if key in self.values and isinstance(value, str) and value == self.values[key]:
            parts = PurePosixPath(value).parts
            if value.startswith(("/", "~")) or Path(value).is_absolute() or ".." in parts or "\\" in value:
                return self._bad(key, "a path relative to the dataset's root (not absolute, no ..)", default)
        return value

    def suffix(self, key: str, default: str) -> str:
        value = self.text(key, default)
        if key in self.values and value == self.values[key] and "/" in value:
            return self._bad(key, "the end of a file name, e.g. .png or _mask.png (no /)", default)
        return value

    def choice(self, key: str, choices: tuple, default: str) -> str:
        value = self.values.get(key, default)
        if value not in choices:
            return self._bad(key, f"one of {list(choices)}", default)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.values.get(key, default)
        return value if isinstance(value, bool) else self._bad(key, "true or false", default)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return self._bad(key, f"an integer from {low} to {high}", default)
        return value

    def colours(self, key: str, default: Any) -> Any:
        value = self.values.get(key, default)
        if key not in self.values or value is None and default is None:
            return default
        if not isinstance(value, list):
            return self._bad(key, "a list of [r, g, b] colours", default)
        colours = []
        for index, colour in enumerate(value):
            if (not isinstance(colour, list) or len(colour) != 3
                    or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)):
                self.problems.append((f"{self.prefix}{key}[{index}]", f"expected [r, g, b] with integers from 0 to "
                                                                       f"255, got {_shown(colour)}"))
                continue
            colours.append(tuple(colour))
        return tuple(colours)

    def label_map(self, count: int, ignore_index: int) -> dict[int, int]:
        table = self.values.get("label_map", {})
        if table is None or table == {}:
            return {}
        if not isinstance(table, dict):
            return self._bad("label_map", "a mapping of raw mask values to class ids, e.g. {255: 1}", {})
        result = {}
        for raw, target in table.items():
            path = f"{self.prefix}label_map.{raw}"
            key = int(raw) if isinstance(raw, str) and raw.isdigit() else raw
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= MAX_VALUE:
                self.problems.append((path, f"expected a raw mask value from 0 to {MAX_VALUE} as the key, got "
                                            f"{_shown(raw)}"))
                continue
            valid = not isinstance(target, bool) and isinstance(target, int)
            if not valid or not (0 <= target < max(count, 1) or target == ignore_index):
                self.problems.append((path, f"expected a class id (0-{max(count, 1) - 1}) or the ignore_index "
                                            f"({ignore_index}), got {_shown(target)}"))
                continue
            result[key] = target
        return result


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _suggest(word: Any, known) -> str:
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
