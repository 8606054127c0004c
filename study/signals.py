"""SIGTERM and SIGHUP stop a command the way Ctrl-C does.

`kill`, `docker stop`, Slurm's preemption and `timeout` send SIGTERM; a closed terminal sends
SIGHUP. Each is handed to whatever handles SIGINT at that moment: during a Tune run, Tune's own
handler, which stops the trials, checkpoints what it can and returns, so the study is recorded
as interrupted and the resume command is printed; elsewhere Python's, a KeyboardInterrupt. The
command then exits 128 + the signal's number (143 for SIGTERM), as a shell reports it.
"""

from __future__ import annotations

import signal

STOPPING = (signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []


def install() -> None:
    for number in STOPPING:
        signal.signal(number, _as_interrupt)


def _as_interrupt(number: int, frame) -> None:
    _received.append(number)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # Tune's: stop the run gracefully
    else:
        raise KeyboardInterrupt


def exit_code(interrupted: int = 130) -> int:
    """128 + the first stopping signal received, or `interrupted` (Ctrl-C) when none was."""
    return 128 + _received[0] if _received else interrupted
