"""Predicted masks for the report: each trial's model run once on the first validation images of its dataset.

Importing torch and building the models is the largest part of a report's time. `Predictions.prefetch`
hands the trials to a worker process (`python -m study.analysis.predictions`, a fresh interpreter: nothing of
the caller's `__main__` runs again, unlike multiprocessing's spawn) that lists the validation images
and predicts while the report draws its other figures (listing a split imports torchvision, and with
it torch). The worker answers each trial with a JSON line and an .npz file (read back with
allow_pickle=False); if it is gone, the report predicts in its own process. This module imports
neither matplotlib nor, until a prediction is made, torch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from study.errors import StudyError

MASK_IMAGES = 6  # the first validation images of the dataset (sorted by file name): the same in every figure
MAX_ROWS = 8  # table rows per figure: curves in colour (further rows grey), bars, mask columns (further: left out)


@dataclass(frozen=True)
class Predicted:
    """A model's masks on the first validation images of its dataset, at its working resolution."""

    config: object  # the trial's TrainConfig
    images: np.ndarray  # uint8 N,H,W,3
    truth: np.ndarray  # uint8 N,H,W: the ground truth, 255 ignored
    masks: np.ndarray  # uint8 N,H,W: the predicted class ids


class Predictions:
    """Each model's masks on the first `count` validation images of its dataset, computed once per report."""

    def __init__(self, count: int = MASK_IMAGES, declarations: dict | None = None):
        """`declarations`: dataset name -> its declaration's dict (the plan's; a preset's name needs none)."""
        self.count = count
        self.declarations = dict(declarations or {})
        self._masks: dict = {}
        self._queued: dict = {}  # trial key -> its index in the worker's request
        self._answers: dict = {}  # index -> the worker's answer, read ahead of need
        self._worker: subprocess.Popen | None = None
        self._folder: tempfile.TemporaryDirectory | None = None

    def prefetch(self, trials) -> None:
        """Start predicting these trials' masks (their best weights) in a worker process."""
        todo = {}
        for trial in trials:
            key = _key(trial, "best")
            if key not in self._masks and key not in self._queued and key not in todo:
                todo[key] = _json_safe(trial)
        if not todo or self._worker is not None or "torch" in sys.modules:
            return  # with torch already imported (a notebook, a test), predicting here costs less than a worker
        self._folder = tempfile.TemporaryDirectory(prefix="segstudy-masks-")
        # The caller's import path, as multiprocessing gives its children.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)}
        try:
            self._worker = subprocess.Popen([sys.executable, "-m", "study.analysis.predictions"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True, env=env)
            request = {"count": self.count, "which": "best", "folder": self._folder.name, "trials": list(todo.values()),
                       "declarations": self.declarations}
            self._worker.stdin.write(json.dumps(request))
            self._worker.stdin.close()
        except OSError:  # no worker: each prediction is made here when it is needed
            self._worker = None
            return
        self._queued = {key: index for index, key in enumerate(todo)}

    def predict(self, trial: dict, which: str = "best") -> Predicted:
        """A trial's model's masks (its best validated epoch's weights) and the images they are of."""
        key = _key(trial, which)
        if key not in self._masks:
            answer = self._answer(self._queued[key]) if key in self._queued else None
            if answer is None:
                self._masks[key] = predict_masks(trial, self.count, which, self.declarations)
            elif "error" in answer:
                raise StudyError(answer["error"])
            else:
                from trainables.config import TrainConfig

                with np.load(Path(self._folder.name) / f"{answer['index']}.npz", allow_pickle=False) as arrays:
                    self._masks[key] = Predicted(TrainConfig.from_dict(answer["config"]), arrays["images"],
                                                 arrays["truth"], arrays["masks"])
        return self._masks[key]

    def _answer(self, index: int) -> dict | None:
        """The worker's answer for request `index`, reading its output up to there; None if it ended first."""
        while index not in self._answers and self._worker is not None:
            line = self._worker.stdout.readline()
            if not line:
                break
            try:
                answer = json.loads(line)
                self._answers[answer["index"]] = answer
            except (ValueError, KeyError, TypeError):
                continue  # not an answer (a library printing to stdout)
        return self._answers.get(index)

    def close(self) -> None:
        if self._worker is not None:
            if self._worker.poll() is None:
                self._worker.kill()
            self._worker.wait()
            self._worker.stdout.close()
            self._worker = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


def predict_masks(trial: dict, count: int, which: str = "best", declarations: dict | None = None) -> Predicted:
    """One trial's model on the first `count` validation images of its dataset (`declarations`: dataset name ->
    its declaration's dict; a preset's name needs none)."""
    import torch

    from study.models.load import load_trial_model
    from trainables.data.device import DeviceSplit

    # One thread: a few small images need no more, and beside the report drawing on the other core,
    # more threads than free cores slowed this down tenfold (measured on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, config = load_trial_model(trial, which)
        declared = (declarations or {}).get(config.dataset)
        images, truth = validation_images(json.dumps(declared, sort_keys=True) if declared else config.dataset,
                                          config.data_root, tuple(config.image_size), config.cache_dir, count)
        split = DeviceSplit(images, truth, torch.device("cpu"))
        with torch.inference_mode():
            masks = model(split.normalize(split.images)).argmax(1).numpy().astype(np.uint8)
    finally:
        torch.set_num_threads(threads)
    return Predicted(config, images, truth, masks)


@lru_cache(maxsize=8)
def validation_images(declaration: str, root: str, size: tuple, cache_dir: str | None, count: int):
    """(images, masks) of the first `count` validation samples at a working size. `declaration`: its JSON text,
    or a preset's name (a hashable key for the cache of this function)."""
    from trainables.data import load_split
    from trainables.data.declaration import DataDeclaration

    declared = DataDeclaration.from_dict(json.loads(declaration)) if declaration.startswith("{") else declaration
    arrays = load_split(declared, root, "val", size, cache_dir, max_samples=count, progress=False)
    return np.array(arrays.images), np.array(arrays.masks)


def _key(trial: dict, which: str) -> tuple:
    return str(trial["trial_key"]), str(trial.get("path")), which


def _json_safe(trial: dict) -> dict:
    """A record row as JSON: missing values (NA, NaN) as null, numpy scalars as Python numbers."""
    safe = {}
    for name, value in trial.items():
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            safe[name] = None
        elif isinstance(value, np.generic):
            safe[name] = value.item()
        else:
            safe[name] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return safe


def _serve() -> None:
    """The worker: one request on stdin, one JSON line per trial on stdout, in the request's order."""
    request = json.loads(sys.stdin.read())
    folder = Path(request["folder"])
    for index, trial in enumerate(request["trials"]):
        try:
            predicted = predict_masks(trial, request["count"], request["which"], request.get("declarations"))
            np.savez(folder / f"{index}.npz", images=predicted.images, truth=predicted.truth, masks=predicted.masks)
            answer = {"index": index, "config": predicted.config.to_dict()}
        except Exception as error:  # the report shows it where the figure would be, as if predicted there
            answer = {"index": index, "error": str(error) if isinstance(error, StudyError)
                      else f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
