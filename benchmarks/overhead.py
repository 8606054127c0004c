"""Per-trial scheduling overhead: `study run search_spaces/smoke.yaml` against bare Ray Tune.

Study: the wall time of `study run search_spaces/smoke.yaml` (a fresh process, embedded
local Ray, both stages), minus the sum of its trials' own training time (the
`epoch_seconds` of every epoch in the exported epochs), divided by its number of trials.
The smoke datasets are generated and cached beforehand, so the timed run finds them ready.

Bare Tune: a fresh process that starts an embedded Ray (`ray.init(address="local")`)
and runs the same number of trivial trials (a function trainable that imports torch
and reports once) with Tune's default settings; its wall time divided by the trials.

Both run in one invocation, one after the other, each in its own storage folder
(removed afterwards unless --keep).

    python benchmarks/overhead.py [--spec search_spaces/smoke.yaml] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from common import (
    REPO,
    WORK,
    first_line,
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


# -- bare Tune (runs in its own process: `overhead.py --bare-tune N --storage DIR`) ----------
def trivial_trial(config):
    import ray
    import torch
    from ray import tune

    tune.report({"torch_threads": torch.get_num_threads(),
                 "assigned_cpu": ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)})


def bare_tune(trials: int, storage: str) -> int:
    started = time.perf_counter()
    import ray
    from ray import tune

    imported = time.perf_counter()
    ray.init(address="local", include_dashboard=False)
    initialised = time.perf_counter()
    tuner = tune.Tuner(trivial_trial, param_space={"index": tune.grid_search(list(range(trials)))},
                       run_config=tune.RunConfig(name="bare", storage_path=storage))
    grid = tuner.fit()
    fitted = time.perf_counter()
    frame = grid.get_dataframe()
    ray.shutdown()
    print("BARE-TUNE " + json.dumps({
        "import_seconds": imported - started, "ray_init_seconds": initialised - imported,
        "fit_seconds": fitted - initialised, "errors": len(grid.errors), "trials": len(frame),
        "torch_threads": sorted(set(frame["torch_threads"].tolist())) if "torch_threads" in frame else [],
        "assigned_cpu": sorted(set(frame["assigned_cpu"].tolist())) if "assigned_cpu" in frame else [],
    }), flush=True)
    return 0


# -- the study ---------------------------------------------------------------------------
def prepare_smoke_data(spec_path: str, data_root) -> list[str]:
    """Generate the study's datasets and build their caches now, as `study run` would, outside the timing."""
    from study.plan import make_plan
    from study.runner import build_caches, generate_missing_datasets
    from study.spec import load_spec
    from trainables.data import dataset_fingerprint

    spec = load_spec(spec_path)
    overrides = [f"datasets.{name}.root={data_root / name}" for name in spec.used_datasets()]
    spec = load_spec(spec_path, overrides=overrides)
    generate_missing_datasets(spec)
    build_caches(make_plan(spec, dataset_fingerprint, study_name="overhead"))
    return overrides


def phases(lines: list, wall: float) -> dict:
    planned = first_line(lines, "study overhead:")
    pre_start = first_line(lines, "[pretrain] started")
    pre_end = stage_end(lines, "pretrain")
    main_start = first_line(lines, "[main] started")
    main_end = stage_end(lines, "main")
    result = {"to_plan_written": planned, "first_pretrain_trial_started": pre_start, "pretrain_ended": pre_end,
              "first_main_trial_started": main_start, "main_ended": main_end, "process_exit": wall}
    return {key: (round(value, 2) if value is not None else None) for key, value in result.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="search_spaces/smoke.yaml")
    parser.add_argument("--keep", action="store_true", help="keep the study and Tune folders under benchmarks/.work")
    parser.add_argument("--bare-tune", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_tune:
        return bare_tune(args.bare_tune, args.storage)

    run_dir = WORK / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}"
    say("preparing the smoke datasets and caches (not timed)")
    overrides = prepare_smoke_data(args.spec, WORK / "smoke-data")

    # -- the study service -------------------------------------------------------------
    storage = run_dir / "studies"
    command = study_command() + ["run", args.spec, "--storage", str(storage), "--name", "overhead"]
    for override in overrides:
        command += ["--set", override]
    say("timing: " + " ".join(command))
    study = run_timed(command, run_dir / "study.log", env=study_env())
    if study["returncode"] != 0:
        say(f"the study failed (exit {study['returncode']}); see {run_dir / 'study.log'}")
        return 1
    from study.api import load_study

    trials, epochs = load_study("overhead", storage=str(storage))
    finished = trials[trials["status"] == "finished"]
    n_trials = len(finished)
    train_seconds = float(epochs["epoch_seconds"].sum())
    by_stage = {stage: float(epochs.loc[epochs["stage"] == stage, "epoch_seconds"].sum())
                for stage in ("pretrain", "main")}
    counts = {stage: int((finished["stage"] == stage).sum()) for stage in ("pretrain", "main")}
    from study.spec import load_spec

    concurrency = load_spec(args.spec).max_concurrent or 1
    study_wall = study["wall_seconds"]
    study_overhead = (study_wall - train_seconds) / n_trials
    # If the concurrent main trials' training overlapped perfectly, the wall clock held only 1/concurrency of it.
    packed_train = by_stage["pretrain"] + by_stage["main"] / concurrency
    study_overhead_packed = (study_wall - packed_train) / n_trials

    # -- bare Ray Tune, same number of trivial trials ------------------------------------
    command = [sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--bare-tune", str(n_trials),
               "--storage", str(run_dir / "bare")]
    say("timing: " + " ".join(command))
    bare = run_timed(command, run_dir / "bare.log", env=study_env(), echo=False)
    if bare["returncode"] != 0:
        say(f"bare Tune failed (exit {bare['returncode']}); see {run_dir / 'bare.log'}")
        return 1
    bare_info = json.loads(next(text for _, text in bare["lines"] if text.startswith("BARE-TUNE "))[len("BARE-TUNE "):])
    bare_wall = bare["wall_seconds"]
    bare_overhead = bare_wall / n_trials

    info = machine("cpu")
    met = study_overhead < bare_overhead
    data = {
        "benchmark": "overhead",
        "machine": info,
        "settings": {"spec": args.spec, "trials": n_trials, "trials_by_stage": counts, "max_concurrent": concurrency},
        "study": {"wall_seconds": study_wall, "train_seconds": train_seconds, "train_seconds_by_stage": by_stage,
                  "per_trial_overhead_seconds": study_overhead,
                  "per_trial_overhead_seconds_if_training_overlapped": study_overhead_packed,
                  "timeline_seconds": phases(study["lines"], study_wall),
                  "trial_wall_seconds": finished[["trial_key", "wall_seconds"]].to_dict(orient="records")},
        "bare_tune": {"wall_seconds": bare_wall, "per_trial_overhead_seconds": bare_overhead, **bare_info},
        "target": "study per-trial overhead below bare Tune's",
        "target_met": met,
    }
    rows = [
        [f"`study run {args.spec}` ({counts['pretrain']} pretraining + {counts['main']} main trials, "
         f"max_concurrent {concurrency}, reuse_actors)", f"{study_wall:.1f}", f"{train_seconds:.1f}",
         f"**{study_overhead:.2f}**", f"{study_overhead_packed:.2f}"],
        [f"bare Ray Tune, {n_trials} trivial trials (import torch, report once), default settings",
         f"{bare_wall:.1f}", "0", f"**{bare_overhead:.2f}**", ""],
    ]
    timeline = data["study"]["timeline_seconds"]
    write_results("overhead", data, [
        "# Per-trial overhead of the study service on CPU",
        f"Machine: {machine_line(info)}. Device: cpu.",
        table(["run", "wall s", "trials' training s", "overhead s/trial", "s/trial if concurrent training overlapped"],
              rows),
        f"Target (study overhead below bare Tune's): {'met' if met else 'missed'}.",
        "Overhead = (wall time of the fresh process - sum of the trials' epoch_seconds) / trials. The study's "
        "overhead includes everything but the epochs: Python and torch imports, planning, Ray start-up, two Tune "
        "experiments, model building, loading data to the device, checkpoints (every validation) and the encoder "
        "artifact. The last column divides the main trials' training time by max_concurrent, as if the two "
        "concurrent trials' epochs overlapped perfectly (an upper bound on the overhead).",
        f"Study timeline (s since start): plan written {timeline['to_plan_written']}, first pretraining trial "
        f"started {timeline['first_pretrain_trial_started']}, pretraining done {timeline['pretrain_ended']}, "
        f"first main trial started {timeline['first_main_trial_started']}, main done {timeline['main_ended']}, "
        f"exit {timeline['process_exit']}. Bare Tune: imports {bare_info['import_seconds']:.1f} s, ray.init "
        f"{bare_info['ray_init_seconds']:.1f} s, Tuner.fit {bare_info['fit_seconds']:.1f} s; torch threads in "
        f"its trials {bare_info['torch_threads']}, assigned CPUs {bare_info['assigned_cpu']}.",
        load_note(info),
        "Command: `make bench-overhead` (`python benchmarks/overhead.py`).",
    ])
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
