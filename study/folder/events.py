"""The driver's event log: what it saw of each trial, one JSON line per event, in `<study>/events.jsonl`.

A cache beside the durable record (the trial folders and Tune's experiment state): it tells
what those cannot (attempts, the error of each retry, that a trial is running now, epoch
times for the ETA) and it can be lost or damaged without losing a trial: the results
loader names the damage and falls back to the trial folders.

Writes are amortised: on a local disk each event is one appended line (flushed, so it
survives a killed driver); an object store has no append, so the whole log is written at
most every FLUSH_SECONDS and when a stage ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from study.planning.record import TrialState

EVENTS_FILE = "events.jsonl"
FLUSH_SECONDS = 5.0
START, RESULT, COMPLETE, ERROR, RECOVER = "start", "result", "complete", "error", "recover"


@dataclass
class TrialView:
    """One trial as the driver saw it."""

    trial_id: str
    trial_key: str
    stage: str
    dir: str
    state: TrialState = TrialState.PENDING
    attempts: int = 0
    last_epoch: int | None = None
    epochs_planned: int | None = None
    error: str | None = None  # why it ended errored
    last_error: str | None = None  # the failure before its latest retry
    node_ip: str | None = None
    started: float | None = None
    ended: float | None = None
    epoch_times: list = field(default_factory=list)  # (time, epoch) of each result of the latest attempt

    def apply(self, event: dict) -> None:
        kind = event["event"]
        self.node_ip = event.get("node_ip") or self.node_ip
        if kind == START:
            self.state, self.attempts, self.error = TrialState.RUNNING, self.attempts + 1, None
            self.started = self.started or event["t"]
            self.epoch_times = []
        elif kind == RESULT:
            self.last_epoch = event.get("epoch", self.last_epoch)
            self.epochs_planned = event.get("epochs") or self.epochs_planned
            self.epoch_times.append((event["t"], self.last_epoch))
        elif kind == COMPLETE:
            self.state, self.ended = TrialState(event["state"]), event["t"]
        elif kind == ERROR:
            self.state, self.ended, self.error = TrialState.ERRORED, event["t"], event.get("error")
        elif kind == RECOVER:
            self.state, self.last_error = TrialState.PENDING, event.get("error")


def replay(text: str) -> tuple[dict[tuple[str, str], TrialView], list[str]]:
    """({(stage, trial dir): view}, damage found) from the log's text; unreadable lines are skipped and named."""
    views: dict[tuple[str, str], TrialView] = {}
    damaged = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            key = (event["stage"], event["dir"])
            if key not in views:
                views[key] = TrialView(trial_id=event["trial_id"], trial_key=event["trial_key"], stage=event["stage"],
                                       dir=event["dir"])
            views[key].trial_id = event["trial_id"]
            views[key].apply(event)
        except (ValueError, KeyError, TypeError):
            damaged.append(number)
    notes = [f"{EVENTS_FILE}: {len(damaged)} unreadable line(s) skipped (first: line {damaged[0]})"] if damaged else []
    return views, notes


class EventLog:
    """Appends events to the study's log on its storage (see the module's docstring for how often)."""

    def __init__(self, storage, name: str):
        self.storage, self.name = storage, name
        self.pending: list[str] = []
        self.flushed_at = 0.0
        self.text = ""  # object stores: the whole log, rewritten on each flush

    def add(self, event: dict) -> None:
        self.pending.append(json.dumps({"t": time.time(), **event}, default=str))
        if self.storage.is_local or time.time() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        lines = "".join(line + "\n" for line in self.pending)
        if self.storage.is_local:
            self.storage.append_text(lines, self.name, EVENTS_FILE)
        else:
            if not self.text and self.storage.exists(self.name, EVENTS_FILE):
                self.text = self.storage.read_text(self.name, EVENTS_FILE)
            self.text += lines
            self.storage.write_text(self.text, self.name, EVENTS_FILE)
        self.pending.clear()
        self.flushed_at = time.time()
