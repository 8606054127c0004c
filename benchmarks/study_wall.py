"""Study wall time: `study run search_spaces/report.yaml` at full size, split into its phases.

Made for a GPU machine (report.yaml: 18 trials + 1 pretraining job, 30 epochs of
3,680 pets pictures each). On a GPU it runs the study once per `--gpu-fractions` value
(default 0.25, 0.5 and 1 GPU per trial: packed four or two to a GPU against one trial
per GPU) and samples the GPU's utilisation throughout; without one, once on the CPU.
It generates datasets of the real sizes (pets 3,680 trainval / 3,669 test; Cityscapes
2,975 train / 500 val) in benchmarks/.work/, builds their caches (not timed: a one-off
per dataset), then times each fresh `study run` process and splits its wall time from
its timestamped progress lines:

  prepare        process start -> plan written (imports, validation, cache checks)
  ray_startup    plan written -> first pretraining trial started (ray.init, Tune, first actor)
  pretraining    first pretraining trial started -> last pretraining line
  stage_switch   pretraining done -> first main trial started
  trials         first main trial started -> last main line
  shutdown       -> process exit (ray.shutdown)

and adds each stage's summed epoch_seconds from the exported epochs.

report.yaml's `fcn_imagenet` row needs the torchvision ResNet-50 weights in the torch
hub cache; where they are missing, a randomly initialised state dict of the same shape
is written under benchmarks/.work/torch_home and TORCH_HOME points there for the run
(the same work per step; the results say so). Extra `--set KEY=VALUE` overrides are
passed to `study run`, e.g. a small try-out:

    python benchmarks/study_wall.py --small --set seeds=1 --set train.epochs=1 --set pretraining.cityscapes.epochs=1

Full size (GPU machine): `make bench-study-wall` (`python benchmarks/study_wall.py`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

from common import (WORK, first_line, generated_dataset, load_note, machine, machine_line, run_timed, say,
                    stage_end, study_command, study_env, table, write_results)

SPEC = "search_spaces/report.yaml"
REAL_SIZES = {"pets": (3680, 3669), "cityscapes": (2975, 500)}
SMALL_SIZES = {"pets": (64, 32), "cityscapes": (32, 16)}
NAME = "report-wall"


def imagenet_weights_env(env: dict) -> tuple[dict, bool]:
    """env with TORCH_HOME pointing at placeholder ResNet-50 weights when the real ones are not cached."""
    import torch
    import torchvision
    from torchvision.models import ResNet50_Weights

    name = os.path.basename(ResNet50_Weights.DEFAULT.url)
    if os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", name)):
        return env, False
    home = WORK / "torch_home"
    target = home / "hub" / "checkpoints" / name
    if not target.exists():
        say(f"no ImageNet ResNet-50 weights in {torch.hub.get_dir()}: writing random placeholder weights to {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.resnet50().state_dict(), target)
    return {**env, "TORCH_HOME": str(home)}, True


def prepare(spec_path: str, overrides: list[str]) -> None:
    """Build every cache the study needs now, outside the timing, as `study run` does before Ray starts."""
    from study.plan import make_plan
    from study.runner import build_caches
    from study.spec import load_spec
    from trainables.data import dataset_fingerprint

    spec = load_spec(spec_path, overrides=overrides)
    build_caches(make_plan(spec, dataset_fingerprint, study_name=NAME))


def phases(lines: list, wall: float) -> dict:
    marks = {
        "planned": first_line(lines, f"study {NAME}:"),
        "pretrain_start": first_line(lines, "[pretrain] started"),
        "pretrain_end": stage_end(lines, "pretrain"),
        "main_start": first_line(lines, "[main] started"),
        "main_end": stage_end(lines, "main"),
    }

    def between(a, b):
        return None if a is None or b is None else round(b - a, 2)

    return {
        "marks_seconds": marks,
        "prepare": between(0.0, marks["planned"]),
        "ray_startup": between(marks["planned"], marks["pretrain_start"] or marks["main_start"]),
        "pretraining": between(marks["pretrain_start"], marks["pretrain_end"]),
        "stage_switch": between(marks["pretrain_end"], marks["main_start"]),
        "trials": between(marks["main_start"], marks["main_end"]),
        "shutdown": between(marks["main_end"], wall),
        "total": round(wall, 2),
    }


class GpuSampler:
    """`nvidia-smi` polled in the background: how busy the GPU was during a run.

    utilization.gpu is the share of each sample period in which a kernel ran; idle
    seconds sum (1 - utilization) over the samples. Without nvidia-smi, nothing is measured.
    """

    INTERVAL_MS = 500

    def __init__(self, log_path):
        self.log_path = log_path
        self.process = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 f"-lms={self.INTERVAL_MS}"], stdout=open(self.log_path, "w"), stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def summary(self) -> dict | None:
        if self.process is None:
            return None
        samples = [float(v) for v in self.log_path.read_text().split() if v.replace(".", "", 1).isdigit()]
        if not samples:
            return None
        interval = self.INTERVAL_MS / 1000
        return {"samples": len(samples), "busy_percent": round(sum(samples) / len(samples), 1),
                "idle_seconds": round(sum(1 - v / 100 for v in samples) * interval, 1)}


def run_once(args, overrides: list[str], env: dict, gpu_fraction: float | None) -> dict | None:
    """One timed `study run`; None when it failed."""
    label = "spec" if gpu_fraction is None else f"gpu{gpu_fraction:g}"
    run_dir = WORK / f"study-wall-{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    storage = run_dir / "studies"
    command = study_command() + ["run", args.spec, "--storage", str(storage), "--name", NAME]
    if gpu_fraction is not None:
        overrides = overrides + [f"resources.gpu={gpu_fraction:g}", "max_concurrent=null"]
    for override in overrides:
        command += ["--set", override]
    say("timing: " + " ".join(command))
    with GpuSampler(run_dir / "gpu-utilization.csv") as sampler:
        run = run_timed(command, run_dir / "study.log", env=env)
    if run["returncode"] != 0:
        say(f"the study failed (exit {run['returncode']}); see {run_dir / 'study.log'}")
        return None

    from study.api import load_study

    trials, epochs = load_study(NAME, storage=str(storage))
    result = {
        "gpu_per_trial": gpu_fraction,
        "phases_seconds": phases(run["lines"], run["wall_seconds"]),
        "train_seconds_by_stage": {stage: float(epochs.loc[epochs["stage"] == stage, "epoch_seconds"].sum())
                                   for stage in ("pretrain", "main")},
        "trials_by_stage": {stage: int((trials["stage"] == stage).sum()) for stage in ("pretrain", "main")},
        "statuses": trials["status"].value_counts().to_dict(),
        "trial_devices": sorted(set(trials["device"].dropna().tolist())),
        "gpu": sampler.summary(),
        "trial_wall_seconds": trials[["trial_key", "stage", "wall_seconds"]].to_dict(orient="records"),
    }
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=SPEC)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to `study run` (repeatable)")
    parser.add_argument("--gpu-fractions", default="0.25,0.5,1",
                        help="GPU per trial of each timed run, comma-separated (default 0.25,0.5,1: four, two and "
                             "one trial per GPU); ignored without a GPU, where the study runs once on the CPU")
    parser.add_argument("--small", action="store_true",
                        help="small generated datasets instead of the real sizes (a try-out, not a measurement)")
    parser.add_argument("--keep", action="store_true", help="keep the study folders under benchmarks/.work")
    args = parser.parse_args(argv)

    import torch

    sizes = SMALL_SIZES if args.small else REAL_SIZES
    roots = {name: generated_dataset(name, train, val) for name, (train, val) in sizes.items()}
    overrides = [f"datasets.{name}.root={root}" for name, root in roots.items()] + args.overrides
    env, placeholder = imagenet_weights_env(study_env())
    say("building the caches (not timed)")
    prepare(args.spec, overrides)

    fractions = [float(f) for f in args.gpu_fractions.split(",")] if torch.cuda.is_available() else [None]
    runs = []
    for fraction in fractions:
        result = run_once(args, overrides, env, fraction)
        if result is None:
            return 1
        runs.append(result)

    devices = sorted({device for run in runs for device in run["trial_devices"]})
    info = machine(",".join(devices))
    counts = runs[0]["trials_by_stage"]
    size_note = "small try-out datasets" if args.small else "generated datasets of the real sizes"
    data = {
        "benchmark": "study_wall", "machine": info,
        "settings": {"spec": args.spec, "overrides": args.overrides, "small": args.small,
                     "dataset_sizes": sizes, "placeholder_imagenet_weights": placeholder},
        "runs": runs, "trial_devices": devices,
    }
    rows = []
    for run in runs:
        split, gpu = run["phases_seconds"], run["gpu"]
        per_gpu = "spec's (no GPU: CPU)" if run["gpu_per_trial"] is None else (
            f"{run['gpu_per_trial']:g} ({int(1 / run['gpu_per_trial'])} per GPU)")
        cells = ["" if split[p] is None else f"{split[p]:.1f}"
                 for p in ("prepare", "ray_startup", "pretraining", "stage_switch", "trials", "shutdown", "total")]
        gpu_cells = [f"{gpu['idle_seconds']:.0f}", f"{gpu['busy_percent']:.0f}%"] if gpu else ["n/a", "n/a"]
        rows.append([per_gpu, *cells, *gpu_cells])
    header = ["GPU per trial", "prepare s", "Ray start-up s", "pretraining s", "stage switch s", "trials s",
              "shutdown s", "total s", "GPU idle s", "GPU busy"]
    out_name = "study_wall" if not (args.small or args.overrides) else "study_wall_tryout"
    write_results(out_name, data, [
        f"# Study wall time: `study run {args.spec}`",
        f"Machine: {machine_line(info)}. Trials ran on: {', '.join(devices) or 'unknown'}.",
        f"{counts['pretrain']} pretraining + {counts['main']} main trials on {size_note}"
        + (f"; overrides: {', '.join(f'`{o}`' for o in args.overrides)}" if args.overrides else "")
        + ("; placeholder (random) ImageNet weights" if placeholder else "") + ".",
        table(header, rows),
        "Phases from the run's timestamped progress lines: prepare (imports, validation, plan), Ray start-up "
        "(to the first trial), pretraining, the switch to the main stage, the main trials, shutdown. GPU idle: "
        "nvidia-smi's utilization.gpu sampled every 0.5 s over the whole run.",
        load_note(info),
        "Command: `make bench-study-wall` (`python benchmarks/study_wall.py`).",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
