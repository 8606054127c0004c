"""One table of every benchmark's latest figures: results/benchmarks/summary.md (what README's Performance shows).

    python benchmarks/summary.py
"""

from __future__ import annotations

import json

from common import RESULTS, load_note, machine_line, say, table

GPU_PENDING = "to measure: no GPU available in this session"
TARGET_GPU = "1x H200"
STUDY_TARGET_SECONDS = 120  # the whole report.yaml on one H200
LABELS = {"fcn_resnet50": "FCN-ResNet50", "segformer_b0": "SegFormer-B0"}
OVERHEAD_TARGET_SECONDS = 0.15  # added cost per trial over bare Tune
READ_TARGETS = {"status": 0.5, "export": 1.0, "report": 4.0}  # seconds on the smoke study (16 trials or fewer)


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def gpu_name(data: dict) -> str:
    info = data["machine"]
    return f"{info.get('gpu_count', 1)}x {info['gpu']}" if info.get("gpu") else info.get("device", "cpu")


def main() -> int:
    rows, machines, infos = [], {}, []

    def seen(data: dict) -> None:
        machines[machine_line({**data["machine"], "when": data["machine"]["when"][:10]})] = True
        infos.append(data["machine"])

    data = load("input_pipeline")
    if data:
        seen(data)
        rows.append(["input pipeline: cached vs seed-style loader", data["machine"]["device"],
                     (f"{data['cached']['images_per_second']:,.0f} vs {data['seed_style']['images_per_second']:,.0f} "
                     f"img/s = **{data['speedup']:.0f}x**"), f">= {data['target_speedup']:.0f}x",
                     "met" if data["target_met"] else "missed"])
    data = load("augment_input")
    if data:
        seen(data)
        for size, speedup in zip(data["sizes"], data["speedup_median_at_each_size"]):
            rows.append([(f"augmented input path at {size['size'][0]}x{size['size'][1]} -> {size['crop'][0]}x"
                          f"{size['crop'][1]} crops: cache + device augmentation vs torchvision v2 + DataLoader"),
                         data["machine"]["device"], f"**{speedup:.1f}x** (median epochs)",
                         f">= {data['target_speedup']:.0f}x", "met" if speedup >= data["target_speedup"] else "missed"])
    data = load("stream_memory")
    if data:
        seen(data)
        counts = ", ".join(f"{r['count']:,}" for r in data["runs"])
        peaks = ", ".join(f"{r['peak_rss_mib']:,.0f}" for r in data["runs"])
        rows.append([f"peak RSS of a training process, streamed splits of {counts} pictures at "
                     f"{data['settings']['size']}x{data['settings']['size']}", "cpu",
                     f"{peaks} MiB: spread {data['peak_spread']:.1%}", f"within {data['target_spread']:.0%}",
                     "met" if data["target_met"] else "missed"])
    for name in ("train_step", "train_step_cuda"):
        data = load(name)
        if not data:
            continue
        seen(data)
        on_gpu = name == "train_step_cuda"
        for r in data["results"]:
            goal = data["gpu_targets_images_per_second"][r["arch"]]
            target, verdict = "", ""
            if on_gpu and r["variant"] != "fp32":
                target, verdict = f">= {goal:,} img/s", "met" if r["images_per_second"] >= goal else "missed"
            memory = f", {r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") is not None else ""
            rows.append([f"train step {LABELS[r['arch']]}, {r['variant']}, batch {r['batch_size']}",
                         gpu_name(data) if on_gpu else data["machine"]["device"],
                         f"{r['images_per_second']:,.1f} img/s, {r['tflops_per_second']:.3f} TFLOP/s{memory}", target,
                         verdict])
    if not load("train_step_cuda"):
        for arch, goal in {"fcn_resnet50": 15_000, "segformer_b0": 30_000}.items():
            rows.append([f"train step {LABELS[arch]}, fast, batch 64", TARGET_GPU, GPU_PENDING,
                         f">= {goal:,} img/s", ""])
    data = load("train_step_archs")
    if data:
        seen(data)
        for r in data["results"]:
            speed, contiguous = r["segstudy speed-up"]["cpu_median"], r["segstudy contiguous speed-up"]["cpu_median"]
            rows.append([f"train step {r['arch']}: segstudy's vs plain torchvision's (batch "
                         f"{data['settings']['batch_size']}, {data['settings']['image_size']}x"
                         f"{data['settings']['image_size']})", data["machine"].get("device", "cpu"),
                         f"**{speed:.2f}x** (contiguous {contiguous:.2f}x), CPU time, median",
                         f">= {data['goal_speed_up']:.1f}x", "met" if speed >= data["goal_speed_up"] else "missed"])
    data = load("data_check")
    if data:
        seen(data)
        sizes = [r["images"] for r in data["results"]]
        largest = max(data["results"], key=lambda r: r["images"])
        fits = data["fits"]
        rows.append([f"`study data check`, {min(sizes):,} to {max(sizes):,} images at "
                     f"{data['settings']['image_size']}x{data['settings']['image_size']}", "cpu",
                     (f"{largest['cold_median']:.1f} s first check, {largest['warm_median']:.2f} s rerun at "
                      f"{largest['images']:,}; linear: {1000 * fits['cold']['seconds_per_image']:.2f} ms/image "
                      f"(R² {fits['cold']['r2']:.3f})"), "linear", "met" if fits["cold"]["r2"] >= 0.99 else "missed"])
    data = load("gpu_smoke")
    if data and not data.get("dry_run"):
        seen(data)
        checked = [r for r in data["results"] if r["verdict"] in ("ok", "FAILED", "error")]
        rows.append(["GPU correctness smoke: fast settings vs fp32, CUDA graphs vs eager", gpu_name(data),
                     f"{len(checked) - data['failed']} of {len(checked)} checks within tolerance", "all",
                     "met" if not data["failed"] else "missed"])
    else:
        rows.append(["GPU correctness smoke: fast settings vs fp32, CUDA graphs vs eager", TARGET_GPU, GPU_PENDING,
                     "all", ""])
    data = load("gpu_memory")
    if data and not data.get("dry_run") and data.get("largest_trial_gib"):
        seen(data)
        fitting = min(r["trials_fitting"] for r in data["results"] if "trials_fitting" in r)
        rows.append(["GPU memory of one trial (largest model and setting)", gpu_name(data),
                     (f"{data['largest_trial_gib']:.1f} GiB: {fitting} trials fit in 90% of "
                      f"{data['gpu_total_gib']:.0f} GiB"), "", ""])
    else:
        rows.append(["GPU memory of one trial", TARGET_GPU, GPU_PENDING, "", ""])
    data = load("study_wall")
    if data and "cuda" in data.get("trial_devices", []):
        seen(data)
        for run in data["runs"]:
            split, gpu = run["phases_seconds"], run["gpu"]
            idle = f", GPU idle {gpu['idle_seconds']:.0f} s" if gpu else ""
            cut = " (cut short by the budget)" if run.get("cut_short") else ""
            rows.append([f"`study run search_spaces/report.yaml`, full size, {run['gpu_per_trial']:g} GPU per trial",
                         gpu_name(data), (f"{split['total']:.0f} s{cut} (Ray start-up {split['ray_startup']} s, "
                         f"pretraining {split['pretraining']} s, trials {split['trials']} s{idle})"),
                         f"<= {STUDY_TARGET_SECONDS} s", "" if cut else
                         "met" if split["total"] <= STUDY_TARGET_SECONDS else "missed"])
        for skipped in data.get("skipped", []):
            rows.append([(f"`study run search_spaces/report.yaml`, full size, {skipped['gpu_per_trial']:g} GPU per "
                         "trial"), gpu_name(data), f"to measure: skipped ({skipped['reason']})",
                         f"<= {STUDY_TARGET_SECONDS} s", ""])
    else:
        rows.append(["`study run search_spaces/report.yaml`, full size, 0.125 to 1 GPU per trial", TARGET_GPU,
                     GPU_PENDING, f"<= {STUDY_TARGET_SECONDS} s", ""])
    data = load("overhead")
    if data and "summary" in data:
        seen(data)
        extra, sizes = data["summary"]["extra_per_trial"], data["settings"]["sizes"]
        met = extra["median"] <= OVERHEAD_TARGET_SECONDS
        rows.append([f"added cost per trial, study vs bare Tune doing the same training (N = {sizes})",
                     "cpu", (f"{extra['median']:+.2f} s median, {extra['min']:+.2f} s min (slopes: study "
                             f"{data['summary']['study']['slope_median']:.2f}, bare "
                             f"{data['summary']['bare']['slope_median']:.2f} s/trial)"),
                     f"<= {OVERHEAD_TARGET_SECONDS} s", "met" if met else "missed"])
        growth = data.get("worker_rss_growth_after_first")
        if growth is not None:
            rows.append(["reused worker's memory across trials (after the first)", "cpu", f"{100 * growth:+.1f}%",
                         "within 5%", "met" if abs(growth) <= 0.05 else "missed"])
        footprint = data["footprint"]
        ratio = footprint["checkpoint_bytes"][0] / footprint["final_weights_bytes"][0]
        rows.append(["stored bytes of a finished trial / its weights", "cpu", f"{ratio:.2f}x", "<= 2.2x",
                     "met" if ratio <= 2.2 else "missed"])
    data = load("read_side")
    if data:
        seen(data)
        for command, goal in READ_TARGETS.items():
            smoke = [r for r in data["results"] if r["command"] == command and r["kind"] == "grid"]
            if not smoke:
                continue
            small, large = min(smoke, key=lambda r: r["trials"]), max(smoke, key=lambda r: r["trials"])
            rows.append([f"`study {command}`, synthetic grid studies of {small['trials']} to {large['trials']} "
                         f"trials x 30 epochs", "cpu", (f"{small['min']:.2f} s to {large['min']:.2f} s "
                                               f"({1000 * large['min'] / large['trials']:.1f} ms per trial at "
                                               f"{large['trials']})"),
                         f"<= {goal} s on the smoke study", "met" if small["min"] <= goal else "missed"])
    markdown = "\n\n".join(part for part in [
        "# Benchmarks: latest figures",
        "Machines: " + "; ".join(machines) + ".",
        table(["benchmark", "device", "measured", "target", "target met?"], rows),
        load_note(*infos),
        "Details: results/benchmarks/*.md and *.json; commands in benchmarks/README.md.",
    ] if part)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text(markdown + "\n")
    say(f"wrote {RESULTS / 'summary.md'}")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
