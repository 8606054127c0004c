"""Training step: images/second and achieved TFLOP/s of FCN-ResNet50 and SegFormer-B0.

Each step is the engine's own (trainables.engine.train_one_epoch over a DeviceSplit:
normalise on the device, forward, CrossEntropy, backward, optimizer step, loss and
confusion matrix kept on the device, one sync at the end), on random 64x64 pictures.

  fp32 baseline: contiguous tensors, fp32, AdamW without `fused` (torch's default).
  fast path:     the engine's defaults (TrainConfig): channels_last tensors and
                 weights; on CUDA also bf16 autocast (amp: auto) and fused AdamW.
                 --compile adds torch.compile; its compile time is reported separately.
  fast+graphs:   --cuda-graphs adds the fast path with the `cuda_graphs` setting (the step
                 replayed as one CUDA graph, trainables/cuda_graphs.py; captured during the
                 warm-up, so capture is not in the rate). Without CUDA it runs eagerly.

On CUDA the results go to train_step_cuda.{json,md} (the CPU figures in train_step.* stay),
with each variant's peak GPU memory (torch.cuda.max_memory_allocated).

FLOPs per step are counted once per model with torch.utils.flop_counter.FlopCounterMode
(forward + backward of a baseline warm-up step) and divided by the timed step time.

    python benchmarks/train_step.py [--device auto] [--batch-size 64] [--warmup N] [--steps N] [--compile]
                                    [--cuda-graphs]

--against-torchvision [--archs A ...] [--batch-size 8] [--image-size 64] [--repeats 7] [--steps 1] [--threads 1]:
the CPU train step of each torchvision architecture as segstudy runs it (family_torchvision's build_model, the
engine's optimizer, loss and trainables.step.train_step, with TrainConfig's defaults: channels_last) against the
same model built by torchvision's builder and stepped by a plain loop (forward, cross-entropy on "out",
zero_grad, backward, AdamW step), on the same batch, size and threads, in one process. The variants alternate
within each repeat (their order rotating), each timed over --steps steps after one warm-up step; min and median
per step over the repeats; the goal is segstudy >= 1.0x plain torchvision (the ratio of their times). Also
segstudy with contiguous tensors, to show what channels_last does. One torch thread by default: on a machine
shared with other work, two threads wait on each other whenever one is preempted, which swamps the differences
measured here; and the measure is CPU time (process time), which does not count the time other processes held
the core. Writes train_step_archs.{json,md}.
"""

from __future__ import annotations

import argparse
import time

from common import load_note, machine, machine_line, resolve_device, say, synchronize, table, write_results

MODELS = ("fcn_resnet50", "segformer_b0")
TORCHVISION_ARCHS = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                     "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
VARIANTS_VS_TORCHVISION = ("plain torchvision", "segstudy", "segstudy contiguous")
GOAL_VS_TORCHVISION = 1.0  # segstudy's step at least as fast as plain torchvision's
LABELS = {"fcn_resnet50": "FCN-ResNet50", "segformer_b0": "SegFormer-B0"}
GPU_TARGETS = {"fcn_resnet50": 15_000, "segformer_b0": 30_000}  # images/s on one H200, fast path
TARGET_GPU = "1x H200"
DEFAULT_STEPS = {"cpu": (2, 3), "cuda": (3, 20)}  # (warm-up, timed) steps


def make_split(count: int, size: int, num_classes: int, device, channels_last: bool, seed: int = 0):
    import numpy as np

    from trainables.data.device import DeviceSplit

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, num_classes, (count, size, size), dtype=np.uint8)
    return DeviceSplit(images, masks, device, channels_last=channels_last)


def bench_variant(arch: str, variant: str, args, device, count_flops: bool) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from trainables import cuda_graphs
    from trainables.config import TrainConfig
    from trainables.engine import seed_everything, train_one_epoch
    from trainables.losses import make_loss
    from trainables.models import build_model
    from trainables.models.transfer import trainable_parameters
    from trainables.optim import make_optimizer
    from trainables.step import autocast_context

    fast = variant != "fp32"
    graphs = variant == "fast+graphs"
    config = TrainConfig(arch=arch, image_size=(args.image_size, args.image_size), batch_size=args.batch_size,
                         device=str(device), amp="auto" if fast else "off", channels_last=fast,
                         compile=variant == "fast+compile", cuda_graphs=graphs)
    warmup = max(args.warmup, cuda_graphs.WARMUP_STEPS + 2) if graphs else args.warmup
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(0)
    model = build_model(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = trainable_parameters(model)
    if fast:
        optimizer = make_optimizer(config, model, device)  # fused on CUDA
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, amsgrad=config.amsgrad, weight_decay=config.weight_decay)
    criterion = make_loss(config)  # the engine's: cross-entropy on the {"out": logits} that train_step passes it
    forward_model = torch.compile(model) if config.compile else model
    autocast = autocast_context(config, device)
    step = cuda_graphs.graphed_train_step(config, device, forward_model, optimizer, criterion)
    generator = torch.Generator().manual_seed(0)

    def run(split) -> float:
        synchronize(device)
        started = time.perf_counter()
        train_one_epoch(forward_model, optimizer, criterion, split, batch_size=args.batch_size,
                        num_classes=config.classes, generator=generator, augment=None, autocast=autocast,
                        step=step)
        synchronize(device)
        return time.perf_counter() - started

    one_batch = make_split(args.batch_size, args.image_size, config.classes, device, config.channels_last, 1)
    flops = None
    if count_flops:
        counter = FlopCounterMode(display=False)
        with counter:
            first_step = run(one_batch)
        flops = counter.get_total_flops()
    else:
        first_step = run(one_batch)
    for _ in range(max(0, warmup - 1)):
        run(one_batch)
    timed = make_split(args.batch_size * args.steps, args.image_size, config.classes, device,
                       config.channels_last, 2)
    seconds = run(timed)
    step_seconds = seconds / args.steps
    result = {
        "arch": arch, "variant": variant, "steps": args.steps, "warmup": warmup, "batch_size": args.batch_size,
        "seconds": seconds, "step_seconds": step_seconds, "images_per_second": args.batch_size / step_seconds,
        "first_step_seconds": first_step, "amp": config.amp if fast else "off", "channels_last": config.channels_last,
        "fused_optimizer": fast and device.type == "cuda", "compile": config.compile,
        "cuda_graphs": step is not None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    if config.compile:
        result["compile_seconds"] = max(0.0, first_step - step_seconds)
    if flops is not None:
        result["flops_per_step"] = flops
    say(f"{arch} {variant}: {result['images_per_second']:.1f} images/s ({step_seconds:.3f} s/step over "
        f"{args.steps} steps; first step {first_step:.2f} s)")
    return result


def torchvision_steps(arch: str, args, images, masks) -> dict:
    """arch -> {variant: one train step (a function)}: segstudy's model and step, and torchvision's plain loop."""
    import torch
    from torch import nn
    from torchvision.models import segmentation

    from trainables import metrics
    from trainables.config import TrainConfig
    from trainables.losses import make_loss
    from trainables.models import build_model
    from trainables.optim import make_optimizer
    from trainables.step import autocast_context, train_step

    cpu = torch.device("cpu")
    steps = {}
    for variant, channels_last in (("segstudy", True), ("segstudy contiguous", False)):
        config = TrainConfig(arch=arch, num_classes=args.classes, image_size=(args.image_size, args.image_size),
                             batch_size=args.batch_size, device="cpu", channels_last=channels_last)
        torch.manual_seed(0)
        model = build_model(config)
        batch = images
        if config.channels_last:  # as the engine does (fit, DeviceSplit)
            model = model.to(memory_format=torch.channels_last)
            batch = images.contiguous(memory_format=torch.channels_last)
        optimizer = make_optimizer(config, model, cpu)
        criterion, autocast = make_loss(config), autocast_context(config, cpu)
        model.train()
        steps[variant] = (lambda m=model, o=optimizer, c=criterion, b=batch, a=autocast:
                          train_step(m, o, c, b, masks, a))
    torch.manual_seed(0)
    plain = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=args.classes).train()
    defaults = TrainConfig()
    optimizer = torch.optim.AdamW(plain.parameters(), lr=defaults.lr, amsgrad=defaults.amsgrad,
                                  weight_decay=defaults.weight_decay)
    criterion = nn.CrossEntropyLoss(ignore_index=metrics.IGNORE_INDEX)

    def plain_step():
        loss = criterion(plain(images)["out"], masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    steps["plain torchvision"] = plain_step
    return steps


def against_torchvision(args) -> int:
    import gc
    import statistics

    import torch

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    masks = torch.randint(0, args.classes, (args.batch_size, args.image_size, args.image_size), generator=generator)
    say(f"CPU, batch {args.batch_size}, {args.image_size}x{args.image_size}, {args.repeats} repeats of {args.steps} "
        f"steps, torch threads {torch.get_num_threads()}")
    results = []
    for arch in args.archs:
        steps = torchvision_steps(arch, args, images, masks)
        for step in steps.values():  # warm-up: first-call allocations and kernel choices
            step()
        times = {variant: {"wall": [], "cpu": []} for variant in VARIANTS_VS_TORCHVISION}
        for repeat in range(args.repeats):
            order = VARIANTS_VS_TORCHVISION[repeat % 3:] + VARIANTS_VS_TORCHVISION[:repeat % 3]
            for variant in order:
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    steps[variant]()
                times[variant]["cpu"].append((time.process_time() - cpu) / args.steps)
                times[variant]["wall"].append((time.perf_counter() - wall) / args.steps)
        del steps
        gc.collect()
        row = {"arch": arch, "seconds_per_step": times}
        for variant, clocks in times.items():
            row[variant] = {f"{clock}_{stat}": function(values) for clock, values in clocks.items()
                            for stat, function in (("min", min), ("median", statistics.median))}
        for variant in ("segstudy", "segstudy contiguous"):
            row[f"{variant} speed-up"] = {key: row["plain torchvision"][key] / value
                                          for key, value in row[variant].items()}
        say(f"{arch}: CPU s/step plain {row['plain torchvision']['cpu_median']:.3f}, segstudy "
            f"{row['segstudy']['cpu_median']:.3f} ({row['segstudy speed-up']['cpu_median']:.2f}x), contiguous "
            f"{row['segstudy contiguous']['cpu_median']:.3f}; wall speed-up "
            f"{row['segstudy speed-up']['wall_median']:.2f}x")
        results.append(row)

    info = machine("cpu")
    rows = []
    for r in results:
        speed = r["segstudy speed-up"]
        met = "met" if speed["cpu_median"] >= GOAL_VS_TORCHVISION else "missed"
        rows.append([r["arch"], *(f"{r[v]['cpu_min']:.3f} / {r[v]['cpu_median']:.3f}" for v in VARIANTS_VS_TORCHVISION),
                     f"{speed['cpu_min']:.2f}x / {speed['cpu_median']:.2f}x",
                     f"{r['segstudy contiguous speed-up']['cpu_median']:.2f}x",
                     f"{speed['wall_min']:.2f}x / {speed['wall_median']:.2f}x",
                     f">= {GOAL_VS_TORCHVISION:.1f}x ({met})"])
    data = {"benchmark": "train_step_archs", "machine": info, "settings": vars(args), "results": results,
            "goal_speed_up": GOAL_VS_TORCHVISION}
    write_results("train_step_archs", data, [
        "# Train step: segstudy against plain torchvision",
        f"Machine: {machine_line(info)}. Device: cpu ({torch.get_num_threads()} torch thread(s)).",
        (f"Batch {args.batch_size} at {args.image_size}x{args.image_size}, {args.classes} classes, fp32. segstudy: "
         f"build_model and the engine's train step (trainables.step.train_step: forward, cross-entropy, AdamW "
         f"step) with TrainConfig's defaults (channels_last); plain torchvision: the same builder's model "
         f"stepped by a plain loop on the same batch. Seconds per step, min / median over {args.repeats} repeats "
         f"of {args.steps} step(s), the variants alternating; speed-up = plain time / segstudy time. CPU seconds "
         f"(process time, one torch thread) are the measure: the wall clock of a machine shared with other work "
         f"also counts the time other processes held the core (wall speed-ups in the last column but one)."),
        table(["arch", "plain torchvision CPU s/step", "segstudy CPU s/step", "segstudy contiguous CPU s/step",
               "speed-up (min / median)", "contiguous speed-up (median)", "wall speed-up (min / median)", "goal"],
              rows),
        load_note(info),
        "Command: `python benchmarks/train_step.py --against-torchvision`.",
    ])
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (8 with --against-torchvision)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 2 on CPU, 3 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="fast path with torch.compile as well")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="the fast path with the train step as a CUDA graph as well (eager without CUDA)")
    parser.add_argument("--against-torchvision", action="store_true",
                        help="each torchvision arch's CPU step: segstudy against a plain torchvision loop")
    parser.add_argument("--archs", nargs="+", default=list(TORCHVISION_ARCHS), choices=TORCHVISION_ARCHS)
    parser.add_argument("--repeats", type=int, default=7, help="--against-torchvision: timed repeats per variant")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 with --against-torchvision)")
    parser.add_argument("--classes", type=int, default=3, help="--against-torchvision: classes predicted")
    args = parser.parse_args(argv)
    if args.against_torchvision:
        args.batch_size = args.batch_size or 8
        args.steps = max(1, args.steps or 1)
        args.repeats = max(1, args.repeats)
        args.threads = args.threads or 1
        return against_torchvision(args)
    args.batch_size = args.batch_size or 64

    import torch

    device = resolve_device(args.device)
    warmup, steps = DEFAULT_STEPS["cuda" if device.type == "cuda" else "cpu"]
    args.warmup = max(1, args.warmup if args.warmup is not None else warmup)
    args.steps = max(1, args.steps if args.steps is not None else steps)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    say(f"device {device}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
        f"{args.warmup} warm-up + {args.steps} timed steps, torch threads {torch.get_num_threads()}")

    variants = ["fp32", "fast"] + ["fast+compile"] * args.compile + ["fast+graphs"] * args.cuda_graphs
    results = []
    for arch in args.models:
        flops = None
        for variant in variants:
            result = bench_variant(arch, variant, args, device, count_flops=flops is None)
            flops = result.get("flops_per_step", flops)
            result["flops_per_step"] = flops
            result["tflops_per_second"] = flops / result["step_seconds"] / 1e12
            result["gflops_per_image"] = flops / args.batch_size / 1e9
            results.append(result)

    info = machine(str(device))
    on_gpu = device.type == "cuda"
    rows = []
    for r in results:
        notes = [f"{r['steps']} timed steps after {r['warmup']} warm-up"]
        if r["variant"] != "fp32":
            parts = ["channels_last"] + (["bf16 autocast", "fused AdamW"] if on_gpu else [])
            notes.append(" + ".join(parts))
        if r.get("compile"):
            notes.append(f"compile {r['compile_seconds']:.1f} s (first step, not in the rate)")
        if r["variant"] == "fast+graphs":
            notes.append("train step as one CUDA graph" if r["cuda_graphs"] else "cuda_graphs: eager (no CUDA)")
        if r.get("peak_memory_gib") is not None:
            notes.append(f"peak {r['peak_memory_gib']:.2f} GiB allocated")
        target = ""
        if on_gpu and r["variant"] != "fp32":
            goal = GPU_TARGETS[r["arch"]]
            target = f">= {goal:,} ({'met' if r['images_per_second'] >= goal else 'missed'})"
        rows.append([LABELS[r["arch"]], r["variant"], str(device), f"{r['images_per_second']:,.1f}",
                     f"{r['step_seconds']:.3f}", f"{r['tflops_per_second']:.3f}", f"{r['gflops_per_image']:.2f}",
                     target, "; ".join(notes)])
    if not on_gpu:
        for arch in args.models:
            rows.append([LABELS[arch], "fast", TARGET_GPU, "to measure: no GPU available in this session", "", "", "",
                         f">= {GPU_TARGETS[arch]:,}", "run `benchmarks/gpu/run` on a GPU machine"])
    data = {"benchmark": "train_step", "machine": info, "settings": vars(args), "results": results,
            "gpu_targets_images_per_second": GPU_TARGETS}
    write_results("train_step_cuda" if on_gpu else "train_step", data, [
        "# Training step: images/s and achieved TFLOP/s",
        f"Machine: {machine_line(info)}. Device: {device}.",
        (f"Batch {args.batch_size} at {args.image_size}x{args.image_size}, the engine's train_one_epoch "
         f"(normalise, forward, loss, backward, AdamW step, on-device metrics). FLOPs from FlopCounterMode "
         f"(forward + backward of one step)."),
        table(["model", "path", "device", "images/s", "s/step", "TFLOP/s", "GFLOP/image", "target", "notes"], rows),
        load_note(info),
        ("Command: `make bench-step` (`python benchmarks/train_step.py [--batch-size 64] [--steps N] [--compile] "
         "[--cuda-graphs]`)."),
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
