"""benchmarks/gpu/run --dry-run: the GPU machine's one command, end to end on the CPU at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "benchmarks"
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_run  # noqa: E402
import study_wall  # noqa: E402


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_cpu_and_writes_its_results_apart(tmp_path):
    before = {path.name: path.read_bytes() for path in COMMITTED.iterdir()}
    out = tmp_path / "out"
    result = subprocess.run([str(REPO / "benchmarks" / "gpu" / "run"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
                            env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads((out / "gpu_run.json").read_text())
    assert report["dry_run"] is True and report["facts"]["cuda_available"] is False
    assert [(s["step"], s["status"]) for s in report["steps"]] == [
        ("smoke", "ok"), ("train_step", "ok"), ("memory", "ok"), ("study_wall", "ok")]
    assert report["skipped"] == [{"step": "compile", "why": "dry run: torch.compile on a CPU takes minutes"}]
    markdown = (out / "gpu_run.md").read_text()
    assert markdown.startswith("# GPU run: DRY RUN on the CPU at tiny sizes (nothing here is a GPU measurement)")
    assert "report.yaml keeps its 0.25" in markdown

    smoke = json.loads((out / "gpu_smoke.json").read_text())
    assert smoke["dry_run"] and smoke["machine"]["device"] == "cpu" and smoke["failed"] == 0
    graphs = next(r for r in smoke["results"] if r["variant"] == "CUDA graphs")
    assert graphs["verdict"] == "ok" and graphs["max_relative_difference"] == 0.0  # eager on CPU: the same run
    assert "dry run" in (out / "gpu_smoke.md").read_text()
    assert "dry run" in (out / "gpu_memory.md").read_text()
    step = json.loads((out / "train_step.json").read_text())
    assert {r["variant"] for r in step["results"]} == {"fp32", "fast", "fast+graphs"}
    assert step["machine"]["device"] == "cpu"
    wall = json.loads((out / "study_wall_tryout.json").read_text())
    assert wall["trial_devices"] == ["cpu"] and wall["runs"][0]["statuses"] == {"finished": 1}
    assert (out / "summary.md").exists() and (out / "logs" / "study_wall.log").exists()
    # Nothing of the committed results was touched.
    assert {path.name: path.read_bytes() for path in COMMITTED.iterdir()} == before


def test_study_wall_estimates_a_packing_from_a_finished_run():
    run = {"cut_short": False, "phases_seconds": {"prepare": 5.0, "ray_startup": 5.0, "pretraining": 20.0,
                                                  "stage_switch": 3.0, "trials": 100.0, "shutdown": 2.0},
           "trial_wall_seconds": [{"stage": "main", "wall_seconds": 40.0}] * 10
           + [{"stage": "pretrain", "wall_seconds": 20.0}]}
    assert study_wall.estimate_seconds(run, 4) == 35.0 + 400.0 / 4
    assert study_wall.estimate_seconds(run, 1) == 35.0 + 400.0
    assert study_wall.estimate_seconds({**run, "cut_short": True}, 4) is None


def wall_run(fraction, total, cut_short=False):
    return {"gpu_per_trial": fraction, "cut_short": cut_short, "phases_seconds": {"total": total}}


def test_resources_gpu_is_the_fastest_packing_that_fits_preferring_fewer_trials_per_gpu_on_a_near_tie(tmp_path):
    assert gpu_run.recommend(tmp_path)["value"] is None
    memory = {"largest_trial_gib": 3.0, "gpu_total_gib": 140.0}
    (tmp_path / "gpu_memory.json").write_text(json.dumps(memory))
    runs = [wall_run(0.25, 100.0), wall_run(0.125, 97.0), wall_run(0.5, 180.0), wall_run(1, 400.0, cut_short=True)]
    (tmp_path / "study_wall.json").write_text(json.dumps({"runs": runs}))
    choice = gpu_run.recommend(tmp_path)
    assert choice["value"] == 0.25  # 0.125 is faster by 3%: not worth twice the trials per GPU
    assert choice["text"].startswith("0.25 (report.yaml wall time by GPU per trial: 0.25: 100 s, 0.125: 97 s, 0.5")
    (tmp_path / "gpu_memory.json").write_text(json.dumps({**memory, "largest_trial_gib": 40.0}))
    assert gpu_run.recommend(tmp_path)["value"] == 0.5  # 4 or 8 trials of 40 GiB do not fit in 90% of 140 GiB


def test_the_rerun_command_names_what_was_skipped_or_cut_short(tmp_path):
    (tmp_path / "study_wall.json").write_text(json.dumps({
        "runs": [wall_run(0.25, 100.0), wall_run(0.125, 50.0, cut_short=True)],
        "skipped": [{"gpu_per_trial": 0.5, "reason": "estimated"}, {"gpu_per_trial": 1, "reason": "estimated"}]}))
    report = {"out": str(tmp_path),
              "steps": [{"step": "smoke", "status": "ok"}, {"step": "study_wall", "status": "ok"}],
              "skipped": [{"step": "compile", "why": "20 s of the budget left"}]}
    assert gpu_run.rerun_command(report) == "benchmarks/gpu/run --steps study_wall,compile --fractions 0.5,1,0.125"


def test_nvidia_smi_samples_give_busy_share_idle_seconds_and_peak_memory():
    text = "100, 2000\n50, 4096\n[Unknown Error]\n0, 1000\n"
    assert study_wall.gpu_samples_summary(text, 0.5) == {"samples": 3, "busy_percent": 50.0, "idle_seconds": 0.8,
                                                         "peak_memory_used_mib": 4096.0}
    assert study_wall.gpu_samples_summary("", 0.5) is None


def machine(gpu: bool) -> dict:
    return {"cpu_model": "x", "cores": 16, "memory_gib": 128, "torch": "2.11", "git_commit": "abc",
            "when": "2027-01-01",
            "gpu": "NVIDIA H200" if gpu else None, "gpu_count": 1, "gpu_memory_gib": 139.8, "cuda": "12.8",
            "device": "cuda" if gpu else "cpu", "load_average_at_start": 0.1}


def test_summary_shows_gpu_results_against_their_targets(tmp_path):
    """The GPU branch of benchmarks/summary.py, on result files shaped as the GPU run writes them."""
    results = {
        "train_step_cuda": {"machine": machine(True), "gpu_targets_images_per_second": {
            "fcn_resnet50": 15000, "segformer_b0": 30000}, "results": [
            {"arch": "fcn_resnet50", "variant": "fast", "batch_size": 64, "images_per_second": 16000.0,
             "tflops_per_second": 250.0, "peak_memory_gib": 2.5},
            {"arch": "segformer_b0", "variant": "fast+graphs", "batch_size": 64, "images_per_second": 29000.0,
             "tflops_per_second": 30.0, "peak_memory_gib": 1.0}]},
        "gpu_smoke": {"machine": machine(True), "dry_run": False, "failed": 1, "results": [
            {"verdict": "reference"}, {"verdict": "ok"}, {"verdict": "FAILED"}, {"verdict": "noise scale"}]},
        "gpu_memory": {"machine": machine(True), "dry_run": False, "largest_trial_gib": 3.2, "gpu_total_gib": 139.8,
                       "results": [{"trials_fitting": 39}, {"trials_fitting": 41}]},
        "study_wall": {"machine": machine(True), "trial_devices": ["cuda"], "runs": [
            {"gpu_per_trial": 0.25, "cut_short": False, "gpu": {"idle_seconds": 30.0},
             "phases_seconds": {"total": 110.0, "ray_startup": 5.0, "pretraining": 15.0, "trials": 80.0}}],
            "skipped": [{"gpu_per_trial": 1.0,
                         "reason": "estimated 400 s at 1 trials at once, 90 s of the budget left"}]},
    }
    for name, data in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "summary.py")], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "SEGSTUDY_BENCH_RESULTS": str(tmp_path)})
    summary = (tmp_path / "summary.md").read_text()
    assert ("| train step FCN-ResNet50, fast, batch 64 | 1x NVIDIA H200 | 16,000.0 img/s, 250.000 TFLOP/s, 2.5 GiB | "
            ">= 15,000 img/s | met |") in summary
    assert "| train step SegFormer-B0, fast+graphs, batch 64 | 1x NVIDIA H200 | 29,000.0 img/s" in summary
    assert ">= 30,000 img/s | missed |" in summary
    assert "| 1 of 2 checks within tolerance | all | missed |" in summary
    assert "| 3.2 GiB: 39 trials fit in 90% of 140 GiB |" in summary
    assert "0.25 GPU per trial | 1x NVIDIA H200 | 110 s (Ray start-up 5.0 s, pretraining 15.0 s, trials 80.0 s, " \
           "GPU idle 30 s) | <= 120 s | met |" in summary
    assert "1 GPU per trial | 1x NVIDIA H200 | to measure: skipped (estimated 400 s" in summary
    assert "to measure: no GPU" not in summary
