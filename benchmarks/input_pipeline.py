"""Input pipeline: images/second of a seed-style loader against the project's cached path.

Seed-style: torchvision's OxfordIIITPet with per-sample transforms (resize to 64x64,
bilinear with antialiasing for the image, nearest for the trimap; ToTensor; Normalize)
and a DataLoader with worker processes, decoding every JPEG every epoch.
Cached: the split's preprocessed uint8 cache, loaded once into a DeviceSplit on the
training device; batches of 64 sliced, shuffled and normalised there (as engine.fit does).

Both read the same generated pets tree of the real dataset's size (3,680 trainval
images) in one run; both are timed over steady-state epochs (after a warm-up epoch;
the DataLoader's workers are persistent, so their start-up is not counted against it).
Building the cache is timed separately, into a fresh folder.

    python benchmarks/input_pipeline.py [--device auto] [--epochs 2] [--cached-epochs 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from common import (
    core_count,
    generated_dataset,
    load_note,
    machine,
    machine_line,
    resolve_device,
    say,
    synchronize,
    table,
    write_results,
)

TARGET_SPEEDUP = 50.0
TRAIN_IMAGES, VAL_IMAGES = 3680, 3669  # Oxford-IIIT Pet trainval / test


def trimap_to_classes(mask):
    """PIL trimap (1 pet, 2 background, 3 border) -> int64 class ids 0/1/2, as the seed did per sample."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(mask, dtype=np.int64) - 1)


def seed_style_loader(root, size, batch_size: int, workers: int, pin_memory: bool):
    import torch
    from torchvision import transforms
    from torchvision.datasets import OxfordIIITPet

    from trainables.data.device import IMAGENET_MEAN, IMAGENET_STD

    image_transform = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    mask_transform = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.NEAREST),
        trimap_to_classes,
    ])
    dataset = OxfordIIITPet(root, split="trainval", target_types="segmentation", transform=image_transform,
                            target_transform=mask_transform, download=False)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0, pin_memory=pin_memory, drop_last=False)


def time_epochs(run_epoch, epochs: int, device) -> list[float]:
    seconds = []
    for _ in range(epochs):
        synchronize(device)
        started = time.perf_counter()
        count = run_epoch()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds, count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed seed-style epochs (after one warm-up epoch)")
    parser.add_argument("--cached-epochs", type=int, default=10, help="timed cached epochs (after one warm-up epoch)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: one per core)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads of the cached path (a trial gets its CPUs' worth; default 1 and 2)")
    parser.add_argument("--source-size", default=None, metavar="HxW",
                        help="generate the pictures at this size (default: the generator's 100-200 px per side; "
                             "the real photos are about 500x375, which makes decoding slower)")
    args = parser.parse_args(argv)

    import torch

    from trainables.config import TrainConfig
    from trainables.data import load_split
    from trainables.data.device import DeviceSplit

    device = resolve_device(args.device)
    workers = core_count() if args.workers is None else args.workers
    size = (args.image_size, args.image_size)
    source_size = tuple(int(v) for v in args.source_size.split("x")) if args.source_size else None
    root = generated_dataset("pets", TRAIN_IMAGES, VAL_IMAGES, image_size=source_size)

    # -- seed-style ------------------------------------------------------------------
    loader = seed_style_loader(root, size, args.batch_size, workers, pin_memory=device.type == "cuda")

    def seed_epoch() -> int:
        count = 0
        for images, masks in loader:
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            count += images.shape[0]
        return count

    say(f"seed-style: 1 warm-up + {args.epochs} timed epochs, {workers} workers, device {device}")
    warm_seed, count = time_epochs(seed_epoch, 1, device)
    seed_seconds, count = time_epochs(seed_epoch, args.epochs, device)
    loader = None  # ends the persistent workers before the cached path is timed
    seed_rate = count / statistics.median(seed_seconds)
    say(f"seed-style: {seed_rate:.0f} images/s ({count} images, epochs {[round(s, 2) for s in seed_seconds]} s)")

    # -- cached ------------------------------------------------------------------------
    with tempfile.TemporaryDirectory(prefix="segstudy-bench-cache-") as cache_dir:
        started = time.perf_counter()
        load_split("pets", root, "trainval", size, cache_dir, progress=False)
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        arrays = load_split("pets", root, "trainval", size, cache_dir, progress=False)
        open_seconds = time.perf_counter() - started  # a later trial's load: mapped files, sizes checked
        synchronize(device)
        started = time.perf_counter()
        # As engine.fit makes it, in the model's layout (TrainConfig's channels_last default).
        split = DeviceSplit(arrays.images, arrays.masks, device, channels_last=TrainConfig().channels_last)
        synchronize(device)
        to_device_seconds = time.perf_counter() - started
        generator = torch.Generator().manual_seed(0)

        def cached_epoch() -> int:
            count = 0
            for images, _masks in split.batches(args.batch_size, shuffle=True, generator=generator):
                count += images.shape[0]
            return count

        by_threads = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            say(f"cached: 1 warm-up + {args.cached_epochs} timed epochs on {device}, {threads} torch thread(s)")
            time_epochs(cached_epoch, 1, device)
            seconds, cached_count = time_epochs(cached_epoch, args.cached_epochs, device)
            rate = cached_count / statistics.median(seconds)
            by_threads[threads] = {"images_per_second": rate, "epoch_seconds": seconds, "speedup": rate / seed_rate}
            say(f"cached, {threads} thread(s): {rate:.0f} images/s; {rate / seed_rate:.1f}x the seed-style loader")
    slowest = min(by_threads, key=lambda t: by_threads[t]["images_per_second"])
    cached_rate, cached_seconds = by_threads[slowest]["images_per_second"], by_threads[slowest]["epoch_seconds"]
    speedup = cached_rate / seed_rate

    info = machine(str(device))
    data = {
        "benchmark": "input_pipeline",
        "machine": info,
        "settings": {**vars(args), "workers": workers, "dataset_root": str(root), "train_images": count},
        "seed_style": {"images_per_second": seed_rate, "epoch_seconds": seed_seconds,
                       "warmup_epoch_seconds": warm_seed[0]},
        "cached": {"images_per_second": cached_rate, "epoch_seconds": cached_seconds,
                   "cache_build_seconds": build_seconds, "cache_open_seconds": open_seconds,
                   "to_device_seconds": to_device_seconds, "by_threads": by_threads},
        "speedup": speedup,
        "target_speedup": TARGET_SPEEDUP,
        "target_met": speedup >= TARGET_SPEEDUP,
    }
    source = f"{source_size[0]}x{source_size[1]} px" if source_size else "100-200 px per side (generator default)"
    rows = [
        ["seed-style: OxfordIIITPet + per-sample transforms + DataLoader", f"{seed_rate:,.0f}",
         f"{statistics.median(seed_seconds):.2f}", f"{workers} worker processes, decoding every epoch"],
    ]
    rows += [[f"cached, {threads} torch thread(s): the split normalised once on the device, batches gathered there",
              f"{result['images_per_second']:,.0f}", f"{statistics.median(result['epoch_seconds']):.3f}",
              f"{result['speedup']:.0f}x; cache build {build_seconds:.1f} s once; open {open_seconds:.2f} s; "
              f"to device {to_device_seconds:.3f} s"] for threads, result in by_threads.items()]
    verdict = "met" if speedup >= TARGET_SPEEDUP else "missed"
    write_results("input_pipeline", data, [
        "# Input pipeline: seed-style loader vs cached split on the device",
        f"Machine: {machine_line(info)}. Device: {device}.",
        f"{count} generated pets trainval pictures ({source}), {args.image_size}x{args.image_size}, batch "
        f"{args.batch_size}; median of {args.epochs} (seed-style) and {args.cached_epochs} (cached) steady-state "
        f"epochs after one warm-up epoch each.",
        table(["pipeline", "images/s", "epoch s", "notes"], rows),
        f"Cached / seed-style, at the slowest thread count: **{speedup:.0f}x** (target >= {TARGET_SPEEDUP:.0f}x at "
        f"every thread count: {verdict}).",
        load_note(info),
        "Command: `make bench-input` (`python benchmarks/input_pipeline.py`).",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
