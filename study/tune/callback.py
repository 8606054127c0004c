"""The driver's Tune callback: progress lines for the user, and the study's event log (study/events.py).

Tune pickles its callbacks into the experiment state and unpickles them on `study resume`;
the callback therefore keeps nothing but its stage, and finds the study's event log through
`attach(...)`, which the runner calls in the driver before each stage (the study folder may
have moved since the callback was pickled).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ray import tune

from study.events import COMPLETE, ERROR, RECOVER, RESULT, START, EventLog
from study.record import TrialState
from study.tune.experiment_state import error_message
from trainables.trial import trial_dirname

_LOGS: dict[str, EventLog] = {}  # stage -> the study's event log, set by attach() in the driver


def attach(stage: str, log: EventLog) -> None:
    _LOGS[stage] = log


class StudyProgress(tune.Callback):
    def __init__(self, stage: str):
        self.stage = stage
        self._runtime()

    def _runtime(self) -> None:
        self.keys: dict[str, str] = {}  # Tune trial id -> trial key
        self.last_epoch: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.attempts: dict[str, int] = {}
        self.best: tuple[float, str] | None = None

    def __getstate__(self) -> dict:
        return {"stage": self.stage}

    def __setstate__(self, state: dict) -> None:
        self.stage = state["stage"]
        self._runtime()

    # -- Tune hooks ---------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 0) + 1
        self._log(trial, START)
        attempt = self.attempts[trial.trial_id]
        self._say(f"started {key}" + (f" (attempt {attempt})" if attempt > 1 else ""), trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = result.get("epoch")
        self.last_epoch[trial.trial_id] = epoch
        settings = trial.config.get("trial", {})
        self.epochs[trial.trial_id] = settings.get("epochs") or self.epochs.get(trial.trial_id)
        self._log(trial, RESULT, epoch=epoch, epochs=self.epochs.get(trial.trial_id),
                  diverged=bool(result.get("diverged")), validated=bool(result.get("validated")))
        if result.get("validated"):
            value = result.get("val_miou")
            key = self._key(trial)
            if value is not None and math.isfinite(value) and (self.best is None or value > self.best[0]):
                self.best = (value, key)
            best = f"; best so far {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
            self._say(f"{key} epoch {epoch} val mIoU {value:.4f}{best}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        planned = self.epochs.get(trial.trial_id)
        if result.get("diverged"):
            state = TrialState.DIVERGED
        elif planned and (result.get("epoch") or 0) < planned:
            state = TrialState.EARLY_STOPPED
        else:
            state = TrialState.FINISHED
        self._log(trial, COMPLETE, state=state.value)
        self._say(f"{state.words} {self._key(trial)}", trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        message = _error_message(trial)
        self._log(trial, ERROR, error=message)
        self._say(f"errored {self._key(trial)}: {message}", trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        message = _error_message(trial)
        self._log(trial, RECOVER, error=message)
        self._say(f"retrying {self._key(trial)} from its last checkpoint ({message})", trials)

    def on_experiment_end(self, trials, **info):
        log = _LOGS.get(self.stage)
        if log is not None:
            log.flush()

    # -- helpers ------------------------------------------------------------------------
    def _key(self, trial) -> str:
        if trial.trial_id not in self.keys:
            self.keys[trial.trial_id] = trial_dirname(trial.config, trial.trial_id)
        return self.keys[trial.trial_id]

    def _log(self, trial, event: str, **fields) -> None:
        log = _LOGS.get(self.stage)
        if log is None:
            return
        log.add({"event": event, "stage": self.stage, "trial_id": trial.trial_id, "trial_key": self._key(trial),
                 "dir": trial_dirname(trial.config, trial.trial_id), "node_ip": trial.node_ip, **fields})

    def _say(self, text: str, trials=None) -> None:
        counts = ""
        if trials is not None:
            by_state: dict[str, int] = {}
            for trial in trials:
                by_state[trial.status.lower()] = by_state.get(trial.status.lower(), 0) + 1
            counts = "  [" + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) + "]"
        print(f"[{self.stage}] {text}{counts}", file=sys.stderr, flush=True)


def _error_message(trial) -> str:
    """The last line of the trial's latest error. Tune writes error.txt locally first and syncs it later."""
    try:
        text = Path(trial.error_file).read_text()
    except (OSError, TypeError):  # TypeError: no error file recorded yet
        text = ""
    return error_message(text or f"Failure # 1\n{trial.get_error() or ''}")
