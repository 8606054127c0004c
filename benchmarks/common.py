"""Shared by the benchmark scripts: the machine's description, the work folder, result files.

Results go to results/benchmarks/<name>.json (every figure, with the machine and the
settings) and results/benchmarks/<name>.md (a table naming the machine). Generated
datasets live in benchmarks/.work/ (gitignored) and are reused between runs.
$SEGSTUDY_BENCH_RESULTS and $SEGSTUDY_BENCH_WORK move them (benchmarks/gpu/run --dry-run
writes into a temporary folder that way, never over the committed results).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("SEGSTUDY_BENCH_WORK") or REPO / "benchmarks" / ".work").resolve()
RESULTS = Path(os.environ.get("SEGSTUDY_BENCH_RESULTS") or REPO / "results" / "benchmarks").resolve()
# Before the benchmark's own work: other load on the machine makes CPU figures pessimistic.
LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from the repository root
    sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def core_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine(device: str | None = None) -> dict:
    """CPU model and cores, the accelerator if any, library versions."""
    import torch

    info = {
        "cpu_model": cpu_model(),
        "cores": core_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": round(LOAD_AT_START, 2),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "gpu_memory_gib": (round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                           if torch.cuda.is_available() else None),
        "cuda": torch.version.cuda,
        "hostname": platform.node(),
        "git_commit": _git_commit(),
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device is not None:
        info["device"] = device
    return info


def machine_line(info: dict) -> str:
    gpu = info["gpu"] or "no GPU"
    if info.get("gpu_memory_gib"):
        gpu = f"{info.get('gpu_count', 1)}x {gpu} ({info['gpu_memory_gib']} GiB, CUDA {info.get('cuda')})"
    return (f"{info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB; {gpu}; "
            f"torch {info['torch']}; commit {info['git_commit']}; {info['when']}")


def load_note(*infos: dict) -> str:
    """A warning for the Markdown when the machine was busy as a benchmark started, else ""."""
    busy = [info for info in infos if info.get("load_average_at_start", 0.0) >= 0.5]
    if not busy:
        return ""
    loads = ", ".join(f"{info['load_average_at_start']:.1f}" for info in busy)
    return (f"The machine was not idle when this started (1-minute load average {loads} on "
            f"{busy[0]['cores']} cores): CPU figures are pessimistic.")


def resolve_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generated_dataset(dataset: str, train: int, val: int, seed: int = 0, image_size=None) -> Path:
    """A generated dataset tree in the work folder, made once and reused (a marker says it is complete)."""
    from trainables.data import synth_dataset

    size = "" if image_size is None else f"-{image_size[0]}x{image_size[1]}"
    root = WORK / f"{dataset}-{train}{size}"
    marker = root / ".complete"
    wanted = f"{train} {val} {seed}\n"
    if marker.exists() and marker.read_text() == wanted:
        return root
    if root.exists():
        import shutil

        shutil.rmtree(root)
    say(f"generating the {dataset} dataset ({train} train, {val} val) in {root} (once; reused later)")
    started = time.perf_counter()
    synth_dataset(dataset, root, train=train, val=val, seed=seed, image_size=image_size)
    marker.write_text(wanted)
    say(f"generated in {time.perf_counter() - started:.1f} s")
    return root


def write_results(name: str, data: dict, paragraphs: list[str]) -> str:
    """results/benchmarks/<name>.json and .md (the non-empty paragraphs); the Markdown is printed too."""
    markdown = "\n\n".join(part for part in paragraphs if part)
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    say(f"wrote {_shown(json_path)} and {_shown(md_path)}")
    print(markdown)
    return markdown


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_timed(command: list[str], log_path: Path, env: dict | None = None, echo: bool = True,
              timeout: float | None = None) -> dict:
    """Run a command; every line of its output stamped with seconds since the start (stdout and stderr merged).

    Returns {"returncode", "wall_seconds", "timed_out", "lines": [(seconds, text), ...]}; the lines also go to
    log_path. Past `timeout` seconds the command gets SIGINT, as Ctrl-C would send (a study stops its trials and
    Ray and keeps what finished), and SIGKILL STOP_GRACE seconds later if it is still there.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        stopper = _Stopper(process, timeout)
        for line in process.stdout:
            stamp = time.perf_counter() - started
            lines.append((stamp, line.rstrip("\n")))
            log.write(f"{stamp:9.2f}  {line}")
            if echo:
                say(f"  {stamp:7.1f}s  {line.rstrip()}")
        returncode = process.wait()
        stopper.cancel()
    return {"returncode": returncode, "wall_seconds": time.perf_counter() - started, "timed_out": stopper.fired,
            "lines": lines}


STOP_GRACE = 30.0  # a study stops in about 8 s after SIGINT (README: Ctrl-C)


class _Stopper:
    """SIGINT to a process after `timeout` seconds, SIGKILL STOP_GRACE seconds later (timers; None: never)."""

    def __init__(self, process: subprocess.Popen, timeout: float | None):
        self.process, self.fired = process, False
        self.timers = []
        if timeout is not None:
            self.timers = [threading.Timer(max(0.0, timeout), self._interrupt),
                           threading.Timer(max(0.0, timeout) + STOP_GRACE, self.process.kill)]
            for timer in self.timers:
                timer.daemon = True
                timer.start()

    def _interrupt(self) -> None:
        if self.process.poll() is None:
            self.fired = True
            say(f"time budget reached: interrupting {self.process.args[0]} (pid {self.process.pid})")
            self.process.send_signal(signal.SIGINT)

    def cancel(self) -> None:
        for timer in self.timers:
            timer.cancel()


def first_line(lines: list, needle: str, start: float = 0.0) -> float | None:
    for stamp, text in lines:
        if stamp >= start and needle in text:
            return stamp
    return None


def last_line(lines: list, needle: str) -> float | None:
    found = None
    for stamp, text in lines:
        if needle in text:
            found = stamp
    return found


def stage_end(lines: list, stage: str) -> float | None:
    """When a stage's last trial ended (its progress line), or its encoder was saved, whichever is later."""
    import re

    pattern = re.compile(rf"^\[{stage}\] (finished|early stopped|errored|diverged|saved encoder) ")
    found = [stamp for stamp, text in lines if pattern.match(text)]
    return max(found) if found else None


def study_env() -> dict:
    """The environment for a `study` subprocess: dataset roots come from --set, not from the caller's variables."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("SEGSTUDY_") and k.endswith("_ROOT"))}
    env.pop("RAY_ADDRESS", None)  # always an embedded local Ray
    return env


def study_command() -> list[str]:
    """The `study` command of this environment (its console script when installed)."""
    script = Path(sys.executable).parent / "study"
    return [str(script)] if script.exists() else [sys.executable, "-m", "study.cli"]
