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
    if data:
        seen(data)
        settings = data["settings"]
        rows.append([f"per-trial overhead, {settings['spec']} vs bare Tune ({settings['trials']} trials)",
                     "cpu", (f"{data['study']['per_trial_overhead_seconds']:.2f} vs "
                     f"{data['bare_tune']['per_trial_overhead_seconds']:.2f} s/trial"), "study < bare Tune",
                     "met" if data["target_met"] else "missed"])
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
