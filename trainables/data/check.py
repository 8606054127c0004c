"""Check a declared dataset before any training: every problem named, pixels counted per class.

Both splits are listed before anything is decoded (a missing folder stops here, with the layout it
expected), then decoded through the cache, which counts each class's pixels at the working resolution
and notes which raw values the masks hold (meta.json). Every bad file of both splits is named before
this raises, and then no cache is kept; when all is well the caches are kept, so a rerun (as `study
run` does before every start) lists the files and reads meta.json, decoding nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from trainables.data import ROLES, DataDeclaration, as_size, cache_label, resolve
from trainables.data.cache import DatasetProblems, build, cached_meta, commit, default_cache_dir, plan_cache
from trainables.data.labels import unmatched_label_map, value_warnings
from trainables.data.layouts import list_split


def check_dataset(declaration: DataDeclaration | str, root: str | Path, image_size: int | tuple[int, int] = (64, 64),
                  name: str | None = None, cache_dir: str | Path | None = None, progress: bool = True,
                  workers: int | None = None) -> dict:
    """{"dataset", "image_size": [H, W], "splits": {role: {"samples": N, "pixels": {"0": n, ...}}}, "warnings"}.

    "pixels" has every class id and "255" (ignored) where such pixels exist, counted after every label
    transform. Raises DatasetError with one line per problem (DatasetProblems) when any file is bad.
    """
    declaration = resolve(declaration)
    root = Path(root).expanduser()
    size = as_size(image_size)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(root)
    listed = {role: list_split(declaration, root, role) for role in ROLES}
    problems = [line for _, found in listed.values() for line in found]
    metas, built = {}, []
    try:
        for role, (samples, _) in listed.items():
            if not samples:
                problems.append(f"the {role} split ({declaration.split_name(role)}) at {root} has no samples")
                continue
            planned, _ = plan_cache(declaration.format, cache_label(declaration, role), root, samples, size,
                                    cache_dir)
            meta = cached_meta(planned)
            if meta is None:
                try:
                    partial = build(planned, progress, workers)
                except DatasetProblems as error:
                    problems += error.problems
                    continue
                built.append((partial, planned.folder))
                meta = json.loads((partial / "meta.json").read_text())
            metas[role] = meta
        if problems:
            raise DatasetProblems(problems)
        while built:
            commit(*built.pop())
    finally:
        for partial, _ in built:  # bad data: nothing is kept
            shutil.rmtree(partial, ignore_errors=True)
    report = {"dataset": name or declaration.format, "image_size": list(size), "splits": {}, "warnings": []}
    for role, meta in metas.items():
        counts = meta["pixels"]
        pixels = {str(class_id): int(counts[class_id]) for class_id in range(declaration.num_classes)}
        if counts[255]:
            pixels["255"] = int(counts[255])
        report["splits"][role] = {"samples": int(meta["count"]), "pixels": pixels}
        traps = value_warnings(declaration, role, meta["raw_values"]) if meta.get("raw_values") is not None else []
        # a binary-mask trap already says which classes are missing, and why
        report["warnings"] += traps or absent_classes(declaration, role, pixels)
    if all(meta.get("raw_values") is not None for meta in metas.values()):
        held = [value for meta in metas.values() for value in meta["raw_values"]]
        report["warnings"] += unmatched_label_map(declaration, held)
    report["warnings"] += _shared_images(listed)
    return report


def absent_classes(declaration: DataDeclaration, role: str, pixels: dict[str, int]) -> list[str]:
    """A warning naming the declared classes a split holds no pixel of: never learnt from train; in val, each
    counts as IoU 0 in val_miou (the seed protocol's rule, trainables/metrics.py)."""
    names = declaration.class_names
    absent = [f"{k} ({names[k]})" for k in range(declaration.num_classes) if not pixels[str(k)]]
    if not absent:
        return []
    shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
    effect = (f"the model never learns {'it' if len(absent) == 1 else 'them'}" if role == "train" else
              "val_miou counts each as IoU 0 (val_miou_present leaves out those never predicted)")
    return [f"the {role} masks hold no pixel of class {shown}: {effect}"]


def _shared_images(listed: dict) -> list[str]:
    """A warning when the same image is in both splits: validation would measure memory, not learning."""
    train, val = ({(s.image, s.row) for s in listed[role][0]} for role in ROLES)
    shared = sorted(train & val, key=str)
    if not shared:
        return []
    first = shared[0][0] if shared[0][1] is None else f"{shared[0][0]}, row {shared[0][1]}"
    return [f"{len(shared)} images are in both train and val (e.g. {first}); validation then measures "
            f"memorisation: give each image one split"]
