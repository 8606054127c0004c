"""What a trial's stored weights are: which checkpoint (best or last), its epoch, its recorded val mIoU, where it is."""

from __future__ import annotations

import math
from typing import Any

from study.errors import StudyError
from study.planning.record import OUTCOME_COLUMNS

WHICH = ("best", "last")
WHICH_DOC = {"best": "the weights of its best validated epoch", "last": "the weights after its last epoch"}


def check_which(which: str) -> str:
    if which not in WHICH:
        raise StudyError(f"--which: expected one of {list(WHICH)}, got {which!r}")
    return which


def is_missing(value: Any) -> bool:
    import pandas as pd

    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def int_text(value) -> str:
    return "?" if is_missing(value) else str(int(value))


# -- what a checkpoint is ----------------------------------------------------------------------
def checkpoint_epoch(row: dict, which: str) -> int | None:
    """The epoch whose weights `which` names."""
    value = row.get("best_epoch") if which == "best" else row.get("epochs_run")
    return None if is_missing(value) else int(value)


def checkpoint_val_miou(row: dict, which: str) -> float | None:
    """The validation mIoU that the study recorded for these weights (None: that epoch was not validated)."""
    if which == "best":
        value = row.get("best_val_miou")
    else:
        validated_last = not is_missing(row.get("final_val_epoch")) and row.get("final_val_epoch") == row.get(
            "epochs_run")
        value = row.get("final_val_miou") if validated_last else None
    return None if is_missing(value) else float(value)


def outcome_metrics(row: dict) -> dict:
    """The trial's outcome columns (study/planning/record.py), JSON-ready."""
    return {c.name: _plain(row.get(c.name)) for c in OUTCOME_COLUMNS}


def _plain(value):
    if is_missing(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
    return value


def weights_location(row: dict, which: str = "best") -> str:
    check_which(which)
    location = row.get("weights_best" if which == "best" else "weights_final")
    if not isinstance(location, str) or not location:
        raise StudyError(f"trial {row.get('trial_key')} ({row.get('status')}) has no stored {which} weights; "
                         f"only ended trials with a final checkpoint have them")
    return location
