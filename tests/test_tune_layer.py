"""The one place that reads Tune's own files (study/tune/experiment_state.py), checked on a real stage folder.

If a Ray upgrade changes the experiment state's format, these fail loudly instead of the
record silently losing what it reads from there.
"""

from __future__ import annotations

import pytest

from study.storage import Storage
from study.tune.experiment_state import STATE_FILE_PATTERN, TuneStateError, error_message, trial_statuses


def test_statuses_of_a_finished_stage(finished_tiny_study):
    storage = Storage(finished_tiny_study)
    files = sorted(f for f in storage.list_files("t", "main") if STATE_FILE_PATTERN.match(f))
    assert files, storage.list_files("t", "main")
    statuses = trial_statuses([storage.read_text("t", "main", f) for f in files])
    assert set(statuses) == set(storage.list_dirs("t", "main"))
    assert {s["status"] for s in statuses.values()} == {"TERMINATED"}
    assert all(s["num_failures"] == 0 and s["trial_id"] for s in statuses.values())


def test_a_format_it_does_not_know_fails_loudly():
    with pytest.raises(TuneStateError, match="format"):
        trial_statuses(['{"trials": []}'])


def test_error_message_is_the_last_line_of_the_latest_failure():
    text = ("Failure # 1 (occurred at 2026-12-01)\nTraceback...\nValueError: first\n"
            "Failure # 2 (occurred at 2026-12-02)\nTraceback (most recent call last):\n  File x\n"
            "RuntimeError: fault injected at epoch 3\n")
    assert error_message(text) == "RuntimeError: fault injected at epoch 3"
    assert "worker process died" in error_message("Failure # 1\nray.exceptions.ActorDiedError: The actor died")
