"""Running the real `study` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "search_spaces"
TEST_SPECS = Path(__file__).resolve().parent / "specs"


# Every process a test starts carries this mark (Ray's processes inherit it from their driver), so the
# suite's check for Ray processes left behind counts its own only, whatever else runs on the machine.
SESSION_MARK = ("SEGSTUDY_TEST_SESSION", str(os.getpid()))


def study_env(storage: Path) -> dict:
    env = dict(os.environ)
    env.update(SEGSTUDY_STORAGE=str(storage), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env[SESSION_MARK[0]] = SESSION_MARK[1]
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


def start_study_cli(args: list[str], cwd: Path, storage: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """A driver in its own process group, so a test can kill it and everything it started. `env`: variables
    added to the study's environment."""
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=cwd,
                            env={**study_env(storage), **(env or {})}, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


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


def crash_driver_when(driver: subprocess.Popen, condition, log: Path, what: str, interval: float = 0.1) -> None:
    """SIGKILL the driver alone once `condition()` holds, as a crash would; then the Ray processes it left."""
    def alive_until() -> bool:
        if driver.poll() is not None and not condition():
            raise AssertionError(f"the driver exited ({driver.returncode})")
        return condition()

    try:
        wait_for(alive_until, timeout=300, interval=interval, what=what)
    except AssertionError as error:
        kill_group(driver)
        raise AssertionError(f"{what} never came ({error}):\n" + log.read_text()[-5000:]) from None
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2)
    kill_group(driver)


def ledger_trials(study_folder: Path) -> dict:
    """{trial index: the ledger's entry (a dict)} of the study's main stage, read while it runs ({} before)."""
    import json

    from study.folder.ledger import LEDGER_FILE

    try:
        data = json.loads((Path(study_folder) / LEDGER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {trial["index"]: trial for trial in data["trials"]}


def trial_reached(study_folder: Path, index: int, epoch: int) -> bool:
    """The driver has logged epoch `epoch` of the trial it proposed `index`-th."""
    entry = ledger_trials(study_folder).get(index)
    return entry is not None and any(v.dir == entry["key"] and (v.last_epoch or 0) >= epoch
                                     for v in driver_views(study_folder))


def driver_views(study_folder: Path, stage: str = "main") -> list:
    """What the driver has logged of each trial of a stage so far (study/folder/events.py), read while it runs."""
    from study.folder.events import EVENTS_FILE, replay

    try:
        views = replay((Path(study_folder) / EVENTS_FILE).read_text())[0].values()
    except OSError:
        return []
    return [view for view in views if view.stage == stage]


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields after "pid (comm)"; the name may hold spaces


def session_processes(session_id: int) -> list[str]:
    """'pid name' of every live process in a session (Ray's own processes stay in their driver's)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z" and int(fields[3]) == session_id:
            found.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
    return found


def ray_processes() -> set[str]:
    """'pid command' of the Ray processes that this test session started (raylet, gcs_server, workers...)."""
    found = set()
    mark = f"{SESSION_MARK[0]}={SESSION_MARK[1]}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if mark not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z" and ("raylet" in command or "gcs_server" in command
                                            or command.startswith("ray::") or "site-packages/ray/" in command):
            found.add(f"{pid} {command[:120]}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(log: Path):
    """An S3 server (moto's server mode) on a free loopback port, in its own process group.

    Yields its endpoint, "127.0.0.1:PORT". moto takes any credentials: set AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY to anything, or pyarrow looks for others (EC2 metadata included).
    """
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def answers() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"moto's server exited {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        wait_for(answers, timeout=60, what="moto's S3 server")
        yield f"127.0.0.1:{port}"
    finally:
        kill_group(server, signal.SIGTERM, grace=5)
        kill_group(server)
