"""Augmented input path: images/s of the project's (cache -> batches augmented on the device) against torchvision
transforms.v2 in a DataLoader, on the same image files, the same batch size, the same augmentation.

Both make batches of crops with random resize (scale 0.5-2 of the working resolution), random crop (padded
with 255 / the mean colour where the scaled image is smaller), horizontal flip and photometric distortion
(brightness, contrast, saturation, hue, each with probability 1/2, mmseg's ranges), normalised float images
and int64 masks:

- torchvision: a Dataset decoding each JPEG and PNG trimap (torchvision.io), then v2.ScaleJitter,
  v2.RandomCrop(pad_if_needed), v2.RandomHorizontalFlip, four v2.RandomApply(v2.ColorJitter(one of them)),
  v2.ToDtype(scale) and v2.Normalize; DataLoader with `--workers` processes (default 2), shuffled.
- cached: the split's uint8 cache at the working resolution (built once, timed apart), held on the device
  (DeviceSplit) or streamed from the cache files (StreamedSplit), batches made by trainables.data.augment
  with `--threads` torch threads (default 2).

Each size is a generated pets tree whose pictures are the working resolution (e.g. 512x683, cropped to 512x512),
measured over `--epochs` timed epochs after one warm-up; min and median epoch rates are reported.

    python benchmarks/augment_input.py [--sizes 512x683:512 256x342:256] [--images 192] [--epochs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from common import (
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

TARGET_SPEEDUP = 3.0  # over torchvision with 2 DataLoader workers, on the CPU at 2 threads
SCALE = (0.5, 2.0)
BRIGHTNESS, CONTRAST, SATURATION, HUE = 32 / 255, 0.5, 0.5, 18 / 180  # mmseg's ranges, in torchvision's terms


class PetFiles:
    """The generated pets pictures and trimaps as (tv_tensors.Image, tv_tensors.Mask), classes 0-2."""

    def __init__(self, root, split: str, transform):
        base = root / "oxford-iiit-pet"
        names = [line.split()[0] for line in (base / "annotations" / f"{split}.txt").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        self.samples = [(str(base / "images" / f"{name}.jpg"), str(base / "annotations" / "trimaps" / f"{name}.png"))
                        for name in sorted(names)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors
        from torchvision.io import decode_image, read_file

        image_file, trimap_file = self.samples[index]
        image = tv_tensors.Image(decode_image(read_file(image_file)))
        mask = tv_tensors.Mask(decode_image(read_file(trimap_file))[0] - 1)
        return self.transform(image, mask)


def torchvision_transform(size: tuple[int, int], crop: tuple[int, int]):
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from trainables.data.device import IMAGENET_MEAN, IMAGENET_STD

    jitters = [v2.ColorJitter(brightness=BRIGHTNESS), v2.ColorJitter(contrast=CONTRAST),
               v2.ColorJitter(saturation=SATURATION), v2.ColorJitter(hue=HUE)]
    return v2.Compose([
        v2.ScaleJitter(target_size=size, scale_range=SCALE),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
        v2.RandomHorizontalFlip(),
        *[v2.RandomApply([jitter], p=0.5) for jitter in jitters],
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def step_lines(measured: list[dict]) -> str:
    lines = [f"Training {m['step']['arch']} at {m['crop'][0]}x{m['crop'][1]}: augmented batches "
             f"{m['step']['images_per_second']['augmented']['median_images_per_second']:,.1f} img/s, batches made "
             f"beforehand {m['step']['images_per_second']['made beforehand']['median_images_per_second']:,.1f} img/s: "
             f"the input path is {m['step']['input_share_of_step']:.0%} of the step time (median epochs)."
             for m in measured if m.get("step")]
    return " ".join(lines) or "The input's share of a GPU step: to measure (`--device cuda --step-arch segformer_b0`)."


def interleaved_rates(pipelines: dict, epochs: int, device) -> dict[str, list[float]]:
    """Images/s of each pipeline's epochs, one warm-up each, then the timed epochs in turn (pipeline after
    pipeline, epoch after epoch), so that load from elsewhere on the machine falls on all of them alike."""
    for run_epoch in pipelines.values():
        run_epoch()
    rates = {name: [] for name in pipelines}
    for _ in range(epochs):
        for name, run_epoch in pipelines.items():
            synchronize(device)
            started = time.perf_counter()
            count = run_epoch()
            synchronize(device)
            rates[name].append(count / (time.perf_counter() - started))
    return rates


def summary(rates: list[float]) -> dict:
    """At the fastest epoch (min time) and the median epoch."""
    return {"best_images_per_second": max(rates), "median_images_per_second": statistics.median(rates),
            "epoch_images_per_second": rates}


def measure_size(size, crop, args, device) -> dict:
    import torch

    from trainables.data import load_split
    from trainables.data.augment import Augmentation
    from trainables.data.device import DeviceSplit
    from trainables.data.stream import StreamedSplit

    root = generated_dataset("pets", args.images, 8, image_size=size)
    loader = torch.utils.data.DataLoader(PetFiles(root, "trainval", torchvision_transform(size, crop)),
                                         batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                         persistent_workers=args.workers > 0, drop_last=False)

    def torchvision_epoch() -> int:
        # The workers are idle between epochs: the next epoch's prefetching starts with its iterator.
        count = 0
        for images, masks in loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            count += images.shape[0]
        return count

    torch.set_num_threads(args.threads)
    full = Augmentation(hflip=True, scale_range=SCALE, crop_size=crop, photometric=True)
    variants = {"cached": full,
                "cached, cat_max_ratio 0.75": Augmentation(hflip=True, scale_range=SCALE, crop_size=crop,
                                                           photometric=True, cat_max_ratio=0.75),
                "cached, no photometric": Augmentation(hflip=True, scale_range=SCALE, crop_size=crop)}
    with tempfile.TemporaryDirectory(prefix="segstudy-bench-cache-", dir=root) as cache:
        started = time.perf_counter()
        arrays = load_split("pets", root, "trainval", size, cache, progress=False)
        build_seconds = time.perf_counter() - started
        resident = DeviceSplit(arrays.images, arrays.masks, device, channels_last=True, normalised=False)
        streamed = StreamedSplit(arrays, device, channels_last=True)
        generator = torch.Generator().manual_seed(0)

        def cached_epoch(split, augment):
            return lambda: sum(images.shape[0] for images, _ in split.batches(
                args.batch_size, shuffle=True, generator=generator, augment=augment))

        pipelines = {"torchvision": torchvision_epoch}
        pipelines.update({f"{name} (resident)": cached_epoch(resident, augment) for name, augment in variants.items()})
        pipelines["cached (streamed)"] = cached_epoch(streamed, full)
        say(f"{size[0]}x{size[1]} -> {crop[0]}x{crop[1]}: {len(pipelines)} pipelines, {args.epochs} epochs each "
            f"(torchvision: {args.workers} DataLoader workers; cached: {args.threads} threads)")
        results = {name: summary(rates) for name, rates in interleaved_rates(pipelines, args.epochs, device).items()}
        streamed.close()
        step = step_share(args.step_arch, arrays, crop, args, device) if args.step_arch else None
    base = results["torchvision"]
    for result in results.values():
        result["speedup_median"] = result["median_images_per_second"] / base["median_images_per_second"]
        result["speedup_best"] = result["best_images_per_second"] / base["best_images_per_second"]
    return {"size": list(size), "crop": list(crop), "cache_build_seconds": build_seconds, "dataset_root": str(root),
            "pipelines": results, "step": step}


def step_share(arch: str, arrays, crop, args, device) -> dict:
    """Training epochs of `arch` on the augmented split against the same steps on batches made beforehand
    (the split's top-left crops, normalised once): what the input path adds to the step time."""
    import numpy as np
    import torch

    from trainables.config import TrainConfig
    from trainables.data.augment import Augmentation
    from trainables.data.device import DeviceSplit
    from trainables.engine import make_optimizer, seed_everything, train_one_epoch
    from trainables.losses import make_loss
    from trainables.models import build_model
    from trainables.models.transfer import trainable_parameters
    from trainables.step import autocast_context

    config = TrainConfig(arch=arch, image_size=crop, batch_size=args.batch_size, device=str(device))
    seed_everything(0)
    model = build_model(config).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, trainable_parameters(model), device)
    criterion, autocast = make_loss(config), autocast_context(config, device)
    augmented = DeviceSplit(arrays.images, arrays.masks, device, channels_last=True, normalised=False)
    made = DeviceSplit(np.ascontiguousarray(arrays.images[:, : crop[0], : crop[1]]),
                       np.ascontiguousarray(arrays.masks[:, : crop[0], : crop[1]]), device, channels_last=True)
    augment = Augmentation(hflip=True, scale_range=SCALE, crop_size=crop, photometric=True)
    generator = torch.Generator().manual_seed(0)

    def epoch(split, with_augment):
        return lambda: train_one_epoch(model, optimizer, criterion, split, batch_size=args.batch_size,
                                       num_classes=config.classes, generator=generator,
                                       augment=augment if with_augment else None, autocast=autocast) and len(split)

    rates = interleaved_rates({"augmented": epoch(augmented, True), "made beforehand": epoch(made, False)},
                              args.epochs, device)
    seconds = {name: 1 / statistics.median(r) for name, r in rates.items()}  # per image, median epochs
    return {"arch": arch, "images_per_second": {name: summary(r) for name, r in rates.items()},
            "input_share_of_step": 1 - seconds["made beforehand"] / seconds["augmented"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (the goal's device), cuda, auto")
    parser.add_argument("--sizes", nargs="+", default=["512x683:512", "256x342:256"],
                        help="HxW:C: pictures and working resolution HxW, square crops of C")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs after one warm-up epoch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the cached path")
    parser.add_argument("--step-arch", default=None,
                        help="also train this model (e.g. segformer_b0) on augmented batches and on batches made "
                             "beforehand: the input's share of the step time (the goal on a GPU: none)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    measured = []
    for spec in args.sizes:
        picture, crop = spec.split(":")
        size = tuple(int(v) for v in picture.split("x"))
        measured.append(measure_size(size, (int(crop), int(crop)), args, device))

    info = machine(str(device))
    main_label = "cached (resident)"
    speedups = [m["pipelines"][main_label]["speedup_median"] for m in measured]  # the goal, on median epochs
    data = {"benchmark": "augment_input", "machine": info, "settings": vars(args), "sizes": measured,
            "target_speedup": TARGET_SPEEDUP, "speedup_median_at_each_size": speedups,
            "target_met": min(speedups) >= TARGET_SPEEDUP}
    rows = []
    for m in measured:
        for label, r in m["pipelines"].items():
            rows.append([f"{m['size'][0]}x{m['size'][1]} -> {m['crop'][0]}x{m['crop'][1]}", label,
                         f"{r['best_images_per_second']:,.0f}", f"{r['median_images_per_second']:,.0f}",
                         f"{r['speedup_best']:.1f}x / {r['speedup_median']:.1f}x" if label != "torchvision" else ""])
    verdict = "met" if data["target_met"] else "missed"
    builds = ", ".join(f"{m['cache_build_seconds']:.1f} s" for m in measured)
    write_results("augment_input", data, [
        "# Augmented input path: cache + device augmentation vs torchvision transforms.v2 + DataLoader",
        f"Machine: {machine_line(info)}. Device: {device}.",
        f"{args.images} generated pets pictures per size (JPEG, PNG trimaps), batch {args.batch_size}; random "
        f"resize {SCALE[0]}-{SCALE[1]}, random crop (padded), horizontal flip, photometric distortion (each of "
        f"brightness, contrast, saturation, hue with probability 1/2), normalised. torchvision: {args.workers} "
        f"DataLoader workers decoding the files; cached: {args.threads} torch threads, from the uint8 cache "
        f"(built once: {builds}). {args.epochs} timed epochs each after a "
        f"warm-up, the pipelines taking turns epoch by epoch: images/s of the fastest (min time) and the median epoch.",
        table(["pictures -> crops", "pipeline", "img/s, fastest epoch", "img/s, median epoch",
               "vs torchvision (fastest / median)"], rows),
        f"Goal: cached >= {TARGET_SPEEDUP:.0f}x torchvision at every size ({verdict}: "
        f"{', '.join(f'{s:.1f}x' for s in speedups)}).",
        step_lines(measured),
        load_note(info),
        "Command: `make bench-augment` (`python benchmarks/augment_input.py`).",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
