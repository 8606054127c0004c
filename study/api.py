"""Python API for notebooks: a study's results as the DataFrames that `study export` writes, and its models.

    from study.api import load_study, load_model
    trials, epochs = load_study("report", storage="studies")
    best = load_model("report", storage="studies")          # the best trial, weights of its best epoch
    classes = best.predict(["cat.jpg", "dog.jpg"])          # class ids at the working resolution
    logits = best.model(best.preprocess("cat.jpg"))         # the plain torch module
"""

from __future__ import annotations

import os

import pandas as pd

from study.models.load import StudyModel, load_study_model
from study.reading.results import load_results
from study.storage import Storage, default_storage


def load_study(name: str, storage: str | os.PathLike | Storage | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) of study `name`: the columns and types of trials.parquet and epochs.parquet.

    `storage` is a folder, a URI or a Storage (default: $SEGSTUDY_STORAGE, else ./studies).
    Works while the study runs and after its driver is gone: it reads files only.
    """
    results = load_results(_storage(storage), name)
    return results.trials, results.epochs


def load_model(name: str, storage: str | os.PathLike | Storage | None = None, trial: str | None = None,
               which: str = "best", device: str = "cpu") -> StudyModel:
    """A trial's model in eval mode (fp32, on `device`) with what is needed to use it.

    `trial`: a trial key (default: the study's best trial by best val mIoU, as `study best` picks it).
    `which`: "best" (the weights of its best validated epoch) or "last" (after its last epoch).
    The result's `model` is a plain torch module; `input_size`, `mean`, `std`, `class_names`,
    `palette`, `settings` and `metrics` say how it was trained and what it scored; `preprocess`
    and `predict` read images as the study's training did. Weights are read from safetensors only.
    Works while the study runs, on the trials that have ended.
    """
    return load_study_model(load_results(_storage(storage), name), trial=trial, which=which, device=device)


def _storage(storage) -> Storage:
    return storage if isinstance(storage, Storage) else Storage(storage or default_storage())
