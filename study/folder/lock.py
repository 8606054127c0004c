"""One driver per study: the study lock, and whether a study's driver is alive.

On a filesystem, an flock on `<study>/driver.lock` held while the driver lives: the kernel
frees it when the process ends, however it ends, and two drivers started at once cannot
both take it. An object store has no locks: a lock object names the driver, and is taken
over once that process is gone (when it was on this machine; another machine's is respected).
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from study.errors import StudyError
from study.storage import Storage

LOCAL_LOCK, OBJECT_LOCK = "driver.lock", "lock"
# A reader probing the lock holds it for microseconds: a driver retries that long before refusing.
TAKE_SECONDS = 1.0


@contextmanager
def study_lock(storage: Storage, name: str):
    """Held while a driver runs the study; a second `run` or `resume` of it refuses, naming the first."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    if storage.is_local:
        with _file_lock(Path(storage.path(name, LOCAL_LOCK)), name, me):
            yield
        return
    owner = _object_owner(storage, name)
    if owner and _process_alive(owner):
        raise StudyError(_locked(name, owner))
    storage.write_json(me, name, OBJECT_LOCK)
    try:
        yield
    finally:
        if _object_owner(storage, name) == json.loads(json.dumps(me)):
            storage.delete(name, OBJECT_LOCK)


def driver_alive(storage: Storage, name: str) -> dict | None:
    """The live driver's record ({pid, host, since}), or None when no driver holds the study."""
    if not storage.is_local:
        owner = _object_owner(storage, name)
        return owner if owner and _process_alive(owner) else None
    path = Path(storage.path(name, LOCAL_LOCK))
    if not path.exists():
        return None
    import fcntl

    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _lock_owner(path) or {"pid": None, "host": None, "since": None}
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
    except OSError:
        return None


@contextmanager
def _file_lock(path: Path, name: str, me: dict):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    # Never deleted: removing a lock file lets a late opener lock the old inode beside a new one.
    with open(path, "a+") as handle:
        deadline = time.time() + TAKE_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise StudyError(_locked(name, _lock_owner(path))) from None
                time.sleep(0.05)
        handle.truncate(0)
        handle.write(json.dumps(me))
        handle.flush()
        yield  # closing the file releases the lock


def _lock_owner(path: Path) -> dict:
    """The lock holder's record; it writes it just after taking the lock, so wait a moment for it."""
    deadline = time.time() + 2
    while True:
        try:
            owner = json.loads(path.read_text())
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            if time.time() > deadline:
                return {}
            time.sleep(0.05)


def _object_owner(storage: Storage, name: str) -> dict | None:
    try:
        owner = storage.read_json(name, OBJECT_LOCK, default=None)
    except StudyError:  # a damaged lock object names no live driver
        return None
    return owner if isinstance(owner, dict) else None


def _locked(name: str, owner: dict) -> str:
    who = (f"process {owner.get('pid')} on {owner.get('host')} (since {time.ctime(owner['since'])})"
           if owner.get("since") else "another process")
    return f"study {name!r} is already being run by {who}; wait for it, or stop it and then `study resume {name}`"


def _process_alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine: we cannot tell, so respect it
    try:
        os.kill(int(owner["pid"]), 0)
    except (ProcessLookupError, KeyError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True
