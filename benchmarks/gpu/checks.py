"""Checks of the GPU path that the other benchmarks do not make: a correctness smoke and GPU memory per trial.

    python benchmarks/gpu/checks.py smoke  [--device auto] [--variants ...] [--models ...] [--tiny]
    python benchmarks/gpu/checks.py memory [--device auto] [--models ...] [--tiny]

smoke: each model trains through the engine's own `fit` (the path a trial takes) once per
setting, from the same initial weights on the same batches: 8 epochs of a generated pets
set of 1.5 batches (64 at 64x64), so every epoch is one full batch and one smaller one, and
the learning rate changes every epoch (ExponentialLR 0.98). The settings: fp32, fp32 again
(how repeatable the device is), another seed (the noise scale), bf16 autocast,
channels_last, fused AdamW, CUDA graphs (fp32), the GPU default (bf16 + channels_last +
fused AdamW; twice) and it with CUDA graphs, and, with --variants, torch.compile (on full
batches only, so that it compiles once, against fp32 on the same batches). With CUDA graphs
the first 3 full batches train eagerly, the 4th is captured, the rest are replays, and the
smaller batches stay eager, so the run covers every path of trainables/cuda_graphs.py.

Compared: each epoch's train loss and the final val loss and val mIoU (relative differences).

    a setting vs fp32              epoch 1 within 2e-3 (same arithmetic in another order or
                                   kernel) or 5e-2 (bf16), and every value within the larger of
                                   that and the noise scale (another seed's largest difference)
    GPU default + CUDA graphs      every value within the larger of 1e-4 and twice the GPU
      vs GPU default               default's own repeat difference: the graph replays the same
                                   kernels, so it must be exact up to the device's own
                                   nondeterminism (e.g. atomics in bilinear upsampling's backward)

cuDNN runs deterministically and TF32 is off here. On a machine without CUDA the CUDA graph
settings train eagerly (with one warning line) and compare exactly.

memory: per model, one epoch of a trial's training and validation (`fit` with the trial
defaults, pets at the real size 3,680 / 3,669, batch 64 at 64x64), with and without CUDA
graphs: peak memory allocated and reserved by torch, plus the CUDA context this process
holds, i.e. about what one trial takes of the GPU, and how many such trials fit in it.

Each writes results/benchmarks/gpu_smoke.* or gpu_memory.* (or under $SEGSTUDY_BENCH_RESULTS)
and exits 1 when a check failed. `benchmarks/gpu/run` runs both.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common

from common import generated_dataset, machine, machine_line, resolve_device, say, table, write_results

MODELS = ("fcn_resnet50", "segformer_b0")
LABELS = {"fcn_resnet50": "FCN-ResNet50", "segformer_b0": "SegFormer-B0"}
SAME_MATH, BF16, GRAPH = 2e-3, 5e-2, 1e-4
GPU_DEFAULT = {"amp": "bf16", "channels_last": True, "fused_optimizer": True}
# name: (settings over the fp32 base, reference, check): check "setting" (epoch 1 within the tolerance,
# the rest within noise), "graph" (exact up to the device's nondeterminism), or None (shown, not checked).
VARIANTS = {
    "fp32": ({}, None, None, None),
    "fp32 repeat": ({}, "fp32", None, None),
    "other seed": ({"seed": 1}, "fp32", None, None),
    "bf16 autocast": ({"amp": "bf16"}, "fp32", "setting", BF16),
    "channels_last": ({"channels_last": True}, "fp32", "setting", SAME_MATH),
    "fused AdamW": ({"fused_optimizer": True}, "fp32", "setting", SAME_MATH),
    "CUDA graphs": ({"cuda_graphs": True}, "fp32", "setting", SAME_MATH),
    "GPU default": (GPU_DEFAULT, "fp32", "setting", BF16),
    "GPU default repeat": (GPU_DEFAULT, "GPU default", None, None),
    "GPU default + CUDA graphs": ({**GPU_DEFAULT, "cuda_graphs": True}, "GPU default", "graph", GRAPH),
    "fp32, full batches": ({"full_batches_only": True}, None, None, None),
    "torch.compile": ({"compile": True, "full_batches_only": True}, "fp32, full batches", "setting", SAME_MATH),
}
COMPILE_VARIANTS = ("fp32, full batches", "torch.compile")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in COMPILE_VARIANTS)
SIZES = {"real": {"batch": 64, "image": 64, "epochs": 8, "memory_train": 3680, "memory_val": 3669},
         "tiny": {"batch": 4, "image": 32, "epochs": 4, "memory_train": 12, "memory_val": 8}}


def base_config(args, root: Path, **changes):
    """fp32, contiguous, unfused AdamW, eager: the reference settings, with `changes` over them."""
    from trainables.config import TrainConfig

    size = SIZES["tiny" if args.tiny else "real"]
    return TrainConfig(**{"dataset": "pets", "data_root": str(root), "image_size": (size["image"],) * 2,
                          "batch_size": size["batch"], "device": str(args.device), "seed": 0, "amp": "off",
                          "channels_last": False, "fused_optimizer": False, "compile": False, "cuda_graphs": False,
                          **changes})


def smoke(args) -> int:
    import torch

    from trainables.engine import fit

    size = SIZES["tiny" if args.tiny else "real"]
    batch = size["batch"]
    root = generated_dataset("pets", batch + batch // 2, batch, image_size=(size["image"],) * 2)
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
        torch.backends.cudnn.allow_tf32 = False
    rows, results, failed = [], [], 0
    for arch in args.models:
        runs: dict[str, dict] = {}
        for name in args.variants:
            settings = dict(VARIANTS[name][0])
            full_only = settings.pop("full_batches_only", False)
            config = base_config(args, root, arch=arch, epochs=size["epochs"], val_interval=size["epochs"],
                                 max_train_samples=batch if full_only else None, **settings)
            started = time.perf_counter()
            try:
                records, error = fit(config).records, None
            except Exception as caught:  # noqa: BLE001 - a failed setting is a result; the others still run
                records, error = [], f"{type(caught).__name__}: {caught}"
            runs[name] = {"values": _values(records), "seconds": time.perf_counter() - started, "error": error,
                          "records": [{k: r.get(k) for k in ("epoch", "lr", "train_loss", "val_loss", "val_miou",
                                                             "epoch_seconds")} for r in records]}
            say(f"{arch} {name}: {error or _shown(runs[name]['values'])} ({runs[name]['seconds']:.1f} s)")
        noise = _difference(runs.get("other seed"), runs.get("fp32"))
        for name, run in runs.items():
            _, reference, check, tolerance = VARIANTS[name]
            ref = runs.get(reference)
            difference = _difference(run, ref)
            first = _difference(run, ref, first_only=True)
            if run["error"] or (reference and (ref is None or ref["error"])):
                verdict, bound = "error", None
            elif check == "setting":
                bound = max(tolerance, noise or 0.0)
                verdict = "ok" if first <= tolerance and difference <= bound else "FAILED"
            elif check == "graph":  # exact up to how much the same eager run differs from itself
                repeat = _difference(runs.get(f"{reference} repeat"), ref) or _difference(runs.get("fp32 repeat"),
                                                                                           runs.get("fp32"))
                bound = max(tolerance, 2 * (repeat or 0.0))
                verdict = "ok" if difference <= bound else "FAILED"
            else:
                bound = None
                verdict = "repeatability" if name.endswith(" repeat") else "noise scale" if name == "other seed" \
                    else "reference"
            failed += verdict in ("FAILED", "error")
            error = run["error"] or (ref or {}).get("error") or (
                f"its reference {reference!r} did not run" if reference and ref is None else None)
            results.append({"arch": arch, "variant": name, "reference": reference, "check": check,
                            "tolerance": tolerance, "bound": bound, "first_epoch_difference": first,
                            "max_relative_difference": difference, "verdict": verdict, "seconds": run["seconds"],
                            "error": error, "records": run["records"]})
            rows.append([LABELS[arch], name, reference or "", error or _shown(run["values"]),
                         "" if first is None else f"{first:.1e}", "" if difference is None else f"{difference:.1e}",
                         _rule(check, tolerance, bound), verdict, f"{run['seconds']:.1f}"])
    info = machine(str(args.device))
    write_results(args.result_name or "gpu_smoke", {"benchmark": "gpu_smoke", "machine": info, "dry_run": args.tiny,
                                "settings": {**size, "variants": args.variants, "models": args.models},
                                "tolerances": {"same_math": SAME_MATH, "bf16": BF16, "graph_vs_eager": GRAPH},
                                "failed": failed, "results": results}, [
        f"# GPU correctness smoke{' (dry run: tiny sizes on the CPU, not a check of a GPU)' if args.tiny else ''}",
        f"Machine: {machine_line(info)}. Device: {args.device}.",
        (f"Each setting trains {size['epochs']} epochs of one batch of {batch} and one of {batch // 2} at "
         f"{size['image']}x{size['image']} (lr x0.98 per epoch) through `trainables.engine.fit`, from the same "
         "initial weights and batches, then validates; compared with its reference: epoch 1's train loss and "
         "every epoch's train loss with the final val loss and mIoU (largest relative difference). cuDNN "
         "deterministic, TF32 off. Rules in benchmarks/gpu/checks.py."),
        table(["model", "setting", "reference", "train loss epochs 1, last; val loss", "epoch 1 diff.",
               "max diff.", "rule", "verdict", "s"], rows),
        f"{failed} check(s) failed." if failed else "Every check passed.",
        "Command: `python benchmarks/gpu/checks.py smoke` (part of `benchmarks/gpu/run`).",
    ])
    return 1 if failed else 0


def _values(records: list[dict]) -> list[float]:
    """Each epoch's train loss, then the last epoch's val loss and val mIoU."""
    if not records or not records[-1].get("validated"):
        return []
    return [r["train_loss"] for r in records] + [records[-1]["val_loss"], records[-1]["val_miou"]]


def _difference(run: dict | None, reference: dict | None, first_only: bool = False) -> float | None:
    """Largest relative difference of the compared values (only epoch 1's train loss with first_only)."""
    if not run or not reference or run["error"] or reference["error"]:
        return None
    a, b = run["values"], reference["values"]
    if len(a) != len(b) or not a:
        return None
    if first_only:
        a, b = a[:1], b[:1]
    if not all(math.isfinite(x) for x in a + b):
        return math.inf
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def _shown(values: list[float]) -> str:
    return f"{values[0]:.4f}, {values[-3]:.4f}; {values[-2]:.4f}" if len(values) >= 3 else "no records"


def _rule(check: str | None, tolerance: float | None, bound: float | None) -> str:
    if check == "setting":
        return f"epoch 1 <= {tolerance:g}, all <= {bound:.1e}" if bound is not None else f"epoch 1 <= {tolerance:g}"
    if check == "graph":
        return f"all <= {bound:.1e}" if bound is not None else f"all <= {tolerance:g}"
    return ""


def memory(args) -> int:
    import torch

    from trainables.engine import fit

    size = SIZES["tiny" if args.tiny else "real"]
    root = generated_dataset("pets", size["memory_train"], size["memory_val"], image_size=(64, 64))
    on_gpu = args.device.type == "cuda"
    context_gib = total_gib = None
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        torch.zeros(1, device=args.device)  # the CUDA context, before anything is allocated
        free, total = torch.cuda.mem_get_info(args.device)
        context_gib, total_gib = (total - free) / 2**30, total / 2**30
    results, rows = [], []
    for arch in args.models:
        for graphs in (False, True):
            config = base_config(args, root, arch=arch, epochs=1, val_interval=1,
                                 amp="auto", channels_last=True, fused_optimizer=None, cuda_graphs=graphs)
            if on_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(args.device)
            started = time.perf_counter()
            record = fit(config).records[-1]
            seconds = time.perf_counter() - started
            result = {"arch": arch, "cuda_graphs": graphs, "seconds": seconds, "train_images": size["memory_train"],
                      "val_images": size["memory_val"], "images_per_second": record["images_per_second"]}
            if on_gpu:
                allocated = torch.cuda.max_memory_allocated(args.device) / 2**30
                reserved = torch.cuda.max_memory_reserved(args.device) / 2**30
                trial = context_gib + reserved
                result.update(peak_allocated_gib=allocated, peak_reserved_gib=reserved, context_gib=context_gib,
                              trial_gib=trial, trials_fitting=math.floor(0.9 * total_gib / trial))
                cells = [f"{allocated:.2f}", f"{reserved:.2f}", f"{trial:.2f}", str(result["trials_fitting"])]
            else:
                cells = ["n/a (no CUDA)"] * 4
            results.append(result)
            rows.append([LABELS[arch], "on" if graphs else "off", *cells, f"{seconds:.1f}"])
            say(f"{arch} cuda_graphs={graphs}: " + ", ".join(cells))
    info = machine(str(args.device))
    worst = max((r["trial_gib"] for r in results if "trial_gib" in r), default=None)
    write_results(args.result_name or "gpu_memory", {"benchmark": "gpu_memory", "machine": info, "dry_run": args.tiny,
                                 "context_gib": context_gib, "gpu_total_gib": total_gib, "largest_trial_gib": worst,
                                 "results": results}, [
        f"# GPU memory per trial{' (dry run: tiny sizes on CPU, nothing measured)' if args.tiny else ''}",
        f"Machine: {machine_line(info)}. Device: {args.device}.",
        (f"One epoch of training and validation through `fit` with a trial's defaults (bf16 autocast on CUDA, "
         f"channels_last, fused AdamW), pets {size['memory_train']:,} / {size['memory_val']:,} at "
         f"{size['image']}x{size['image']}, batch {size['batch']}: the split held on the device, model, optimizer, "
         "activations. A trial takes about the CUDA context plus torch's peak reserved memory; trials that fit: how "
         "many such trials 90% of the GPU's memory holds."),
        table(["model", "CUDA graphs", "peak allocated GiB", "peak reserved GiB", "trial GiB (with context)",
               "trials that fit", "s"], rows),
        "Command: `python benchmarks/gpu/checks.py memory` (part of `benchmarks/gpu/run`).",
    ])
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=("smoke", "memory"))
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                        help="smoke: the settings to train (default: all but torch.compile, which "
                             f"`--variants {' '.join(repr(v) for v in COMPILE_VARIANTS)}` runs)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (benchmarks/gpu/run --dry-run)")
    parser.add_argument("--result-name", default=None,
                        help="the results' file name (default gpu_smoke or gpu_memory; run's compile step: "
                             "gpu_smoke_compile)")
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    return smoke(args) if args.check == "smoke" else memory(args)


if __name__ == "__main__":
    raise SystemExit(main())
