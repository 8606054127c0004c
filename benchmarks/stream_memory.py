"""Peak memory of a training process whose split streams from the cache: flat over split sizes.

Each run is a fresh process training one epoch (`fit`) over the first N pictures of one generated pets
split at 512x512 (1k, 4k and 8k by default), with the augmentation a real run would use (random resize
0.5-2, 512x512 crops, flip, photometric distortion) and a data memory budget (`--budget-mib`, default 256)
far below the split's bytes, so that the split streams; the model is a 1x1 convolution, so the process's
memory is the input path's and the framework's. Peak resident memory is the process's VmHWM (Linux's high-water
mark of its own memory; ru_maxrss would also count the parent's memory at the fork that started it).
For contrast, the smallest split is also trained resident (the default budget: a quarter of the memory).

The generated tree (~90 KB a picture) is kept in benchmarks/.work/; the cache (1 MiB a picture: 8.4 GB for
8k) is removed at the end unless --keep-cache.

    python benchmarks/stream_memory.py [--counts 1000 4000 8000] [--size 512] [--budget-mib 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

from common import REPO, WORK, generated_dataset, load_note, machine, machine_line, say, table, write_results

TARGET_FLATNESS = 0.10  # peak RSS within 10% across split sizes
VAL_IMAGES = 32


def tiny_net(num_classes: int):
    """The benchmark's model (arch "stream_memory:tiny_net"): a 1x1 convolution."""
    from torch import nn

    return nn.Conv2d(3, num_classes, 1)


def child(args) -> int:
    """One training process: fit over the first `count` pictures; prints its figures as one JSON line."""
    import torch

    from trainables.config import TrainConfig
    from trainables.data.stream import StreamedSplit
    from trainables.engine import fit, load_device_split

    size = (args.size, args.size)
    config = TrainConfig(arch="stream_memory:tiny_net", dataset="pets", data_root=args.root, cache_dir=args.cache,
                         image_size=size, max_train_samples=args.count, epochs=1, batch_size=args.batch_size,
                         val_interval=1, device="cpu", num_threads=args.threads, data_memory_mib=args.budget,
                         hflip=True, scale_range=(0.5, 2.0), crop_size=size, photometric=True)
    streamed = isinstance(load_device_split(config, "trainval", torch.device("cpu"), args.count, augmented=True),
                          StreamedSplit)
    started = time.perf_counter()
    result = fit(config)
    print(json.dumps({"count": args.count, "streamed": streamed, "budget_mib": args.budget,
                      "peak_rss_mib": status_kib("VmHWM") / 1024, "final_rss_mib": status_kib("VmRSS") / 1024,
                      "seconds": time.perf_counter() - started,
                      "images_per_second": result.records[-1]["images_per_second"]}))
    return 0


def status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status: this benchmark needs Linux")


def run_child(root, cache, count: int, budget: int | None, args) -> dict:
    command = [sys.executable, str(REPO / "benchmarks" / "stream_memory.py"), "--child", "--root", str(root),
               "--cache", str(cache), "--count", str(count), "--size", str(args.size), "--batch-size",
               str(args.batch_size), "--threads", str(args.threads)]
    if budget is not None:
        command += ["--budget", str(budget)]
    say(f"{count} pictures, budget {budget if budget is not None else 'default'} MiB: training one epoch")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the training process failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    say(f"  peak RSS {figures['peak_rss_mib']:,.0f} MiB, {figures['images_per_second']:.0f} img/s, "
        f"{'streamed' if figures['streamed'] else 'resident'}")
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 4000, 8000])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep-cache", action="store_true", help="keep the cache for a later run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    from trainables.data import load_split

    size = (args.size, args.size)
    counts = sorted(args.counts)
    root = generated_dataset("pets", counts[-1], VAL_IMAGES, image_size=size)
    cache = WORK / f"stream-cache-{counts[-1]}-{args.size}"
    say(f"building the cache of {counts[-1]} pictures at {args.size}x{args.size} in {cache} (once)")
    started = time.perf_counter()
    load_split("pets", root, "trainval", size, cache)  # the full split: every run reads its first rows
    build_seconds = time.perf_counter() - started
    try:
        runs = [run_child(root, cache, count, args.budget_mib, args) for count in counts]
        control = run_child(root, cache, counts[0], None, args)
    finally:
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)
    peaks = [r["peak_rss_mib"] for r in runs]
    spread = max(peaks) / min(peaks) - 1
    info = machine("cpu")
    data = {"benchmark": "stream_memory", "machine": info, "settings": {**vars(args), "dataset_root": str(root)},
            "cache_build_seconds": build_seconds, "runs": runs, "resident_control": control,
            "peak_spread": spread, "target_spread": TARGET_FLATNESS, "target_met": spread <= TARGET_FLATNESS,
            "cache_gib": counts[-1] * args.size * args.size * 4 / 2**30}
    rows = [[f"{r['count']:,}", f"{r['count'] * args.size * args.size * 4 / 2**30:.2f}",
             "streamed" if r["streamed"] else "resident", f"{r['budget_mib']}", f"{r['peak_rss_mib']:,.0f}",
             f"{r['images_per_second']:.0f}"] for r in runs]
    rows.append([f"{control['count']:,}", f"{control['count'] * args.size * args.size * 4 / 2**30:.2f}",
                 "streamed" if control["streamed"] else "resident", "default (1/4 of RAM)",
                 f"{control['peak_rss_mib']:,.0f}", f"{control['images_per_second']:.0f}"])
    verdict = "met" if data["target_met"] else "missed"
    write_results("stream_memory", data, [
        "# Peak memory of a training process over growing splits (streamed from the cache)",
        f"Machine: {machine_line(info)}. Device: cpu ({args.threads} threads).",
        f"One epoch of `fit` per fresh process over the first N generated pets pictures at {args.size}x{args.size} "
        f"(uint8 cache built once in {build_seconds:.0f} s), batch {args.batch_size}, random resize 0.5-2, "
        f"{args.size}x{args.size} crops, flip, photometric distortion; a 1x1 convolution as the model; "
        f"validation on {VAL_IMAGES} pictures. Peak RSS: the process's VmHWM.",
        table(["pictures", "split GiB (uint8)", "split", "budget MiB", "peak RSS MiB", "train img/s"], rows),
        f"Streamed runs: peak RSS spread {spread:.1%} (goal: within {TARGET_FLATNESS:.0%}, {verdict}).",
        load_note(info),
        "Command: `make bench-stream` (`python benchmarks/stream_memory.py`).",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
