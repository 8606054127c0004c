"""Study wall time: `study run search_spaces/report.yaml` at full size, split into its phases.

Made for a GPU machine (report.yaml: 18 trials + 1 pretraining job, 30 epochs of
3,680 pets pictures each). On a GPU it runs the study once per `--gpu-fractions` value,
in that order (default 0.25, 0.125, 0.5, 1 GPU per trial: packed four or eight to a GPU,
then two, then one trial per GPU), and samples the GPU's utilisation and memory
throughout; without one, once on the CPU. `--budget SECONDS` bounds the whole command:
a run is skipped when the estimate from the runs before it (their fixed phases plus their
main trials' summed wall time spread over the new run's concurrency) does not fit in what
is left, and a run still going at the end of the budget is interrupted (SIGINT, as Ctrl-C)
and reported as cut short; the results say what was skipped and why.

It generates datasets of the real sizes (pets 3,680 trainval / 3,669 test; Cityscapes
2,975 train / 500 val; the pictures drawn at the training size, 64x64 and 64x128, since
the timed study reads only the caches) in benchmarks/.work/, builds their caches (not
timed: a one-off per dataset), then times each fresh `study run` process and splits its
wall time from its timestamped progress lines:

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

(`--tiny`: smaller still, for `benchmarks/gpu/run --dry-run`). A try-out writes study_wall_tryout.*.
Full size (GPU machine): `benchmarks/gpu/run`, or `make bench-study-wall` (`python benchmarks/study_wall.py`).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import time

from common import (
    WORK,
    first_line,
    generated_dataset,
    load_note,
    machine,
    machine_line,
    run_timed,
    say,
    stage_end,
    study_command,
    study_env,
    table,
    write_results,
)

SPEC = "search_spaces/report.yaml"
REAL_SIZES = {"pets": (3680, 3669), "cityscapes": (2975, 500)}
SMALL_SIZES = {"pets": (64, 32), "cityscapes": (32, 16)}
TINY_SIZES = {"pets": (16, 8), "cityscapes": (8, 4)}
PICTURE_SIZES = {"pets": (64, 64), "cityscapes": (64, 128)}  # (height, width) of the generated pictures
NAME = "report-wall"
FRACTIONS = "0.25,0.125,0.5,1"


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


def prepare(spec_path: str, overrides: list[str]):
    """Build every cache the study needs now, outside the timing, as `study run` does before Ray starts.

    Returns the study's plan.
    """
    from study.planning.plan import make_plan
    from study.planning.spec import load_spec
    from study.running.runner import build_caches
    from trainables.data import dataset_fingerprint

    spec = load_spec(spec_path, overrides=overrides)
    plan = make_plan(spec, dataset_fingerprint, study_name=NAME)
    build_caches(plan)
    return spec, plan


def concurrency(spec, main_trials: int, gpu_fraction: float | None) -> int:
    """Main trials at once: as many as the CPUs and GPU fractions hold (the runner's rule), at most max_concurrent."""
    from common import core_count

    limits = [main_trials, max(1, core_count() // max(1, math.ceil(spec.resources.cpu)))]
    if gpu_fraction:
        limits.append(max(1, int(1 / gpu_fraction + 1e-9)))
    if spec.max_concurrent:
        limits.append(spec.max_concurrent)
    return max(1, min(limits))


def estimate_seconds(run: dict, at_once: int) -> float | None:
    """A study's wall time at `at_once` main trials at a time, from a finished run of it at another packing.

    Its fixed phases (prepare, Ray start-up, pretraining, stage switch, shutdown) plus its main trials'
    summed wall time divided by the new concurrency; None when the run did not finish.
    """
    split = run["phases_seconds"]
    if run.get("cut_short") or split["trials"] is None:
        return None
    fixed = sum(split[phase] or 0.0 for phase in ("prepare", "ray_startup", "pretraining", "stage_switch", "shutdown"))
    main = sum(t["wall_seconds"] or 0.0 for t in run["trial_wall_seconds"] if t["stage"] == "main")
    return fixed + main / at_once


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
    """`nvidia-smi` polled in the background: how busy the GPU was during a run, and its memory in use.

    utilization.gpu is the share of each sample period in which a kernel ran; idle
    seconds sum (1 - utilization) over the samples. memory.used is the whole GPU's (MiB).
    Without nvidia-smi, nothing is measured.
    """

    INTERVAL_MS = 500

    def __init__(self, log_path):
        self.log_path = log_path
        self.process = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"-lms={self.INTERVAL_MS}"], stdout=open(self.log_path, "w"), stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def summary(self) -> dict | None:
        if self.process is None:
            return None
        return gpu_samples_summary(self.log_path.read_text(), self.INTERVAL_MS / 1000)


def gpu_samples_summary(text: str, interval: float) -> dict | None:
    """Busy share, idle seconds and peak memory from nvidia-smi's `utilization.gpu, memory.used` lines."""
    samples = []
    for line in text.splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) == 2 and all(v.replace(".", "", 1).isdigit() for v in values):
            samples.append((float(values[0]), float(values[1])))
    if not samples:
        return None
    busy = [u for u, _ in samples]
    return {"samples": len(samples), "busy_percent": round(sum(busy) / len(busy), 1),
            "idle_seconds": round(sum(1 - u / 100 for u in busy) * interval, 1),
            "peak_memory_used_mib": max(m for _, m in samples)}


def fraction_label(fraction: float | None) -> str:
    return "the spec's resources (no GPU)" if fraction is None else f"{fraction:g} GPU per trial"


def run_once(args, overrides: list[str], env: dict, gpu_fraction: float | None, timeout: float | None) -> dict | None:
    """One timed `study run`; None when it failed. Past `timeout` it is interrupted and reported as cut short."""
    label = "spec" if gpu_fraction is None else f"gpu{gpu_fraction:g}"
    run_dir = WORK / f"study-wall-{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    storage = run_dir / "studies"
    command = study_command() + ["run", args.spec, "--storage", str(storage), "--name", NAME]
    if gpu_fraction is not None:
        overrides = overrides + [f"resources.gpu={gpu_fraction:g}", "max_concurrent=null"]
    for override in overrides:
        command += ["--set", override]
    say("timing: " + " ".join(command) + (f" (at most {timeout:.0f} s)" if timeout is not None else ""))
    with GpuSampler(run_dir / "gpu-utilization.csv") as sampler:
        run = run_timed(command, run_dir / "study.log", env=env, timeout=timeout)
    if run["returncode"] != 0 and not run["timed_out"]:
        say(f"the study failed (exit {run['returncode']}); see {run_dir / 'study.log'}")
        return None

    from study.api import load_study

    trials, epochs = load_study(NAME, storage=str(storage))
    result = {
        "gpu_per_trial": gpu_fraction,
        "cut_short": run["timed_out"],
        "phases_seconds": phases(run["lines"], run["wall_seconds"]),
        "train_seconds_by_stage": {stage: float(epochs.loc[epochs["stage"] == stage, "epoch_seconds"].sum())
                                   for stage in ("pretrain", "main")},
        "trials_by_stage": {stage: int((trials["stage"] == stage).sum()) for stage in ("pretrain", "main")},
        "statuses": trials["status"].value_counts().to_dict(),
        "trial_devices": sorted(set(trials["run_device"].dropna().tolist())),
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
    parser.add_argument("--gpu-fractions", default=FRACTIONS,
                        help=f"GPU per trial of each timed run, comma-separated, in the order to run them (default "
                             f"{FRACTIONS}); ignored without a GPU, where the study runs once on the CPU")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="the most this command may take: runs that would not fit are skipped, one still going "
                             "at the end is cut short (default: no limit)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--small", action="store_true",
                       help="small generated datasets instead of the real sizes (a try-out, not a measurement)")
    sizes.add_argument("--tiny", action="store_true",
                       help="smaller still: a few pictures (benchmarks/gpu/run --dry-run)")
    parser.add_argument("--keep", action="store_true", help="keep the study folders under benchmarks/.work")
    args = parser.parse_args(argv)
    try:
        fractions = [float(f) for f in args.gpu_fractions.split(",")]
    except ValueError:
        fractions = []
    if not fractions or not all(0 < f <= 1 for f in fractions):
        parser.error(f"--gpu-fractions: expected numbers in (0, 1] separated by commas, got {args.gpu_fractions!r}")
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget: expected seconds > 0, got {args.budget:g}")
    started = time.monotonic()

    def left() -> float | None:
        return None if args.budget is None else args.budget - (time.monotonic() - started)

    import torch

    sizes = TINY_SIZES if args.tiny else SMALL_SIZES if args.small else REAL_SIZES
    picture = {name: (h // 2, w // 2) for name, (h, w) in PICTURE_SIZES.items()} if args.tiny else PICTURE_SIZES
    roots = {name: generated_dataset(name, train, val, image_size=picture[name])
             for name, (train, val) in sizes.items()}
    overrides = [f"datasets.{name}.root={root}" for name, root in roots.items()] + args.overrides
    say("building the caches (not timed)")
    spec, plan = prepare(args.spec, overrides)
    env, placeholder = study_env(), False
    if any(trial.config["pretrain"] == "imagenet" for trial in plan.trials):
        env, placeholder = imagenet_weights_env(env)

    if not torch.cuda.is_available():
        fractions = [None]
    runs, skipped = [], []
    for fraction in fractions:
        at_once = concurrency(spec, len(plan.trials), fraction)
        remaining = left()
        estimates = [e for e in (estimate_seconds(run, at_once) for run in runs) if e is not None]
        if remaining is not None and estimates and min(estimates) > remaining:
            reason = (f"estimated {min(estimates):.0f} s at {at_once} trials at once, "
                      f"{remaining:.0f} s of the budget left")
            skipped.append({"gpu_per_trial": fraction, "reason": reason})
        elif remaining is not None and remaining < 10:
            skipped.append({"gpu_per_trial": fraction, "reason": f"the budget was spent ({remaining:.0f} s left)"})
        elif runs and runs[-1]["cut_short"]:
            skipped.append({"gpu_per_trial": fraction, "reason": "the run before it was cut short by the budget"})
        else:
            result = run_once(args, overrides, env, fraction, timeout=remaining)
            if result is None:
                return 1
            result["main_trials_at_once"] = at_once
            if estimates:
                result["estimated_seconds"] = round(min(estimates), 1)
            runs.append(result)
            continue
        say(f"skipping {fraction_label(fraction)}: {skipped[-1]['reason']}")

    devices = sorted({device for run in runs for device in run["trial_devices"]})
    info = machine(",".join(devices))
    counts = runs[0]["trials_by_stage"] if runs else {"pretrain": len(plan.pretrain_jobs), "main": len(plan.trials)}
    size_note = ("tiny dry-run datasets" if args.tiny else "small try-out datasets" if args.small
                 else "generated datasets of the real sizes")
    data = {
        "benchmark": "study_wall", "machine": info,
        "settings": {"spec": args.spec, "overrides": args.overrides, "small": args.small, "tiny": args.tiny,
                     "dataset_sizes": sizes, "picture_sizes": picture, "placeholder_imagenet_weights": placeholder,
                     "gpu_fractions": fractions, "budget_seconds": args.budget},
        "runs": runs, "skipped": skipped, "trial_devices": devices,
    }
    rows = []
    for run in runs:
        split, gpu = run["phases_seconds"], run["gpu"]
        per_gpu = "spec's (no GPU: CPU)" if run["gpu_per_trial"] is None else (
            f"{run['gpu_per_trial']:g} ({int(1 / run['gpu_per_trial'] + 1e-9)} per GPU)")
        cells = ["" if split[p] is None else f"{split[p]:.1f}"
                 for p in ("prepare", "ray_startup", "pretraining", "stage_switch", "trials", "shutdown", "total")]
        if run["cut_short"]:
            done = sum(n for status, n in run["statuses"].items() if status in ("finished", "early_stopped"))
            cells[-1] += f" (cut short by the budget: {done} of {sum(run['statuses'].values())} trials done)"
        gpu_cells = ([f"{gpu['idle_seconds']:.0f}", f"{gpu['busy_percent']:.0f}%",
                      f"{gpu['peak_memory_used_mib'] / 1024:.1f}"] if gpu else ["n/a", "n/a", "n/a"])
        rows.append([per_gpu, run["main_trials_at_once"], *cells, *gpu_cells])
    header = ["GPU per trial", "main trials at once", "prepare s", "Ray start-up s", "pretraining s", "stage switch s",
              "trials s", "shutdown s", "total s", "GPU idle s", "GPU busy", "GPU memory peak GiB"]
    skipped_lines = [f"- {fraction_label(skip['gpu_per_trial'])}: skipped, {skip['reason']}" for skip in skipped]
    out_name = "study_wall" if not (args.small or args.tiny or args.overrides) else "study_wall_tryout"
    write_results(out_name, data, [
        f"# Study wall time: `study run {args.spec}`",
        f"Machine: {machine_line(info)}. Trials ran on: {', '.join(devices) or 'unknown'}.",
        f"{counts['pretrain']} pretraining + {counts['main']} main trials on {size_note}"
        + (f"; overrides: {', '.join(f'`{o}`' for o in args.overrides)}" if args.overrides else "")
        + ("; placeholder (random) ImageNet weights" if placeholder else "") + ".",
        table(header, rows) if rows else "No run finished.",
        "\n".join(["Not run (--budget):", *skipped_lines]) if skipped else "",
        ("Phases from the run's timestamped progress lines: prepare (imports, validation, plan), Ray start-up "
         "(to the first trial), pretraining, the switch to the main stage, the main trials, shutdown. GPU idle and "
         "memory: nvidia-smi's utilization.gpu and memory.used sampled every 0.5 s over the whole run."),
        load_note(info),
        "Command: `make bench-study-wall` (`python benchmarks/study_wall.py [--gpu-fractions ...] [--budget S]`).",
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
