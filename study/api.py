"""Python API for notebooks: a study's results as the DataFrames that `study export` writes.

    from study.api import load_study
    trials, epochs = load_study("report", storage="studies")
"""

from __future__ import annotations

import os

import pandas as pd

from study.results import load_results
from study.storage import Storage, default_storage


def load_study(name: str, storage: str | os.PathLike | Storage | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) of study `name`: the columns and types of trials.parquet and epochs.parquet.

    `storage` is a folder, a URI or a Storage (default: $SEGSTUDY_STORAGE, else ./studies).
    Works while the study runs and after its driver is gone: it reads files only.
    """
    if not isinstance(storage, Storage):
        storage = Storage(storage or default_storage())
    results = load_results(storage, name)
    return results.trials, results.epochs
