"""ASHA's stopping rule, on rungs kept in the study's ledger (study/folder/ledger.py) instead of in Tune's memory.

Tune's AsyncHyperBandScheduler keeps its rungs in the driver and never saves them (ray-project/ray#30838):
after a restore it decides on empty rungs. This is the same rule (one bracket, as the study's scheduler
asks for; `stop_last_trials` on) on rungs that are plain data: {milestone epoch: {trial key: metric}},
with the metric signed so that higher is better. tests/test_resume_exact.py checks it decides as Tune's
scheduler does, result by result, so a Ray upgrade that changes Tune's rule fails loudly there.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The rungs' epochs, highest first (Tune's _Bracket with s=0)."""
    count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor ** k) for k in reversed(range(count))]


def decide(rungs: dict, marks: list[int], reduction_factor: float, max_t: int, key: str, epoch: int,
           value: float) -> bool:
    """One result of a running trial: True to stop it. Records `value` in the highest rung the trial has reached
    and not yet been recorded in (the rung's cutoff is taken before recording)."""
    if epoch >= max_t:
        return True  # its last epoch: ended, not stopped early (Tune: stop_last_trials)
    return _record(rungs, marks, reduction_factor, key, epoch, value)


def record_end(rungs: dict, marks: list[int], reduction_factor: float, key: str, epoch: int, value: float) -> None:
    """A trial that ended (or was stopped): its last result is recorded as Tune's on_trial_complete does."""
    _record(rungs, marks, reduction_factor, key, epoch, value)


def _record(rungs: dict, marks: list[int], reduction_factor: float, key: str, epoch: int, value: float) -> bool:
    for milestone in marks:
        recorded = rungs.setdefault(milestone, {})
        if epoch < milestone or key in recorded:
            continue
        stop = False
        if recorded:  # the cutoff: the (1 - 1/rf) quantile of the rung, NaNs ignored, as Tune computes it
            with warnings.catch_warnings():  # a rung of NaNs only (nothing validated yet) warns; the answer is NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                threshold = np.nanpercentile(list(recorded.values()), (1 - 1 / reduction_factor) * 100)
            stop = bool(value < threshold)
        recorded[key] = value
        return stop
    return False


def signed(value, mode: str) -> float:
    """The metric as ASHA compares it: higher is better (mode min: negated); not a number: NaN."""
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    return number if mode == "max" else -number
