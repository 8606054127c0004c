"""The read side of a study: `study status`, `study export` and `study report` on synthetic studies of many trials.

Synthetic studies of N trials x 30 epochs (16 ... 1,024) are written without training, in the
service's own layout and through its own writers (tests/fake_study.py): a grid of 8 configurations
and a search study. Each command runs as a fresh process (--repeats times, min and median); the
time per trial shows whether a command stays linear as studies grow.

    python benchmarks/read_side.py [--sizes 16 64 256 1024] [--repeats 3] [--no-report]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from common import REPO, WORK, load_note, machine, machine_line, say, study_command, study_env, table, write_results

EPOCHS = 30
CONFIGURATIONS = 8


def synthetic_study(storage, name: str, trials: int, search: bool) -> None:
    sys.path.insert(0, str(REPO))
    from tests.fake_study import fake_trial, write_fake_study

    made = []
    for index in range(trials):
        config, seed = index % CONFIGURATIONS, index // CONFIGURATIONS
        curve = [0.3 + 0.01 * ((index * 7 + step) % 20) for step in range(EPOCHS // 2)]
        made.append(fake_trial(f"c{config}", seed, curve, lr=1e-4 * (1 + index % 29),
                               arch="segformer_b0" if config % 2 else "fcn_resnet50"))
    write_fake_study(storage, name, made, search={"num_samples": trials} if search else None)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=study_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-report", action="store_true", help="time status and export only")
    args = parser.parse_args()
    work = WORK / "read-side"
    shutil.rmtree(work, ignore_errors=True)
    commands = ["status", "export"] + ([] if args.no_report else ["report"])
    results = []
    for kind in ("grid", "search"):
        for n in args.sizes:
            storage, name = work / f"{kind}-{n}", f"{kind}{n}"
            say(f"writing a synthetic {kind} study of {n} trials x {EPOCHS} epochs")
            synthetic_study(storage, name, n, kind == "search")
            for command in commands:
                argv = [*study_command(), command, name, "--storage", str(storage)]
                if command in ("export", "report"):
                    argv += ["--out", str(work / f"out-{kind}-{n}-{command}")]
                seconds = [timed(argv) for _ in range(args.repeats)]
                results.append({"kind": kind, "trials": n, "command": command, "seconds": seconds,
                                 "min": min(seconds), "median": statistics.median(seconds)})
                say(f"  {command}: {min(seconds):.2f} s (min of {args.repeats})")
    info = machine()
    rows = [[r["kind"], r["trials"], r["command"], f"{r['min']:.2f} / {r['median']:.2f}",
             f"{1000 * r['min'] / r['trials']:.1f}"] for r in results]
    write_results("read_side", {"machine": info, "settings": {"sizes": args.sizes, "epochs": EPOCHS,
                                                               "repeats": args.repeats}, "results": results}, [
        "# The read side: status, export and report on synthetic studies",
        machine_line(info), load_note(info),
        f"Synthetic studies of N trials x {EPOCHS} epochs (a grid of {CONFIGURATIONS} configurations; a search), "
        f"each command a fresh process, {args.repeats} runs: seconds min / median, and ms per trial (min).",
        table(["study", "trials", "command", "seconds (min / median)", "ms per trial"], rows),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
