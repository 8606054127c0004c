"""`check` of a declared dataset on 1k to 10k small images: how long, and whether it stays linear.

One generated folder dataset (the `folder` layout: JPEG images, index PNG masks, 85% train, 15% val) of
the largest size is written once under benchmarks/.work/; each size N is a declaration whose list splits
name its first N images. For each size, `check_dataset` runs cold (a fresh cache folder: list, decode,
validate every mask, count, write the caches) and warm (the rerun `study run` does before each start: list
the files, read meta.json), --repeats times each, the sizes interleaved within each repeat (a shared
machine's changing load then falls on all sizes alike); min and median. The files are in the OS page
cache after the first run, as they are for a rerun. A least-squares line over the sizes gives the cost
per image and the fixed cost; R^2 near 1 and a flat ms per image say it is linear.

    python benchmarks/data_check.py [--sizes 1000 2500 5000 10000] [--repeats 3] [--image-size 64]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time

from common import WORK, load_note, machine, machine_line, say, table, write_results

VAL_SHARE = 0.15


def dataset(largest: int, side: int):
    """The generated tree (made once; a marker says it is complete) and the mapping that reads it."""
    from trainables.data import synth_dataset
    from trainables.data.presets import LAYOUT_DECLARATIONS

    root = WORK / f"data-check-{largest}-{side}"
    marker = root / ".complete"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        val = round(largest * VAL_SHARE)
        say(f"generating {largest} images of {side}x{side} in {root} (once; reused later)")
        started = time.perf_counter()
        synth_dataset("folder", root, train=largest - val, val=val, seed=0, image_size=side)
        marker.write_text("complete\n")
        say(f"generated in {time.perf_counter() - started:.1f} s")
    return root, LAYOUT_DECLARATIONS["folder"]


def subset(root, mapping: dict, size: int):
    """A declaration whose train and val lists name the first `size` images (85% / 15%)."""
    from trainables.data import declare

    stems = {"train": sorted(p.relative_to(root / "images").as_posix()[: -len(".jpg")]
                             for p in (root / "images" / "train").rglob("*.jpg")),
             "val": sorted(p.relative_to(root / "images").as_posix()[: -len(".jpg")]
                           for p in (root / "images" / "val").glob("*.jpg"))}
    val = round(size * VAL_SHARE)
    chosen = {"train": stems["train"][: size - val], "val": stems["val"][:val]}
    lists = root / "lists"
    lists.mkdir(exist_ok=True)
    splits = {}
    for role, names in chosen.items():
        (lists / f"{role}-{size}.txt").write_text("\n".join(names) + "\n")
        splits[role] = {"list": f"lists/{role}-{size}.txt"}
    declaration, problems = declare("bench", {**mapping, "splits": splits}, root)
    if problems:
        raise SystemExit(f"bad declaration: {problems}")
    return declaration


def timed_check(declaration, root, side: int, cache_dir) -> tuple[float, dict]:
    from trainables.data import check_dataset

    started = time.perf_counter()
    report = check_dataset(declaration, root, side, cache_dir=cache_dir, progress=False)
    return time.perf_counter() - started, report


def line_fit(sizes: list[int], seconds: list[float]) -> tuple[float, float, float]:
    """(seconds per image, fixed seconds, R^2) of the least-squares line."""
    mean_x, mean_y = statistics.fmean(sizes), statistics.fmean(seconds)
    sxx = sum((x - mean_x) ** 2 for x in sizes)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(sizes, seconds)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in seconds) or 1e-12
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(sizes, seconds))
    return slope, intercept, 1 - residual / total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2500, 5000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64, help="generated and working side in pixels")
    args = parser.parse_args()
    root, mapping = dataset(max(args.sizes), args.image_size)
    caches = WORK / "data-check-caches"
    declarations = {size: subset(root, mapping, size) for size in args.sizes}
    cold = {size: [] for size in args.sizes}
    warm = {size: [] for size in args.sizes}
    for repeat in range(args.repeats):  # sizes interleaved: a machine's changing load falls on all of them alike
        for size in args.sizes:
            shutil.rmtree(caches, ignore_errors=True)
            seconds, report = timed_check(declarations[size], root, args.image_size, caches)
            cold[size].append(seconds)
            warm[size].append(timed_check(declarations[size], root, args.image_size, caches)[0])
            assert sum(info["samples"] for info in report["splits"].values()) == size
            say(f"run {repeat + 1}/{args.repeats}, {size} images: cold {seconds:.2f} s, warm {warm[size][-1]:.3f} s")
    results = [{"images": size, "cold_seconds": cold[size], "warm_seconds": warm[size],
                "cold_min": min(cold[size]), "cold_median": statistics.median(cold[size]),
                "warm_min": min(warm[size]), "warm_median": statistics.median(warm[size])} for size in args.sizes]
    shutil.rmtree(caches, ignore_errors=True)
    sizes = [r["images"] for r in results]
    fits = {kind: line_fit(sizes, [r[f"{kind}_min"] for r in results]) for kind in ("cold", "warm")}
    info = machine()
    rows = [[r["images"], f"{r['cold_min']:.2f} / {r['cold_median']:.2f}",
             f"{1000 * r['cold_min'] / r['images']:.3f}", f"{r['warm_min']:.3f} / {r['warm_median']:.3f}",
             f"{1000 * r['warm_min'] / r['images']:.4f}"] for r in results]
    summary = ", ".join(f"{kind}: {1000 * slope:.3f} ms per image + {fixed:.2f} s fixed (R^2 {r2:.4f})"
                        for kind, (slope, fixed, r2) in fits.items())
    write_results("data_check", {"machine": info, "settings": {"sizes": args.sizes, "repeats": args.repeats,
                                                                "image_size": args.image_size,
                                                                "val_share": VAL_SHARE},
                                 "results": results, "fits": {k: dict(zip(("seconds_per_image", "fixed_seconds",
                                                                            "r2"), v)) for k, v in fits.items()}}, [
        "# `check` of a declared dataset, 1k to 10k images",
        machine_line(info), load_note(info),
        f"The generated `folder` layout ({args.image_size}x{args.image_size} JPEG images, index PNG masks, "
        f"{int(100 * (1 - VAL_SHARE))}% train / {int(100 * VAL_SHARE)}% val through list splits), checked at "
        f"{args.image_size}x{args.image_size}: cold (fresh cache folder: every mask decoded, validated and "
        f"counted, caches written) and warm (the rerun before each `study run`: files listed, meta.json read). "
        f"{args.repeats} runs each, seconds min / median, and ms per image (min).",
        table(["images", "cold s (min / median)", "cold ms/image", "warm s (min / median)", "warm ms/image"], rows),
        f"Least-squares lines over the sizes: {summary}.",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
