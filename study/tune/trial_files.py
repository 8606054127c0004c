"""A Tune trial's folder on the study's storage, and the epoch records its checkpoints hold.

The one place that reaches into Tune's Trial for where its folder is (`trial.path` under
`trial.storage`; tests/test_tune_layer.py fails on a Ray that moves them). The driver's callbacks
read a trial's own checkpoints through it: records Tune's results never carried to this driver
(a restored trial), and how a trial that ended under an earlier driver ended.
"""

from __future__ import annotations


def trial_folder(trial) -> tuple:
    """(pyarrow filesystem, path) of the trial's folder in the study's storage."""
    return trial.storage.storage_filesystem, trial.path


def local_trial_folder(trial) -> str | None:
    """The trial's folder in the study's storage when that is a filesystem path (not an object store).

    Trackers that write files (W&B offline, TensorBoard) write there directly: Tune's own loggers write into
    a staging folder on the driver that Tune uploads periodically, and a W&B run that finishes in its logging
    actor after the last upload would be left cut short in the study folder.
    """
    import pyarrow.fs

    filesystem, path = trial_folder(trial)
    return path if isinstance(filesystem, pyarrow.fs.LocalFileSystem) else None


def saved_records(trial) -> list[dict]:
    """The flat epoch records (in epoch order) that the newest readable checkpoint in the trial's folder holds."""
    from trainables.checkpoint import newest_trial_file
    from trainables.records import flat

    content = newest_trial_file(*trial_folder(trial))
    if content is None:
        return []
    records = [flat(r) for r in content["records"] if isinstance(r, dict) and isinstance(r.get("epoch"), int)]
    return sorted(records, key=lambda r: r["epoch"])
