"""One table of every benchmark's latest figures: results/benchmarks/summary.md (what README's Performance shows).

    python benchmarks/summary.py
"""

from __future__ import annotations

import json

from common import RESULTS, load_note, machine_line, say, table

GPU_PENDING = "to measure: no GPU available in this session"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    rows, machines, infos = [], {}, []
    data = load("input_pipeline")
    if data:
        machines[machine_line({**data["machine"], "when": data["machine"]["when"][:10]})] = True
        infos.append(data["machine"])
        rows.append(["input pipeline: cached vs seed-style loader", data["machine"]["device"],
                     f"{data['cached']['images_per_second']:,.0f} vs {data['seed_style']['images_per_second']:,.0f} "
                     f"img/s = **{data['speedup']:.0f}x**", f">= {data['target_speedup']:.0f}x",
                     "met" if data["target_met"] else "missed"])
    data = load("train_step")
    if data:
        machines[machine_line({**data["machine"], "when": data["machine"]["when"][:10]})] = True
        device = data["settings"]["device"] if data["settings"]["device"] != "auto" else data["machine"]["device"]
        on_gpu = "cuda" in str(device)
        infos.append(data["machine"])
        for r in data["results"]:
            label = {"fcn_resnet50": "FCN-ResNet50", "segformer_b0": "SegFormer-B0"}[r["arch"]]
            goal = data["gpu_targets_images_per_second"][r["arch"]]
            target, verdict = "", ""
            if on_gpu and r["variant"] != "fp32":
                target, verdict = f">= {goal:,} img/s", "met" if r["images_per_second"] >= goal else "missed"
            rows.append([f"train step {label}, {r['variant']}, batch {r['batch_size']}", data["machine"]["device"],
                         f"{r['images_per_second']:,.1f} img/s, {r['tflops_per_second']:.3f} TFLOP/s", target, verdict])
        if not on_gpu:
            for arch, goal in data["gpu_targets_images_per_second"].items():
                label = {"fcn_resnet50": "FCN-ResNet50", "segformer_b0": "SegFormer-B0"}[arch]
                rows.append([f"train step {label}, fast, batch 64", "1x H100", GPU_PENDING, f">= {goal:,} img/s", ""])
    data = load("study_wall")
    if data and "cuda" in data.get("trial_devices", []):
        machines[machine_line({**data["machine"], "when": data["machine"]["when"][:10]})] = True
        infos.append(data["machine"])
        for run in data["runs"]:
            split, gpu = run["phases_seconds"], run["gpu"]
            idle = f", GPU idle {gpu['idle_seconds']:.0f} s" if gpu else ""
            rows.append([f"`study run search_spaces/report.yaml`, full size, {run['gpu_per_trial']:g} GPU per trial",
                         ",".join(run["trial_devices"]),
                         f"{split['total']:.0f} s (Ray start-up {split['ray_startup']} s, pretraining "
                         f"{split['pretraining']} s, trials {split['trials']} s{idle})", "<= 300 s on one H100",
                         "met" if split["total"] <= 300 else "missed"])
    else:
        rows.append(["`study run search_spaces/report.yaml`, full size, packed vs one trial per GPU", "1x H100",
                     GPU_PENDING, "<= 300 s", ""])
    data = load("overhead")
    if data:
        machines[machine_line({**data["machine"], "when": data["machine"]["when"][:10]})] = True
        infos.append(data["machine"])
        rows.append([f"per-trial overhead, {data['settings']['spec']} vs bare Tune ({data['settings']['trials']} trials)",
                     "cpu", f"{data['study']['per_trial_overhead_seconds']:.2f} vs "
                     f"{data['bare_tune']['per_trial_overhead_seconds']:.2f} s/trial", "study < bare Tune",
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
