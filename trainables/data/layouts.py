"""A split's samples in a folder layout: format folder and the presets (pets, cityscapes, voc, ade20k).

Images are files under `<root>/<images>` ending in image_suffix, searched recursively (following
links, skipping hidden folders such as the cache); an image's mask is the same relative path under
`<root>/<masks>` with mask_suffix instead. A split is a subfolder of both ({subdir: X}), the stems listed
in a file ({list: FILE}: the first field of each line; VOC ImageSets, mmseg ann_file, the pets'
lists), two sibling folders under root ({images: A, masks: B}), or a reproducible share of the whole
folder ({fraction: F, seed: S}: the F share of stems with the lowest sha256 of "seed, stem" is val,
so adding files moves no other file between train and val).

A missing folder or list file raises DatasetError with the expected layout; everything else (an image
without a mask, a mask without an image, a listed file that is missing) is returned as one line per
problem, so the check can name them all.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path, PurePosixPath

from trainables.data.declaration import DataDeclaration
from trainables.data.labels import LabelReader, Sample
from trainables.data.presets import LAYOUTS, READY_MASK_SUFFIX
from trainables.errors import ConfigError, DatasetError, missing_folder


def list_split(declaration: DataDeclaration, root: str | Path, role: str) -> tuple[list[Sample], list[str]]:
    """The role's samples, sorted by image path, and every pairing problem (one line each)."""
    root = Path(root).expanduser()
    if declaration.format == "parquet":
        from trainables.data.parquet import list_rows

        return list_rows(declaration, root, role)
    if not root.is_dir():
        raise DatasetError(f"{declaration.format} dataset at {root}: {missing_folder(root)}; expected this "
                           f"layout:\n{layout_text(declaration)}")
    spec = declaration.splits.get(role)
    carved = declaration.splits.get("val", {}).get("fraction") if role == "train" else None
    if spec is None and carved is None:
        raise ConfigError(f"the dataset declares no {role} split (splits: {declaration.splits})")
    images, masks = root / declaration.images, root / declaration.masks
    if spec is None or "fraction" in spec:
        pairs, problems = _walked_pairs(declaration, root, images, masks)
        val = declaration.splits["val"]
        chosen = _carve(sorted(pairs), val["fraction"], val.get("seed", 0))
        pairs = {stem: pair for stem, pair in pairs.items() if (stem in chosen) == (role == "val")}
    elif "subdir" in spec:
        pairs, problems = _walked_pairs(declaration, root, images / spec["subdir"], masks / spec["subdir"])
    elif "images" in spec:
        pairs, problems = _walked_pairs(declaration, root, root / spec["images"], root / spec["masks"])
    else:
        pairs, problems = _listed_pairs(declaration, root, root / spec["list"])
    return _samples(declaration, pairs.values()), problems


def label_files(declaration: DataDeclaration, image_name: str) -> list:
    """[(file name, reader)]: where the dataset keeps an image's ground truth, preferred first; the reader
    turns the file into uint8 class ids (255 = ignore) exactly as the cache does, or raises DatasetError."""
    suffix = declaration.image_suffix
    base = image_name[: -len(suffix)] if image_name.endswith(suffix) else PurePosixPath(image_name).stem
    found = []
    ready = READY_MASK_SUFFIX.get(declaration.format)
    if ready:
        found.append((f"{base}{ready}", LabelReader(declaration, ready=True).read_file))
    found.append((f"{base}{declaration.mask_suffix}", LabelReader(declaration).read_file))
    return found


def layout_text(declaration: DataDeclaration) -> str:
    """The expected layout, as a missing folder's message shows it."""
    if declaration.format in LAYOUTS:
        return LAYOUTS[declaration.format]
    d = declaration
    lines = ["<root>/"]
    for role, spec in d.splits.items():
        if "subdir" in spec:
            lines.append(f"  {d.images}/{spec['subdir']}/**/<name>{d.image_suffix}    ({role})")
            lines.append(f"  {d.masks}/{spec['subdir']}/**/<name>{d.mask_suffix}")
        elif "list" in spec:
            lines.append(f"  {spec['list']}    ({role}: one <name> per line, relative to {d.images}/)")
        elif "images" in spec:
            lines.append(f"  {spec['images']}/**/<name>{d.image_suffix}    ({role})")
            lines.append(f"  {spec['masks']}/**/<name>{d.mask_suffix}")
    if any("list" in spec or "fraction" in spec for spec in d.splits.values()):
        lines.append(f"  {d.images}/**/<name>{d.image_suffix}")
        lines.append(f"  {d.masks}/**/<name>{d.mask_suffix}")
    return "\n".join(lines)


def _missing(declaration: DataDeclaration, root: Path, needed: Path) -> DatasetError:
    top = PurePosixPath(declaration.images).parts[0]
    masks_top = PurePosixPath(declaration.masks).parts[0]
    hint = ""
    if len(PurePosixPath(declaration.images).parts) > 1 and root.name == top:
        hint = f"\n{root} looks like the {top} folder itself: pass its parent folder, {root.parent}"
    elif root.name in (top, masks_top) and top != masks_top:
        hint = f"\npass the folder that holds both {top}/ and {masks_top}/, e.g. {root.parent}"
    return DatasetError(f"{declaration.format} dataset at {root}: {needed} is missing; expected this layout:\n"
                        f"{layout_text(declaration)}{hint}")


def _walked_pairs(declaration: DataDeclaration, root: Path, images: Path, masks: Path):
    for needed in (images, masks):
        if not needed.is_dir():
            raise _missing(declaration, root, needed)
    d = declaration
    shared = images == masks  # then a mask's name may end with the image suffix too: it is not an image
    image_files = _files(images, d.image_suffix, d.mask_suffix if shared else None)
    mask_files = _files(masks, d.mask_suffix)
    ready = READY_MASK_SUFFIX.get(d.format)
    pairs, problems = {}, []
    for stem, image in image_files.items():
        mask = mask_files.get(stem) or os.path.join(str(masks), stem + d.mask_suffix)
        if stem in mask_files or (ready and os.path.exists(mask[: -len(d.mask_suffix)] + ready)):
            pairs[stem] = (image, mask)
        else:
            problems.append(f"the image {image} has no label file: expected {mask}")
    for stem, mask in mask_files.items():
        if stem not in image_files:
            problems.append(f"the label file {mask} has no image: expected "
                            f"{os.path.join(str(images), stem + d.image_suffix)}")
    if not image_files and not mask_files:
        problems.append(f"{images} holds no files ending in {d.image_suffix}{_other_suffixes(images)}")
    return pairs, sorted(problems)


def _listed_pairs(declaration: DataDeclaration, root: Path, list_file: Path):
    d = declaration
    images, masks = root / d.images, root / d.masks
    for needed in (images, masks, list_file):
        if not needed.exists():
            raise _missing(declaration, root, needed)
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{list_file}: not UTF-8 text (byte {error.start}); expected one file stem per line, "
                           f"relative to {images}") from None
    pairs, problems, seen = {}, [], {}
    ready = READY_MASK_SUFFIX.get(d.format)
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        stem = fields[0]
        where = f"{list_file}, line {number}"
        parts = PurePosixPath(stem).parts
        if stem.startswith(("/", "~")) or ".." in parts or "\\" in stem or "\0" in stem:
            problems.append(f"{where}: {stem!r:.120} is not a file stem under {images} (a relative path without "
                            f"..); it would name a file outside it")
            continue
        if stem in seen:
            problems.append(f"{where}: {stem} is listed again (first on line {seen[stem]})")
            continue
        seen[stem] = number
        image = os.path.join(str(images), stem + d.image_suffix)
        mask = os.path.join(str(masks), stem + d.mask_suffix)
        if not os.path.isfile(image):
            hint = f"; list stems without the suffix {d.image_suffix}" if stem.endswith(d.image_suffix) else ""
            problems.append(f"{image} is listed in the split ({where}) but does not exist{hint}")
        elif not os.path.isfile(mask) and not (ready and os.path.isfile(mask[: -len(d.mask_suffix)] + ready)):
            problems.append(f"the image {image} has no label file: expected {mask}")
        else:
            pairs[stem] = (image, mask)
    if not seen and not problems:
        problems.append(f"{list_file} lists no files; expected one file stem per line, relative to {images}")
    return pairs, problems


def _samples(declaration: DataDeclaration, pairs) -> list[Sample]:
    labels = LabelReader(declaration)
    ready = READY_MASK_SUFFIX.get(declaration.format)
    ready_labels = LabelReader(declaration, ready=True) if ready else None
    samples = []
    for image, mask in sorted(pairs):
        if ready:
            prepared = mask[: -len(declaration.mask_suffix)] + ready
            if os.path.exists(prepared):  # class ids already: used as they are
                samples.append(Sample(image, prepared, ready_labels))
                continue
        samples.append(Sample(image, mask, labels))
    return samples


def _files(folder: Path, suffix: str, not_suffix: str | None = None) -> dict[str, str]:
    """{relative path without the suffix: file} of the files under folder ending in suffix."""
    found, seen = {}, set()
    base = str(folder)
    for directory, folders, names in os.walk(base, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a link back up the tree
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = [name for name in folders if not name.startswith(".")]
        relative = os.path.relpath(directory, base)
        for name in names:
            if name.endswith(suffix) and not name.startswith(".") and not (not_suffix and name.endswith(not_suffix)):
                stem = name[: -len(suffix)]
                found[stem if relative == "." else f"{relative}/{stem}"] = os.path.join(directory, name)
    return found


def _other_suffixes(folder: Path) -> str:
    counts = Counter(Path(name).suffix or name for _, _, names in os.walk(folder) for name in names)
    if not counts:
        return ""
    common = ", ".join(f"{suffix} ({count} files)" for suffix, count in counts.most_common(3))
    return f"; it holds {common}: set image_suffix (and mask_suffix) to match"


def _carve(stems: list[str], fraction: float, seed: int) -> set[str]:
    if len(stems) < 2:
        return set()
    count = min(len(stems) - 1, max(1, round(fraction * len(stems))))
    ranked = sorted(stems, key=lambda stem: hashlib.sha256(f"{seed}\0{stem}".encode()).digest())
    return set(ranked[:count])
