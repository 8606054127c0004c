"""The driver's Tune callback: progress in the terminal, and the study's event log (study/folder/events.py).

Progress, per stage, in the project's words (study/planning/record.py TrialState):
- each event on its own line: a trial started (what it is: configuration or variant, lr), its
  validations with the best so far, how it ended;
- a summary: done/total by state, running, best so far with its trial, elapsed and ETA. On a
  terminal it is a live status line, redrawn at most every LIVE_EVERY_S; elsewhere (CI logs,
  `ray job` logs) it is a plain line after each trial ends and at most every SUMMARY_EVERY_S.
The ETA is the epochs left (every running trial's rest, every trial not started yet in full)
times the mean epoch time seen so far, spread over the trials running at once; under ASHA it
is an upper bound, as stopped trials end early.

Tune pickles its callbacks into the experiment state and unpickles them on `study resume`;
the callback therefore keeps nothing but its stage, and finds the study's event log and the
stage's totals through `attach(...)`, which the runner calls in the driver before each stage
(the study folder may have moved since the callback was pickled).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from study.folder.events import COMPLETE, ERROR, RECOVER, RESULT, START, EventLog
from study.folder.tune_state import error_message
from study.planning.record import TrialState
from study.tune.trial_files import saved_records
from trainables.trial import trial_dirname

LIVE_EVERY_S = 1.0
SUMMARY_EVERY_S = 60.0
ORDER = (TrialState.FINISHED, TrialState.EARLY_STOPPED, TrialState.DIVERGED, TrialState.ERRORED)


@dataclass(frozen=True)
class StageTotals:
    """What the plan says about a stage, for the progress summary."""

    trials: int  # trials this Tune experiment runs (a search: its samples)
    epochs: int | None = None  # planned epochs of a trial whose config does not name them (searcher trials)
    concurrency: int | None = None  # trials at once


@dataclass
class _Attached:
    log: EventLog | None
    totals: StageTotals | None


_ATTACHED: dict[str, _Attached] = {}  # stage -> what the runner gave this driver


def attach(stage: str, log: EventLog | None, totals: StageTotals | None = None) -> None:
    _ATTACHED[stage] = _Attached(log, totals)


def planned_epochs(trial, default: int | None = None) -> int | None:
    return trial.config.get("trial", {}).get("epochs") or default


def trial_state(trial, planned: int | None) -> TrialState:
    """A Tune trial's state in the record's words (study/planning/record.py), from Tune's status and its last result."""
    status = trial.status
    if status == "ERROR":
        return TrialState.ERRORED
    if status == "RUNNING":
        return TrialState.RUNNING
    if status != "TERMINATED":
        return TrialState.PENDING
    return ended_state(trial.last_result or {}, planned)


def ended_state(result: dict, planned: int | None) -> TrialState:
    """How a trial that Tune ended without an error ended, from its last result."""
    if result.get("diverged"):
        return TrialState.DIVERGED
    if planned and (result.get("epoch") or 0) < planned:
        return TrialState.EARLY_STOPPED
    return TrialState.FINISHED


def trial_ended_state(trial, planned: int | None) -> TrialState:
    """How a trial that Tune ended without an error ended: its last result, unless that stops short of its plan
    and its newest checkpoint holds later epochs. Tune sets a restored trial's last result from the checkpoint
    it restores; when a driver was killed after the trial's end but before Tune's state said so, that checkpoint
    is an older one, and the trial, finding its final checkpoint in its folder, returns at once."""
    result = trial.last_result or {}
    state = ended_state(result, planned)
    if state == TrialState.EARLY_STOPPED:
        saved = saved_records(trial)
        if saved and saved[-1]["epoch"] > (result.get("epoch") or 0):
            return ended_state(saved[-1], planned)
    return state


def describe(trial) -> str:
    """What a trial is: its configuration (a searcher trial: its variant) and lr."""
    settings = trial.config.get("trial") or trial.config
    name = settings.get("config_name") or settings.get("variant")
    lr = settings.get("lr")
    parts = ([f"configuration {name}" if "trial" in trial.config else f"variant {name}"] if name else []) + \
        ([f"lr {lr:.3g}"] if isinstance(lr, (int, float)) else [])
    return ", ".join(parts)


def duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StudyProgress(tune.Callback):
    def __init__(self, stage: str):
        self.stage = stage
        self._runtime()

    def _runtime(self) -> None:
        self.keys: dict[str, str] = {}  # Tune trial id -> trial key
        self.attempts: dict[str, int] = {}
        self.ended: dict[str, TrialState] = {}  # decided in on_trial_complete/error, before Tune updates the status
        self.best: tuple[float, str] | None = None
        self.epoch_seconds: list[float] = []  # every epoch's wall time seen by this driver
        self.started = time.monotonic()
        self.last_summary = 0.0
        self.live = False  # a live line is on screen now
        self.summarized = False  # (not a terminal) a summary line is the last line printed
        self.tty = sys.stderr.isatty()

    def __getstate__(self) -> dict:
        return {"stage": self.stage}

    def __setstate__(self, state: dict) -> None:
        self.stage = state["stage"]
        self._runtime()

    @property
    def _attached(self) -> _Attached:
        return _ATTACHED.get(self.stage) or _Attached(None, None)

    # -- Tune hooks ---------------------------------------------------------------------
    def setup(self, **info):
        self.started = self.last_summary = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self.ended.pop(trial.trial_id, None)
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 0) + 1
        self._log(trial, START)
        attempt = self.attempts[trial.trial_id]
        what = describe(trial)
        self._say(f"started {key}" + (f" ({what})" if what else "") + (f", attempt {attempt}" if attempt > 1 else ""),
                  trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = result.get("epoch")
        seconds = result.get("epoch_seconds")
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0:
            self.epoch_seconds.append(float(seconds))
        self._log(trial, RESULT, epoch=epoch, epochs=self._planned(trial),
                  diverged=bool(result.get("diverged")), validated=bool(result.get("validated")))
        if result.get("validated"):
            value = result.get("val_miou")
            key = self._key(trial)
            if value is not None and math.isfinite(value) and (self.best is None or value > self.best[0]):
                self.best = (value, key)
            self._say(f"{key} epoch {epoch}/{self._planned(trial) or '?'} val mIoU {value:.4f}", trials)
        else:
            self._refresh(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        state = self.ended[trial.trial_id] = trial_ended_state(trial, self._planned(trial))
        self._log(trial, COMPLETE, state=state.value)
        self._say(f"{state.words} {self._key(trial)}", trials, summary=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        message = _error_message(trial)
        self.ended[trial.trial_id] = TrialState.ERRORED
        self._log(trial, ERROR, error=message)
        self._say(f"errored {self._key(trial)}: {message}", trials, summary=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        message = _error_message(trial)
        self._log(trial, RECOVER, error=message)
        self._say(f"retrying {self._key(trial)} from its last checkpoint ({message})", trials)

    def on_step_end(self, iteration, trials, **info):
        self._refresh(trials)

    def on_experiment_end(self, trials, **info):
        log = self._attached.log
        if log is not None:
            log.flush()
        self._clear_live()
        if trials and (self.tty or not self.summarized):
            self._print_summary(trials)

    # -- the summary --------------------------------------------------------------------
    def summary(self, trials) -> str:
        """done/total by state, running, best so far, elapsed, ETA."""
        totals = self._attached.totals
        counts = {state: 0 for state in TrialState}
        best = self.best
        for trial in trials:
            counts[self._state(trial)] += 1
            last = trial.last_result or {}
            value = last.get("best_val_miou")
            if isinstance(value, (int, float)) and math.isfinite(value) and (best is None or value > best[0]):
                best = (float(value), self._key(trial))
        total = max(totals.trials if totals else 0, len(trials))
        done = sum(counts[state] for state in ORDER)
        ended = ", ".join(f"{counts[s]} {s.words}" for s in ORDER if counts[s])
        text = f"{done}/{total} done" + (f" ({ended})" if ended else "")
        text += f", {counts[TrialState.RUNNING]} running"
        waiting = counts[TrialState.PENDING] + total - len(trials)
        if waiting:
            text += f", {waiting} pending"
        if best is not None:
            text += f"; best val mIoU {best[0]:.4f} ({best[1]})"
        text += f"; elapsed {duration(time.monotonic() - self.started)}"
        eta = self.eta(trials, total)
        return text + (f", ETA {duration(eta)}" if eta is not None else (", ETA ?" if done < total else ""))

    def eta(self, trials, total: int) -> float | None:
        """Seconds left: epochs left x mean epoch time / trials at once; None before any epoch time is known."""
        totals = self._attached.totals
        default_epochs = totals.epochs if totals else None
        left_epochs, left_trials, running = 0, total - len(trials), 0
        for trial in trials:
            state = self._state(trial)
            planned = self._planned(trial) or default_epochs or 0
            if state == TrialState.RUNNING:
                running += 1
                left_epochs += max(0, planned - ((trial.last_result or {}).get("epoch") or 0))
            elif state == TrialState.PENDING:
                left_trials += 1
        left_epochs += left_trials * (default_epochs or 0)
        if not left_epochs:
            return 0.0 if not left_trials else None
        times = self.epoch_seconds
        if not times:  # none seen by this driver yet (a resume): the trials' last epochs before it
            times = [seconds for seconds in ((t.last_result or {}).get("epoch_seconds") for t in trials)
                     if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0]
        if not times:
            return None
        at_once = max(1, running, min(totals.concurrency or 1, running + left_trials) if totals else 1)
        return left_epochs * (sum(times) / len(times)) / at_once

    # -- helpers ------------------------------------------------------------------------
    def _state(self, trial) -> TrialState:
        return self.ended.get(trial.trial_id) or trial_state(trial, self._planned(trial))

    def _planned(self, trial) -> int | None:
        totals = self._attached.totals
        return planned_epochs(trial, totals.epochs if totals else None)

    def _key(self, trial) -> str:
        if trial.trial_id not in self.keys:
            self.keys[trial.trial_id] = trial_dirname(trial.config, trial.trial_id)
        return self.keys[trial.trial_id]

    def _log(self, trial, event: str, **fields) -> None:
        log = self._attached.log
        if log is None:
            return
        log.add({"event": event, "stage": self.stage, "trial_id": trial.trial_id, "trial_key": self._key(trial),
                 "dir": trial_dirname(trial.config, trial.trial_id), "node_ip": trial.node_ip, **fields})

    def _say(self, text: str, trials=None, summary: bool = False) -> None:
        """An event line; then (a terminal) the live line again, or (not a terminal) a summary line when due."""
        self._clear_live()
        print(f"[{self.stage}] {text}", file=sys.stderr, flush=True)
        self.summarized = False
        if trials is None:
            return
        if self.tty:
            self._refresh(trials, force=True)
        elif summary or time.monotonic() - self.last_summary >= SUMMARY_EVERY_S:
            self._print_summary(trials)

    def _refresh(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty:
            if now - self.last_summary >= SUMMARY_EVERY_S and trials:
                self._print_summary(trials)
            return
        if not force and now - self.last_summary < LIVE_EVERY_S:
            return
        self.last_summary = now
        width = shutil.get_terminal_size((120, 24)).columns
        line = f"[{self.stage}] {self.summary(trials)}"
        if len(line) >= width:
            line = line[: max(10, width - 2)] + "…"
        sys.stderr.write("\r\x1b[2K" + line)  # carriage return + erase line: one live line, redrawn in place
        sys.stderr.flush()
        self.live = True

    def _print_summary(self, trials) -> None:
        self.last_summary = time.monotonic()
        print(f"[{self.stage}] {self.summary(trials)}", file=sys.stderr, flush=True)
        self.summarized = True

    def _clear_live(self) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.live = False


def _error_message(trial) -> str:
    """The last line of the trial's latest error. Tune writes error.txt locally first and syncs it later."""
    try:
        text = Path(trial.error_file).read_text()
    except (OSError, TypeError):  # TypeError: no error file recorded yet
        text = ""
    return error_message(text or f"Failure # 1\n{trial.get_error() or ''}")
