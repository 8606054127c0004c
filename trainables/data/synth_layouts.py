"""Generated datasets in every layout a declaration reads, in their exact on-disk form.

`synth_dataset(layout, root, ...)` writes one of SYNTH_LAYOUTS and returns the declaration mapping that
reads it (what a study file's `datasets.<name>` holds besides root); `synth_declared(declaration, root,
...)` writes data matching any declaration (a study file's `generate:`). Pictures are learnable: shapes
(ellipses, boxes, triangles) of a few classes on a background class, each class with its own colour
and stripe texture, and a one-pixel ignored band along shape edges wherever the declaration can
express "ignored" (VOC's 255 border, CamVid's void, ADE20K's 0). Every picture comes from its own
generator seeded by (seed, index), and `synth_pixels` replays the class maps without writing, so a
test knows exactly what the check must count.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import math
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw

from trainables.data import synth
from trainables.data.cache import available_cores
from trainables.data.classes import distinct_colours, voc_colour
from trainables.data.declaration import ROLES, DataDeclaration, declare
from trainables.data.presets import LAYOUT_DECLARATIONS, PARQUET_CLASSES, SYNTH_LAYOUTS
from trainables.errors import ConfigError, DatasetError

MAX_PICTURES = 200_000
MAX_SIDE = 4096
DEFAULT_SIZE = (96, 128)


def synth_dataset(layout: str, root: str | Path, train: int, val: int, seed: int = 0,
                  image_size: int | tuple[int, int] | None = None) -> dict:
    """Write a generated dataset in `layout` under root (which must not hold it yet); returns the declaration
    mapping that reads it. image_size (height, width): pets draw a size per picture by default, cityscapes
    128x256, the others 96x128."""
    if layout not in LAYOUT_DECLARATIONS:
        raise ConfigError(f"no generator for the layout {layout!r}; known: {list(SYNTH_LAYOUTS)}")
    mapping = json.loads(json.dumps(LAYOUT_DECLARATIONS[layout]))
    declaration = _declared(layout, mapping, root)
    synth_declared(declaration, root, train, val, seed, image_size)
    return mapping


def synth_declared(declaration: DataDeclaration, root: str | Path, train: int, val: int, seed: int = 0,
                   image_size: int | tuple[int, int] | None = None) -> Path:
    """Write generated data that `declaration` reads, under root; returns root."""
    if train < 1 or val < 1 or train + val > MAX_PICTURES:
        raise ConfigError(f"a generated dataset needs 1 to {MAX_PICTURES:,} train and val pictures in all, "
                          f"got {train} and {val}")
    if seed < 0 or seed > 2**32 - 1:
        raise ConfigError(f"--seed: expected an integer from 0 to {2**32 - 1}, got {seed}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} is a file, not a folder to generate the {declaration.format} dataset in")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if size is not None and (len(size) != 2 or not all(1 <= side <= MAX_SIDE for side in size)):
        raise ConfigError(f"image_size: expected (height, width) from 1 to {MAX_SIDE} pixels, got {image_size!r}")
    if declaration.format == "pets":
        synth.write_pets(root, train, val, seed, size)
    elif declaration.format == "cityscapes":
        synth.write_cityscapes(root, train, val, seed, size)
    else:
        writer = _ParquetWriter if declaration.format == "parquet" else _FolderWriter
        writer(declaration, root, train, val, seed, size or DEFAULT_SIZE).write()
    return root


def synth_pixels(layout: str | DataDeclaration, train: int, val: int, seed: int = 0,
                 image_size: int | tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """{role: int64 [256]}: the pixels of each class id (255 ignored) that synth_dataset(layout, ...), or
    synth_declared(declaration, ...), draws. (A val carved as a fraction is the reader's choice: there, only
    the two roles' sum is the split's.)"""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    form = layout.format if isinstance(layout, DataDeclaration) else layout
    if form == "pets":
        maps = synth.pets_classes(train, val, seed, size)
    elif form == "cityscapes":
        maps = synth.cityscapes_classes(train, val, seed, size)
    else:
        declaration = layout if isinstance(layout, DataDeclaration) else _declared(
            layout, LAYOUT_DECLARATIONS[layout], None)
        plan = _Plan(declaration, train, val, seed, size or DEFAULT_SIZE)
        maps = ((role, plan.classes(index)) for index, role in enumerate(plan.roles))
    counts = {role: np.zeros(256, np.int64) for role in ROLES}
    for role, classes in maps:
        counts[role] += np.bincount(classes.ravel(), minlength=256)
    return counts


def _declared(layout: str, mapping: dict, root) -> DataDeclaration:
    if layout == "parquet":  # its classes come from the id2label.json that the writer writes
        without = {key: value for key, value in mapping.items() if key != "id2label"}
        declaration, problems = declare(layout, {**without, "classes": PARQUET_CLASSES}, ".")
        return dataclasses.replace(declaration, id2label=mapping["id2label"])
    declaration, problems = declare(layout, mapping, root or ".")
    assert not problems, problems
    return declaration


class _Plan:
    """What each picture is: its role, name, class map, raw mask values and picture."""

    def __init__(self, declaration: DataDeclaration, train: int, val: int, seed: int, size: tuple[int, int]):
        self.d, self.seed, self.size = declaration, seed, tuple(size)
        self.roles = ["train"] * train + ["val"] * val
        self.raw = _raw_values(declaration)  # final class id (255: ignored) -> raw value, -1: cannot be written
        self.drawable = [c for c in range(declaration.num_classes) if self.raw[c] >= 0]
        if not self.drawable:
            raise ConfigError(f"the {declaration.format} declaration reads no raw value as a class: nothing to draw")
        self.band = self.raw[255] >= 0
        self.colours = distinct_colours(max(declaration.num_classes, 1))

    def classes(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 3, index])
        height, width = self.size
        others = self.drawable[1:]  # the first drawable class (class 0 where it is drawable) is the background
        pool = self.drawable[:1] + (others if len(others) <= 5 else rng.choice(others, 5, replace=False).tolist())
        canvas = Image.new("L", (width, height), int(pool[0]))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(2, 6))):
            class_id = int(pool[int(rng.integers(1, len(pool)))]) if len(pool) > 1 else int(pool[0])
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            rx, ry = rng.uniform(0.1, 0.3) * width, rng.uniform(0.1, 0.3) * height
            kind = int(rng.integers(3))
            if kind == 0:
                draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=class_id)
            elif kind == 1:
                draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=class_id)
            else:
                draw.polygon([(cx, cy - ry), (cx - rx, cy + ry), (cx + rx, cy + ry)], fill=class_id)
        classes = np.asarray(canvas).copy()
        if self.band:  # where a pixel's right or lower neighbour has another class: ignored
            edge = np.zeros_like(classes, bool)
            edge[:, :-1] |= classes[:, :-1] != classes[:, 1:]
            edge[:-1, :] |= classes[:-1, :] != classes[1:, :]
            classes[edge] = 255
        return classes

    def picture(self, index: int, classes: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 4, index])
        height, width = classes.shape
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        picture = np.zeros((height, width, 3), np.float32)
        filled = np.where(classes == 255, np.roll(classes, 1, axis=1), classes)  # an edge takes its neighbour's look
        for class_id in np.unique(filled).tolist():
            where = filled == class_id
            angle, frequency = class_id * 0.9, 0.25 + 0.12 * (class_id % 5)
            stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * frequency)
            colour = np.array(self.colours[class_id % len(self.colours)], np.float32) + rng.uniform(-12, 12, 3)
            picture[where] = colour * (0.85 + 0.15 * stripes[where])[:, None]
        picture += rng.normal(0, 5, (height, width, 1)).astype(np.float32)
        return np.clip(picture, 0, 255).round().astype(np.uint8)

    def mask(self, classes: np.ndarray) -> Image.Image:
        raw = self.raw[classes]
        if self.d.mask_encoding == "rgb":  # a palette position's colour; past the palette, the ignore colour
            table = np.array([*self.d.palette, *self.d.ignore_colors[:1]], np.uint8)
            return Image.fromarray(table[raw])
        if raw.max() > 255:
            return Image.fromarray(raw.astype(np.uint16))
        mask = Image.fromarray(raw.astype(np.uint8))
        if self.d.format == "voc":  # palette PNGs, as the devkit's
            mask = mask.convert("P")
            mask.putpalette([v for i in range(256) for v in voc_colour(i)])
        return mask


def _raw_values(d: DataDeclaration) -> np.ndarray:
    """int64 [256]: the raw mask value (rgb: palette position) written for each class id and for 255
    (ignored): a label_map key where one is read as it (the map says how the data is stored), else the
    smallest value that is; -1 where none is."""
    rgb = d.mask_encoding == "rgb"
    candidates = range(len(d.palette)) if rgb else set(range(256)) | {d.ignore_index}
    raw = np.full(256, -1, np.int64)
    for value in [*sorted(set(candidates) - set(d.label_map), reverse=True), *sorted(d.label_map, reverse=True)]:
        class_id = d.class_of_value(value)
        if class_id is not None:
            raw[class_id] = value
        elif (value in (0, d.ignore_index)) if d.reduce_zero_label else d.label_map.get(value, value) == d.ignore_index:
            raw[255] = value
    if rgb and d.ignore_colors:
        raw[255] = len(d.palette)  # drawn in ignore_colors[0]
    return raw


class _FolderWriter:
    def __init__(self, declaration: DataDeclaration, root: Path, train: int, val: int, seed: int, size):
        self.d, self.root = declaration, root
        self.plan = _Plan(declaration, train, val, seed, size)
        self.image_format = _format_of(declaration.image_suffix, "image_suffix")
        self.mask_format = _format_of(declaration.mask_suffix, "mask_suffix")

    def write(self) -> None:
        d, root = self.d, self.root
        jobs, lists, made = [], {}, set()
        counters = {role: 0 for role in ROLES}
        for index, role in enumerate(self.plan.roles):
            counters[role] += 1
            name = self._name(role, counters[role], index)
            spec = d.splits.get(role) or {"fraction": True}
            if "subdir" in spec:
                image_dir, mask_dir = root / d.images / spec["subdir"], root / d.masks / spec["subdir"]
                stem = f"scene{index % 2}/{name}" if d.format == "folder" else name  # subfolders are searched too
            elif "images" in spec:
                image_dir, mask_dir, stem = root / spec["images"], root / spec["masks"], name
            elif "list" in spec:
                image_dir, mask_dir = root / d.images, root / d.masks
                stem = name if d.format == "voc" else f"{role}/{name}"
                lists.setdefault(spec["list"], []).append(stem)
            else:  # val carved as a fraction: one folder for both
                image_dir, mask_dir, stem = root / d.images, root / d.masks, name
            made |= {self._top(image_dir), self._top(mask_dir)}
            jobs.append((index, str(image_dir / f"{stem}{d.image_suffix}"), str(mask_dir / f"{stem}{d.mask_suffix}")))
        if d.format == "voc":  # the devkit's other lists and pictures without masks, as in the real tree
            lists["ImageSets/Segmentation/trainval.txt"] = lists.get(d.splits["train"]["list"], []) + lists.get(
                d.splits["val"]["list"], [])
        _refuse_existing(*sorted(made), *(root / name for name in lists))
        for name, stems in lists.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("\n".join(stems) + "\n")
        with concurrent.futures.ThreadPoolExecutor(available_cores()) as pool:
            list(pool.map(self._write_one, jobs))
        if d.format == "voc":
            for extra in range(len(self.plan.roles), len(self.plan.roles) + 2):
                Image.fromarray(self.plan.picture(extra, self.plan.classes(extra))).save(
                    root / d.images / f"2012_{900000 + extra:06d}{d.image_suffix}")

    def _write_one(self, job: tuple) -> None:
        index, image_path, mask_path = job
        classes = self.plan.classes(index)
        for path in (image_path, mask_path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.plan.picture(index, classes)).save(image_path, format=self.image_format, quality=92)
        self.plan.mask(classes).save(mask_path, format=self.mask_format)

    def _name(self, role: str, number: int, index: int) -> str:
        if self.d.format == "voc":
            return f"{2007 + index % 6}_{index:06d}"
        if self.d.format == "ade20k":
            return f"ADE_{'train' if role == 'train' else 'val'}_{number:08d}"
        return f"img_{index:05d}"

    def _top(self, folder: Path) -> Path:
        return self.root / PurePosixPath(folder.relative_to(self.root).as_posix()).parts[0]


class _ParquetWriter:
    """Shards as Hugging Face datasets writes them: struct {bytes, path} columns, its features in the
    schema's metadata, row groups of ROWS_PER_GROUP rows; a role with 2+ pictures gets two shards."""

    ROWS_PER_GROUP = 8

    def __init__(self, declaration: DataDeclaration, root: Path, train: int, val: int, seed: int, size):
        self.d, self.root = declaration, root
        self.plan = _Plan(declaration, train, val, seed, size)

    def write(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        d = self.d
        cell = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        schema = pa.schema([(d.image_column, cell), (d.label_column, cell)], metadata={"huggingface": json.dumps(
            {"info": {"features": {d.image_column: {"_type": "Image"}, d.label_column: {"_type": "Image"}}}})})
        if d.id2label and not (self.root / d.id2label).exists():
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / d.id2label).write_text(json.dumps({str(i): n for i, n in enumerate(d.classes)}, indent=1))
        for role in ROLES:
            indices = [i for i, r in enumerate(self.plan.roles) if r == role]
            parts = 2 if len(indices) >= 2 and "*" in d.files[role] else 1
            paths = [self._shard(d.files[role], part, parts) for part in range(parts)]
            _refuse_existing(*paths)
            for part, path in enumerate(paths):
                rows = {d.image_column: [], d.label_column: []}
                for index in indices[part::parts]:
                    classes = self.plan.classes(index)
                    rows[d.image_column].append({"bytes": _encoded(Image.fromarray(self.plan.picture(index, classes)),
                                                                   "PNG"), "path": f"{index:06d}.png"})
                    rows[d.label_column].append({"bytes": _encoded(self.plan.mask(classes), "PNG"),
                                                 "path": f"{index:06d}_label.png"})
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.Table.from_pydict(rows, schema=schema), path, row_group_size=self.ROWS_PER_GROUP)

    def _shard(self, pattern: str, part: int, parts: int) -> Path:
        if any(c in pattern for c in "?[]") or pattern.count("*") > 1:
            raise ConfigError(f"cannot name shards for the pattern {pattern!r}: use one * (e.g. data/train-*.parquet)")
        return self.root / pattern.replace("*", f"{part:05d}-of-{parts:05d}")


def _encoded(image: Image.Image, form: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=form)
    return buffer.getvalue()


def _format_of(suffix: str, key: str) -> str:
    form = Image.registered_extensions().get(Path(f"x{suffix}").suffix.lower())
    if form is None:
        raise ConfigError(f"{key}: cannot write files ending in {suffix!r}: no image format has that extension")
    return form


def _refuse_existing(*paths: Path) -> None:
    # Never mix generated pictures into an existing tree, nor leave stale files in one.
    for path in paths:
        if path.exists():
            raise DatasetError(f"{path} already exists; generate into an empty folder or remove it first")
