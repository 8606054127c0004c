"""Everything to measure on a GPU machine, in one command of about 8 minutes (`benchmarks/gpu/run`).

    benchmarks/gpu/run [--budget 480] [--kit benchmarks/gpu/kit] [--out DIR] [--steps ...] [--fractions ...]
    benchmarks/gpu/run --dry-run [--out DIR] [--kit DIR]

Made for a machine with a GPU, no network and a few minutes: it runs with the image's Python
(`PYTHON`, default python3) and its torch, installs what else a study needs from the kit that
`benchmarks/gpu/build-kit` made elsewhere, then runs these steps in order, each a process of
its own whose time limit is what is left of `--budget` (one that fails or runs out of time is
recorded, and the next one runs; one that cannot fit is skipped and named):

  facts       Python, torch, CUDA, GPU name and memory, cores, memory, disk. Exit 2 with one line
              when the kit is missing or built for another Python, torch or an image package is
              missing, or torch sees no CUDA device.
  install     the kit's wheels, with the kit's own pip, without network or dependency resolution,
              into benchmarks/.work/gpu-site (kept between commands on the same machine), put on
              PYTHONPATH after the working tree; the image's torch is never touched. Then every
              module a study imports is imported once.
  smoke       benchmarks/gpu/checks.py smoke: each model in fp32 and each fast setting (bf16
              autocast, channels_last, fused AdamW, CUDA graphs) against fp32 and CUDA graphs
              against eager, in tolerances (gpu_smoke.*)
  train_step  benchmarks/train_step.py --cuda-graphs: images/s and TFLOP/s of both models at
              batch 64, 64x64, fp32 vs the fast path vs the fast path as a CUDA graph (train_step_cuda.*)
  memory      benchmarks/gpu/checks.py memory: GPU memory of one trial per model (gpu_memory.*)
  study_wall  benchmarks/study_wall.py: report.yaml at the real datasets' sizes at 0.25, 0.125,
              0.5 and 1 GPU per trial as far as the budget goes, GPU idle time sampled (study_wall.*)
  compile     checks.py smoke with torch.compile (last: compiling takes minutes and compile is
              off by default) (gpu_smoke_compile.*)

Then gpu_run.json/.md (the machine, each step's status and time, what was skipped and the
command that runs it, the resources.gpu the measurements support) and summary.md, in --out
(default results/benchmarks; another folder gets a copy of the committed CPU figures first,
so its summary.md is whole). Every step's output is also in <out>/logs/.

--dry-run: the same steps on the CPU at tiny sizes (one model, a few settings, a one-trial
study), into --out (default a new temporary folder; never results/benchmarks), the install
only when --kit is given. Nothing it writes is a GPU measurement, and its files say so.
Exit status: 0 when every step that ran passed, 1 otherwise, 2 for bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common

from common import REPO, WORK, run_timed, say, table

GPU = Path(__file__).resolve().parent
KIT = GPU / "kit"
STEPS = ("smoke", "train_step", "memory", "study_wall", "compile")
FRACTIONS = "0.25,0.125,0.5,1"
BUDGET = 480.0
RESERVE = 15.0  # seconds kept at the end for gpu_run.* and summary.md
# The least time worth starting a step with (GPU), roughly its usual length.
MINIMUM = {"smoke": 60, "train_step": 45, "memory": 45, "study_wall": 90, "compile": 120}
IMAGE_MODULES = ("torchvision", "numpy", "pandas", "pyarrow", "PIL")
STUDY_MODULES = ("torch", "torchvision", "numpy", "pandas", "pyarrow", "PIL", "yaml", "ray", "ray.tune", "optuna",
                 "cityscapesscripts.helpers.labels", "study.cli", "study.running.runner", "trainables.tune_adapter")
DRY_RUN_STUDY = ["configurations=[{name: segformer_scratch, arch: segformer_b0, pretrain: none}]", "tables=null",
                 "seeds=1", "train.epochs=1", "train.image_size=32", "train.batch_size=8", "resources.cpu=1",
                 "resources.gpu=0"]
FACTS = r"""
import json, os, platform, shutil, sys
facts = {"python": platform.python_version(), "executable": sys.executable,
         "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
         "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
         "disk_free_gib": round(shutil.disk_usage(".").free / 2**30, 1)}
broken = {}
for name in ("torch",) + tuple(sys.argv[1:]):
    try:
        facts[name] = __import__(name).__version__
    except ImportError:
        facts[name] = None
    except Exception as error:  # a broken install (e.g. torchvision built for another torch)
        facts[name], broken[name] = None, f"{type(error).__name__}: {error}"
facts["broken"] = broken
if facts["torch"]:
    import torch
    facts.update(cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if facts["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                     compute_capability=f"{p.major}.{p.minor}")
print(json.dumps(facts))
"""
IMPORTS = r"""
import importlib, json, sys
versions = {}
for name in sys.argv[1:]:
    versions[name] = getattr(importlib.import_module(name), "__version__", "imported")
print(json.dumps(versions))
"""


class Refused(Exception):
    """Bad input or a machine this cannot run on: one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")


def main(argv=None) -> int:
    parser = OneLineParser(prog="benchmarks/gpu/run", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=BUDGET, metavar="SECONDS",
                        help=f"the most the whole command may take (default {BUDGET:g}); a step that would not fit "
                             "is skipped and named, one still going at the end is cut short")
    parser.add_argument("--kit", default=None, help="the kit folder (default benchmarks/gpu/kit; with --dry-run "
                                                    "the install runs only when this is given)")
    parser.add_argument("--out", default=None, help="where the results go (default results/benchmarks; with "
                                                    "--dry-run a new temporary folder)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"which steps, comma-separated (default all: "
                                                                 f"{','.join(STEPS)}); facts and install always run")
    parser.add_argument("--fractions", default=FRACTIONS,
                        help=f"GPU per trial of the study wall runs, in order (default {FRACTIONS})")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        run = prepare(args)
        return Run(args, run, started).go()
    except Refused as error:
        print(f"benchmarks/gpu/run: {error}", file=sys.stderr)
        return 2


def prepare(args) -> dict:
    """Checks of the arguments and the kit that need nothing installed: the paths and settings of the run."""
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise Refused(f"--steps: expected some of {','.join(STEPS)}, got {args.steps!r}")
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        fractions = []
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise Refused(f"--fractions: expected numbers in (0, 1] separated by commas, got {args.fractions!r}")
    if not args.budget > 0:
        raise Refused(f"--budget: expected seconds > 0, got {args.budget:g}")
    committed = (REPO / "results" / "benchmarks").resolve()
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise Refused(f"--out: {args.out} is a file, not a folder")
    if args.dry_run and args.out and Path(args.out).resolve() == committed:
        raise Refused(f"--out: a dry run does not write into {committed} (the committed results)")
    kit = Path(args.kit).resolve() if args.kit else (None if args.dry_run else KIT)
    manifest = read_manifest(kit) if kit is not None else None
    if args.dry_run:  # a new folder only once everything else is known to be right
        out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="segstudy-gpu-dry-run-"))
        work = out / "work"
    else:
        out = Path(args.out).resolve() if args.out else committed
        work = WORK
    return {"steps": steps, "fractions": fractions, "out": out, "work": work, "kit": kit, "manifest": manifest,
            "committed": committed}


def read_manifest(kit: Path) -> dict:
    path = kit / "MANIFEST.json"
    if not path.exists():
        raise Refused(f"no kit at {kit} (no MANIFEST.json): build it where the package registry is reachable with "
                      "`benchmarks/gpu/build-kit` and carry the folder with the command")
    try:
        manifest = json.loads(path.read_text())
        wanted = manifest["target"]["python"]
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise Refused(f"{path}: not a kit manifest ({error}); build the kit again") from None
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wanted != here:
        raise Refused(f"the kit in {kit} is for Python {wanted} but {sys.executable} is Python {here}: build one "
                      f"with `benchmarks/gpu/build-kit --python {here}`")
    missing = [f["name"] for f in files if not (kit / f["name"]).exists()]
    if missing:
        raise Refused(f"the kit in {kit} lacks {len(missing)} of its files ({missing[0]}, ...): build it again")
    return manifest


class Run:
    def __init__(self, args, settings: dict, started: float):
        self.args, self.started = args, started
        self.__dict__.update(settings)
        self.deadline = started + args.budget
        self.logs = self.out / "logs"
        self.site: Path | None = None
        self.report: dict = {"dry_run": args.dry_run, "budget_seconds": args.budget, "steps": [], "skipped": [],
                             "out": str(self.out), "command": " ".join(["benchmarks/gpu/run", *sys.argv[1:]])}

    # -- the run ------------------------------------------------------------------------------------------------
    def go(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not self.args.dry_run and self.out != self.committed:
            for path in self.committed.glob("*.json"):  # the CPU figures, so that summary.md is whole
                if not (self.out / path.name).exists():
                    shutil.copy2(path, self.out / path.name)
        facts = self.facts()
        self.report["facts"] = facts
        if self.kit is not None:
            self.install(facts)
        else:
            self.report["install"] = {"status": "skipped", "why": "dry run without --kit"}
            say("install: skipped (dry run without --kit)")
        for step in STEPS:
            if step in self.steps:
                self.step(step)
            else:
                self.report["skipped"].append({"step": step, "why": "not in --steps"})
        self.report["resources_gpu"] = recommend(self.out)
        self.report["seconds"] = round(time.monotonic() - self.started, 1)
        self.write()
        failed = [s for s in self.report["steps"] if s["status"] != "ok"]
        say(f"done in {self.report['seconds']:.0f} s: {len(self.report['steps']) - len(failed)} step(s) ok, "
            f"{len(failed)} not, {len(self.report['skipped'])} skipped; results in {self.out}")
        return 1 if failed else 0

    def facts(self) -> dict:
        result = subprocess.run([sys.executable, "-c", FACTS, *IMAGE_MODULES], capture_output=True, text=True,
                                cwd=REPO, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise Refused(f"{sys.executable} cannot report the machine: {last}")
        facts = json.loads(result.stdout)
        facts["nvidia_smi"] = _nvidia_smi()
        say("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items() if k not in ("executable", "broken")))
        if facts["broken"]:
            name, error = next(iter(facts["broken"].items()))
            raise Refused(f"{name} does not import with {sys.executable}: {error}")
        if not facts["torch"]:
            raise Refused(f"{sys.executable} has no torch: run with the image's Python (PYTHON=/path/to/python)")
        missing = [name for name in IMAGE_MODULES if not facts.get(name)]
        if missing and self.kit is not None:
            raise Refused(f"the image lacks {', '.join(missing)}, which the kit leaves to it: add them to the kit "
                          "(benchmarks/gpu/build_kit.py IMAGE_PACKAGES) and build it again")
        if not self.args.dry_run and not facts.get("cuda_available"):
            raise Refused(f"torch {facts['torch']} sees no CUDA device on this machine; on a CPU, "
                          "`benchmarks/gpu/run --dry-run` runs the same steps at tiny sizes")
        return facts

    def install(self, facts: dict) -> None:
        site = self.work / "gpu-site"
        stamp = hashlib.sha256((self.kit / "MANIFEST.json").read_bytes()).hexdigest()
        started = time.monotonic()
        record: dict = {"kit": str(self.kit), "site": str(site), "wheels": len(self.manifest["files"]),
                        "kit_mib": round(self.manifest["total_bytes"] / 2**20, 1)}
        if (site / ".kit-sha256").exists() and (site / ".kit-sha256").read_text() == stamp:
            record["status"] = "ok (already installed from this kit)"
        else:
            shutil.rmtree(site, ignore_errors=True)
            pip = next(self.kit.glob("pip-*.whl"), None)
            wheels = [str(self.kit / f["name"]) for f in self.manifest["files"] if f["project"] != "pip"]
            runner = [sys.executable, str(pip / "pip")] if pip else [sys.executable, "-m", "pip"]
            command = [*runner, "install", "--no-index", "--no-deps", "--no-compile", "--disable-pip-version-check",
                       "--quiet", "--target", str(site), *wheels]
            run = run_timed(command, self.logs / "install.log", echo=False, timeout=self.left())
            if run["returncode"] != 0:
                last = run["lines"][-1][1] if run["lines"] else f"exit {run['returncode']}"
                raise Refused(f"installing the kit failed: {last} (log: {self.logs / 'install.log'})")
            (site / ".kit-sha256").write_text(stamp)
            record["status"] = "ok"
        self.site = site
        result = subprocess.run([sys.executable, "-c", IMPORTS, *STUDY_MODULES], capture_output=True, text=True,
                                cwd=REPO, env=self.env(), check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise Refused(f"after installing the kit a study's modules do not import: {last}")
        versions = json.loads(result.stdout)
        if versions["torch"] != facts["torch"]:
            raise Refused(f"torch changed from {facts['torch']} to {versions['torch']}: the kit must not carry torch")
        record.update(seconds=round(time.monotonic() - started, 1), versions=versions)
        self.report["install"] = record
        say(f"install: {record['status']} in {record['seconds']:.0f} s; " + ", ".join(
            f"{k} {v}" for k, v in versions.items() if v != "imported"))

    def step(self, name: str) -> None:
        left = self.left()
        minimum = 0 if self.args.dry_run else MINIMUM[name]
        if left < minimum:
            self.report["skipped"].append({"step": name, "why": f"{left:.0f} s of the budget left, it needs about "
                                                                f"{minimum} s"})
            say(f"{name}: skipped ({self.report['skipped'][-1]['why']})")
            return
        command = self.command(name, left)
        if command is None:
            return
        say(f"{name}: {shown(command)} (at most {left:.0f} s)")
        run = run_timed(command, self.logs / f"{name}.log", env=self.env(), echo=True, timeout=left)
        status = ("cut short by the budget" if run["timed_out"] else "ok" if run["returncode"] == 0
                  else f"failed (exit {run['returncode']})")
        self.report["steps"].append({"step": name, "status": status, "seconds": round(run["wall_seconds"], 1),
                                     "command": shown(command), "log": f"logs/{name}.log"})
        say(f"{name}: {status} in {run['wall_seconds']:.0f} s")

    def command(self, name: str, left: float) -> list[str] | None:
        python, dry = sys.executable, self.args.dry_run
        checks, benchmarks = str(GPU / "checks.py"), REPO / "benchmarks"
        if name == "smoke":
            extra = ["--tiny", "--device", "cpu", "--models", "segformer_b0", "--variants", "fp32", "other seed",
                     "CUDA graphs"] if dry else []
            return [python, checks, "smoke", *extra]
        if name == "train_step":
            extra = ["--device", "cpu", "--models", "segformer_b0", "--image-size", "32", "--batch-size", "4",
                     "--warmup", "1", "--steps", "1"] if dry else []
            return [python, str(benchmarks / "train_step.py"), "--cuda-graphs", *extra]
        if name == "memory":
            tiny = ["--tiny", "--device", "cpu", "--models", "segformer_b0"] if dry else []
            return [python, checks, "memory", *tiny]
        if name == "study_wall":
            # Its own budget ends before this step's limit, so that it stops its study itself.
            command = [python, str(benchmarks / "study_wall.py"), "--gpu-fractions", ",".join(
                f"{f:g}" for f in self.fractions), "--budget", f"{max(1.0, left - 20):.0f}"]
            if dry:
                command += ["--tiny"] + [part for o in DRY_RUN_STUDY for part in ("--set", o)]
            return command
        if dry:  # compile
            self.report["skipped"].append({"step": name, "why": "dry run: torch.compile on a CPU takes minutes"})
            say("compile: skipped (dry run: torch.compile on a CPU takes minutes)")
            return None
        return [python, checks, "smoke", "--result-name", "gpu_smoke_compile", "--variants", "fp32, full batches",
                "torch.compile"]

    def env(self) -> dict:
        paths = [str(REPO)] + ([str(self.site)] if self.site else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               "SEGSTUDY_BENCH_RESULTS": str(self.out), "SEGSTUDY_BENCH_WORK": str(self.work),
               "PYTHONUNBUFFERED": "1"}
        if self.args.dry_run:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a machine with a GPU
        return env

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE

    # -- the report -----------------------------------------------------------------------------------------------
    def write(self) -> None:
        report, facts = self.report, self.report["facts"]
        (self.out / "gpu_run.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        if facts.get("gpu"):
            device = (f"{facts.get('gpu_count', 1)}x {facts['gpu']} ({facts['gpu_memory_gib']} GiB, CUDA "
                      f"{facts['cuda']}, compute capability {facts['compute_capability']})")
        else:
            device = "the CPU (no GPU)"
        title = ("# GPU run: DRY RUN on the CPU at tiny sizes (nothing here is a GPU measurement)" if report["dry_run"]
                 else f"# GPU run on {device}")
        rows = [[s["step"], s["status"], f"{s['seconds']:.0f}", f"`{s['command']}`", s["log"]] for s in report["steps"]]
        install = report["install"]
        skipped = [f"- {s['step']}: {s['why']}" for s in report["skipped"] if s["why"] != "not in --steps"]
        rerun = rerun_command(report)
        choice = report["resources_gpu"]
        paragraphs = [
            title,
            (f"Device: {device}. Python {facts['python']}, torch {facts['torch']}, {facts['cores']} cores, "
             f"{facts['memory_gib']} GiB memory, {facts['disk_free_gib']} GiB disk free"
             + (f"; nvidia-smi: {facts['nvidia_smi']}" if facts.get("nvidia_smi") else "") + "."),
            ("Kit: " + (f"{install['wheels']} wheels, {install['kit_mib']} MiB, {install['status']} in "
                        f"{install['seconds']:.0f} s into {install['site']}" if "wheels" in install
                        else install.get("why", install["status"])) + "."),
            table(["step", "status", "s", "command", "log"], rows) if rows else "No step ran.",
            "\n".join(["Skipped:", *skipped]) if skipped else "",
            f"To run what was skipped or cut short: `{rerun}`" if rerun and not report["dry_run"] else "",
            f"**resources.gpu for the report studies**: {choice['text']}",
            (f"Whole run: {report['seconds']:.0f} s of a {report['budget_seconds']:.0f} s budget. Details: "
             "gpu_smoke.md, train_step_cuda.md, gpu_memory.md, study_wall.md, gpu_smoke_compile.md beside this file."),
            f"Command: `{report['command']}`",
        ]
        (self.out / "gpu_run.md").write_text("\n\n".join(p for p in paragraphs if p).rstrip() + "\n")
        result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "summary.py")], cwd=REPO, env=self.env(),
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            say(f"summary.py failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
        say(f"wrote {self.out / 'gpu_run.md'}")
        print((self.out / "gpu_run.md").read_text())


def shown(command: list[str]) -> str:
    """A step's command as one would type it in the repository root (python, paths relative, quoted)."""
    import shlex

    parts = ["python"] + [str(Path(p).relative_to(REPO)) if p.startswith(str(REPO) + os.sep) else p
                          for p in command[1:]]
    return shlex.join(parts)


def rerun_command(report: dict) -> str | None:
    """The command that runs the steps and study-wall fractions this run skipped or cut short."""
    steps = [s["step"] for s in report["steps"] if s["status"] != "ok"]
    steps += [s["step"] for s in report["skipped"] if s["why"] != "not in --steps" and not s["why"].startswith("dry")]
    fractions = []
    wall = _load(Path(report.get("out", "")) / "study_wall.json") if report.get("out") else None
    if wall:
        fractions = [s["gpu_per_trial"] for s in wall.get("skipped", []) if s["gpu_per_trial"]]
        fractions += [r["gpu_per_trial"] for r in wall.get("runs", []) if r.get("cut_short") and r["gpu_per_trial"]]
        if fractions and "study_wall" not in steps:
            steps.append("study_wall")
    if not steps:
        return None
    ordered = [s for s in STEPS if s in steps]
    command = f"benchmarks/gpu/run --steps {','.join(ordered)}"
    if fractions and "study_wall" in ordered:
        command += " --fractions " + ",".join(f"{f:g}" for f in fractions)
    return command


def recommend(out: Path) -> dict:
    """resources.gpu for the report studies from the study wall runs and the memory per trial, with the reasons.

    Among the finished runs on a GPU whose trials fit in its memory (trials per GPU x the largest trial's
    memory <= 90%), the shortest wall time; a larger fraction (fewer trials per GPU) within 5% of it is preferred.
    """
    wall, memory = _load(out / "study_wall.json"), _load(out / "gpu_memory.json")
    runs = [r for r in (wall or {}).get("runs", []) if r.get("gpu_per_trial") and not r.get("cut_short")]
    if not runs:
        return {"value": None, "text": "not measured: no study wall run on a GPU finished, so report.yaml keeps "
                                       "its 0.25 (an estimate)."}
    trial_gib = (memory or {}).get("largest_trial_gib")
    total_gib = (memory or {}).get("gpu_total_gib")
    fitting = [r for r in runs if not (trial_gib and total_gib) or trial_gib / r["gpu_per_trial"] <= 0.9 * total_gib]
    if not fitting:
        return {"value": None, "text": "none of the measured packings fits the GPU's memory."}
    fastest = min(r["phases_seconds"]["total"] for r in fitting)
    choice = max((r for r in fitting if r["phases_seconds"]["total"] <= 1.05 * fastest),
                 key=lambda r: r["gpu_per_trial"])
    walls = ", ".join(f"{r['gpu_per_trial']:g}: {r['phases_seconds']['total']:.0f} s" for r in runs)
    memory_text = (f"; a trial takes up to {trial_gib:.1f} GiB of {total_gib:.0f} GiB" if trial_gib and total_gib
                   else "; memory per trial not measured")
    return {"value": choice["gpu_per_trial"], "wall_seconds": {str(r["gpu_per_trial"]): r["phases_seconds"]["total"]
                                                                 for r in runs},
            "text": f"{choice['gpu_per_trial']:g} (report.yaml wall time by GPU per trial: {walls}{memory_text}; "
                    "the shortest, or the least packed within 5% of it)."}


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    result = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,power.limit",
                             "--format=csv,noheader"], capture_output=True, text=True, check=False)
    return result.stdout.strip().replace("\n", "; ") if result.returncode == 0 else None


if __name__ == "__main__":
    raise SystemExit(main())
