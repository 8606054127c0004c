"""Driver-side Tune callback: progress lines for the user and each trial's state on storage.

Ray's own experiment state is an internal format, so the study records what the
driver saw (state, error, node, checkpoint) in `<study>/<stage>_trials.json`,
which `status`, `report` and `export` read, also while the study runs. It sits
beside Ray's experiment folder, not in it: on restore Ray copies that folder to a
staging area and syncs it back at the end, which would overwrite the file.
Tune pickles the callback with the experiment; `study resume` points the restored
callback at the experiment's current location (a study folder may have moved, and
after a restore Ray's trial paths name its local staging folder, not the storage).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from ray import tune

from study.storage import open_uri

ENDED_STATES = ("finished", "early_stopped", "errored", "diverged")


def trials_file(stage: str) -> str:
    return f"{stage}_trials.json"


class StudyProgress(tune.Callback):
    def __init__(self, stage: str, states_uri: str):
        self.stage = stage
        self.states_uri = states_uri  # <study>/<stage>_trials.json
        self.states: dict[str, dict] = {}
        self.best: tuple[float, str] | None = None
        self._states_path: str | None = None

    # -- Tune hooks -------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        entry = self._entry(trial)
        entry.update(state="running", node_ip=trial.node_ip, started=entry.get("started") or time.time())
        entry["attempts"] = entry.get("attempts", 0) + 1
        self._save(trial)
        self._say(f"started {entry['trial_key']}" + (f" (attempt {entry['attempts']})" if entry["attempts"] > 1 else ""), trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        entry = self._entry(trial)
        entry.update(last_epoch=result.get("epoch"), epochs_planned=result.get("epochs_planned"),
                     device=result.get("device"), node_ip=trial.node_ip or result.get("node_ip"))
        if result.get("diverged"):
            entry["diverged_epoch"] = result.get("epoch")
        if result.get("validated"):
            value = result.get("val_miou")
            if value is not None and math.isfinite(value) and (self.best is None or value > self.best[0]):
                self.best = (value, entry["trial_key"])
            best = f"; best so far {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
            self._say(f"{entry['trial_key']} epoch {result.get('epoch')}/{result.get('epochs_planned')} "
                      f"val mIoU {value:.4f}{best}")
        self._save(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        entry = self._entry(trial)
        if entry.get("diverged_epoch"):
            entry["state"] = "diverged"
        elif entry.get("last_epoch") is not None and entry.get("last_epoch") < (entry.get("epochs_planned") or 0):
            entry["state"] = "early_stopped"
        else:
            entry["state"] = "finished"
        entry.update(ended=time.time(), error=None, checkpoint=_checkpoint_path(trial))
        self._save(trial)
        self._say(f"{entry['state'].replace('_', ' ')} {entry['trial_key']}", trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        entry = self._entry(trial)
        message = _error_message(trial)
        entry.update(state="errored", ended=time.time(), error=message, checkpoint=_checkpoint_path(trial))
        self._save(trial)
        self._say(f"errored {entry['trial_key']}: {message}", trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        entry = self._entry(trial)
        entry.update(state="pending", last_error=_error_message(trial))
        self._save(trial)
        self._say(f"retrying {entry['trial_key']} from its last checkpoint ({entry['last_error']})", trials)

    # -- helpers ------------------------------------------------------------
    def _entry(self, trial) -> dict:
        config = trial.config
        key = config["trial"]["trial_key"] if "trial" in config else f"search-{trial.trial_id}"
        return self.states.setdefault(trial.trial_id, {"trial_id": trial.trial_id, "trial_key": key, "stage": self.stage,
                                                       "dir": trial.path.rstrip("/").rsplit("/", 1)[-1]})

    def _save(self, trial) -> None:
        filesystem, path = open_uri(self.states_uri)
        if path != self._states_path:
            self._load_existing(filesystem, path)
        text = json.dumps(self.states, indent=1, sort_keys=True, default=str).encode()
        with filesystem.open_output_stream(f"{path}.tmp") as stream:
            stream.write(text)
        filesystem.move(f"{path}.tmp", path)

    def _load_existing(self, filesystem, path: str) -> None:
        """After a resume, keep what the earlier driver recorded of trials not touched yet."""
        self._states_path = path
        try:
            with filesystem.open_input_stream(path) as stream:
                earlier = json.loads(stream.read())
        except (FileNotFoundError, OSError, ValueError):
            return
        for trial_id, entry in earlier.items():
            self.states.setdefault(trial_id, entry)

    def _say(self, text: str, trials=None) -> None:
        counts = ""
        if trials is not None:
            by_state: dict[str, int] = {}
            for trial in trials:
                by_state[trial.status.lower()] = by_state.get(trial.status.lower(), 0) + 1
            counts = "  [" + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) + "]"
        print(f"[{self.stage}] {text}{counts}", file=sys.stderr, flush=True)


def _error_message(trial, limit: int = 300) -> str:
    """The last line of the trial's latest error: the exception, or why its worker died.

    Tune writes error.txt locally first and syncs it to storage later, so read the local copy.
    """
    try:
        text = Path(trial.error_file).read_text()
    except (OSError, TypeError):  # TypeError: no error file recorded yet
        text = ""
    if not text:
        text = str(trial.get_error() or "")
    failures = text.split("Failure # ")
    lines = [line.strip() for line in failures[-1].strip().splitlines()[1:] if line.strip()] if failures[-1] else []
    message = lines[-1] if lines else "unknown error"
    if "worker process has died" in message or "actor died" in message.lower():
        message = "the trial's worker process died (killed, out of memory or crashed)"
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _checkpoint_path(trial) -> str | None:
    checkpoint = trial.checkpoint
    return checkpoint.path if checkpoint is not None else None
