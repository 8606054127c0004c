"""What Ray Tune wrote in a stage folder, read as plain JSON and text: no Ray import, no unpickling.

Tune's experiment state (`<stage>/experiment_state-<time>.json`) is Tune's own format; Ray
offers no public reader that works without starting Tune. This is the one adapter that reads
it, for the few facts the study's record needs from it (a trial's status and failure count,
by its folder name) when its own files cannot tell. `tests/test_tune_layer.py` fails loudly
when a Ray upgrade changes what is read here.
"""

from __future__ import annotations

import json
import re

STATE_FILE_PATTERN = re.compile(r"experiment_state-.*\.json\Z")
TERMINATED, ERROR = "TERMINATED", "ERROR"
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")


class TuneStateError(Exception):
    """Tune's files are not in the format this adapter reads (a Ray upgrade?)."""


def trial_statuses(texts: list[str]) -> dict[str, dict]:
    """{trial folder name: {"status", "trial_id", "num_failures"}} from experiment state files, oldest first.

    A later file wins for a trial it names (a stage run again for its missing trials writes a new file).
    """
    statuses: dict[str, dict] = {}
    for text in texts:
        try:
            state = json.loads(text)
            for trial_json, metadata_json in state["trial_data"]:
                trial, metadata = json.loads(trial_json), json.loads(metadata_json)
                statuses[trial["relative_logdir"]] = {"status": trial["status"], "trial_id": trial["trial_id"],
                                                      "num_failures": int(metadata.get("num_failures", 0))}
        except (ValueError, KeyError, TypeError) as error:
            raise TuneStateError(f"Tune's experiment state is not in the format this segstudy reads "
                                 f"({type(error).__name__}: {error})") from None
    return statuses


def error_message(text: str, limit: int = 300) -> str:
    """The last line of a trial's latest failure in Tune's error.txt ("Failure # N ..." blocks)."""
    failures = text.split("Failure # ")
    lines = [line.strip() for line in failures[-1].strip().splitlines()[1:] if line.strip()] if failures[-1] else []
    message = lines[-1] if lines else "unknown error"
    if "worker process has died" in message or "actor died" in message.lower():
        message = "the trial's worker process died (killed, out of memory or crashed)"
    return message if len(message) <= limit else message[: limit - 3] + "..."
