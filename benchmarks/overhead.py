"""Per-trial cost of the study service against bare Ray Tune doing the same training, like for like.

Both sides run N tiny trials (SegFormer-B0, 1 epoch on 8 generated pictures at 32x32: about a
second of training each), one at a time, with the same Tune settings (one CPU per trial,
max_concurrent_trials=1, reuse_actors=True), each in a fresh process with an embedded Ray:

- study: `study run` of a generated one-configuration study file with N seeds;
- bare Tune: a function trainable calling the same `trainables.engine.fit` with the same
  TrainConfig and `tune.report` per epoch (no checkpoints, no event log, no record).

For several N (default 4, 8, 16), interleaved (study N, bare N, study N', bare N', ...) and repeated
(--repeats), the wall time of each process is taken. Per repeat, a least-squares line of wall time
against N gives each side's marginal cost per added trial (the slope) and its fixed cost (the
intercept: Ray start-up to the first trial and shut-down); min and median over repeats are reported.
The study also records each trial's worker memory (worker_rss_mib) and checkpoint bytes.

    python benchmarks/overhead.py [--sizes 4 8 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import (
    REPO,
    WORK,
    generated_dataset,
    load_note,
    machine,
    machine_line,
    say,
    study_command,
    study_env,
    table,
    write_results,
)

SETTINGS = {"arch": "segformer_b0", "dataset": "pets", "image_size": [32, 32], "epochs": 1, "batch_size": 8,
            "val_interval": 1, "max_train_samples": 8, "max_val_samples": 4}


def study_file(folder: Path, data_root: Path, trials: int) -> Path:
    import yaml

    spec = {"name": f"overhead{trials}", "datasets": {"pets": {"root": str(data_root)}},
            "train": {k: v for k, v in SETTINGS.items() if k != "arch"},
            "configurations": [{"name": "tiny", "arch": SETTINGS["arch"]}], "seeds": trials,
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 1, "max_failures": 0}
    path = folder / f"overhead{trials}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# -- bare Tune (in its own process: `overhead.py --bare N --data DIR --storage DIR`) ----------------
def bare_trial(config):
    from ray import tune

    from trainables.config import TrainConfig
    from trainables.engine import fit

    settings = TrainConfig.from_dict({**SETTINGS, "data_root": config["data_root"], "seed": config["seed"],
                                      "num_threads": 1})
    fit(settings, on_epoch_end=lambda record, snapshot: tune.report({"epoch": record["epoch"]}), reuse_data=True)


def bare_tune(trials: int, data_root: str, storage: str) -> int:
    import ray
    from ray import tune

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(bare_trial, {"cpu": 1})
    tuner = tune.Tuner(trainable, param_space={"seed": tune.grid_search(list(range(trials))), "data_root": data_root},
                       tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
                       run_config=tune.RunConfig(name="bare", storage_path=storage, verbose=0))
    grid = tuner.fit()
    ray.shutdown()
    return 1 if grid.errors else 0


# -- one timed process per side and size ------------------------------------------------------------
def timed(command: list[str]) -> float:
    import subprocess

    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=study_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        say(done.stderr[-3000:])
        raise SystemExit(f"{command[:4]} failed with exit status {done.returncode}")
    return seconds


def line_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through (n, seconds)."""
    ns, ys = [n for n, _ in points], [y for _, y in points]
    mean_n, mean_y = statistics.fmean(ns), statistics.fmean(ys)
    slope = sum((n - mean_n) * (y - mean_y) for n, y in points) / sum((n - mean_n) ** 2 for n in ns)
    return slope, mean_y - slope * mean_n


def study_footprint(storage: Path, name: str) -> dict:
    """Worker memory per trial (in the order they ran) and checkpoint bytes of the finished trials."""
    sys.path.insert(0, str(REPO))
    from study.reading.results import load_results
    from study.storage import Storage

    rows = [r for r in load_results(Storage(storage), name).rows if r["stage"] == "main"]
    rows.sort(key=lambda r: r["trial_id"])
    checkpoint_bytes = [sum(f.stat().st_size for f in Path(r["checkpoint"]).iterdir()) for r in rows]
    weights_bytes = [Path(r["weights_final"]).stat().st_size for r in rows]
    return {"worker_rss_mib": [r["worker_rss_mib"] for r in rows], "checkpoint_bytes": checkpoint_bytes,
            "final_weights_bytes": weights_bytes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        return bare_tune(args.bare, args.data, args.storage)

    data_root = generated_dataset("pets", 8, 4, image_size=(32, 32))
    work = WORK / "overhead"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    runs = {"study": [], "bare": []}
    footprint = None
    for repeat in range(args.repeats):
        for n in args.sizes:
            storage = work / f"study-{repeat}-{n}"
            spec = study_file(work, data_root, n)
            seconds = timed([*study_command(), "run", str(spec), "--storage", str(storage)])
            runs["study"].append({"repeat": repeat, "trials": n, "seconds": seconds})
            if n == max(args.sizes) and footprint is None:
                footprint = study_footprint(storage, f"overhead{n}")
            shutil.rmtree(storage, ignore_errors=True)
            bare = timed([sys.executable, __file__, "--bare", str(n), "--data", str(data_root),
                          "--storage", str(work / f"bare-{repeat}-{n}")])
            runs["bare"].append({"repeat": repeat, "trials": n, "seconds": bare})
            say(f"repeat {repeat + 1}, {n} trials: study {seconds:.1f} s, bare Tune {bare:.1f} s")
    fits = {side: [line_fit([(r["trials"], r["seconds"]) for r in runs[side] if r["repeat"] == k])
                   for k in range(args.repeats)] for side in runs}
    summary = {side: {"slope_min": min(f[0] for f in fits[side]),
                      "slope_median": statistics.median(f[0] for f in fits[side]),
                      "intercept_min": min(f[1] for f in fits[side]),
                      "intercept_median": statistics.median(f[1] for f in fits[side])} for side in fits}
    differences = [a[0] - b[0] for a, b in zip(fits["study"], fits["bare"])]
    summary["extra_per_trial"] = {"min": min(differences), "median": statistics.median(differences)}
    rss = [m for m in footprint["worker_rss_mib"] if m is not None]
    growth = (max(rss[1:]) - rss[1]) / rss[1] if len(rss) > 2 else None
    info = machine()
    data = {"machine": info, "settings": {**SETTINGS, "sizes": args.sizes, "repeats": args.repeats,
                                          "max_concurrent": 1, "reuse_actors": True},
            "runs": runs, "fits": fits, "summary": summary, "footprint": footprint,
            "worker_rss_growth_after_first": growth}
    rows = [[side, f"{summary[side]['slope_min']:.2f} / {summary[side]['slope_median']:.2f}",
             f"{summary[side]['intercept_min']:.1f} / {summary[side]['intercept_median']:.1f}"]
            for side in ("study", "bare")]
    extra = summary["extra_per_trial"]
    rows.append(["study − bare", f"{extra['min']:.2f} / {extra['median']:.2f}", ""])
    checkpoint = footprint["checkpoint_bytes"][0] / footprint["final_weights_bytes"][0]
    write_results("overhead", data, [
        "# Per-trial cost: the study service against bare Ray Tune doing the same training",
        machine_line(info), load_note(info),
        f"N = {args.sizes} trials of one epoch on 8 pictures, one at a time, reused workers, fresh processes, "
        f"{args.repeats} repeats interleaved. Seconds, min / median over repeats.",
        table(["side", "marginal cost per added trial (s)", "fixed cost (s)"], rows),
        f"Worker memory per trial, in the order they ran (MiB): {', '.join(f'{m:.0f}' for m in rss)}; "
        f"growth after the first: {100 * growth:.1f}%." if growth is not None else "",
        f"A finished trial's checkpoint: {footprint['checkpoint_bytes'][0]:,} bytes, {checkpoint:.2f}x its final "
        f"weights ({footprint['final_weights_bytes'][0]:,} bytes).",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
