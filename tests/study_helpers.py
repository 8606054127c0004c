"""Running the real `study` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "search_spaces"
TEST_SPECS = Path(__file__).resolve().parent / "specs"


def study_env(storage: Path) -> dict:
    env = dict(os.environ)
    env.update(SEGSTUDY_STORAGE=str(storage), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    return env


def run_study_cli(args: list[str], cwd: Path, storage: Path, timeout: float = 600, check: bool = True,
                  env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "study.cli", *args]
    process = subprocess.run(command, cwd=cwd, env=env or study_env(storage), capture_output=True, text=True,
                             timeout=timeout)
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {process.returncode}\nstdout:\n{process.stdout}\n"
                             f"stderr:\n{process.stderr[-6000:]}")
    return process


def start_study_cli(args: list[str], cwd: Path, storage: Path, log: Path) -> subprocess.Popen:
    """A driver in its own process group, so a test can kill it and everything it started."""
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=cwd, env=study_env(storage),
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(process: subprocess.Popen, sig=signal.SIGKILL, grace: float = 0.0) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.time() + max(grace, 5)
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.1)


def wait_for(condition, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
