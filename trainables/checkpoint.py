"""A trial's checkpoint folder: what is in it, written and read without unpickling anything.

    trial.json           always: {"epoch", "kind", "records": every EpochRecord so far, "best_epoch",
                         "class_weights": the loss's weight per class (null without), ...}
    state.pt             kind "training": the full training state to continue from (model, optimizer,
                         scheduler, RNG states, best weights so far), tensors and plain values only
    final.safetensors    kind "final": the weights after the last epoch
    best.safetensors     kind "final", when the best validation epoch is not the last: its weights
    encoder.safetensors  a pretraining job's exported encoder (metadata: arch, segformer_stem, settings)

A trial that is still training keeps one "training" checkpoint (the latest); when it ends it
keeps one "final" checkpoint, without optimizer state. Every load is `torch.load(...,
weights_only=True)` or safetensors: a file from a study folder never runs code.
torch and safetensors are imported where weights are read or written, so that reading
trial.json stays quick.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainables.errors import TrainablesError

TRIAL_FILE = "trial.json"
STATE_FILE = "state.pt"
FINAL_WEIGHTS = "final.safetensors"
BEST_WEIGHTS = "best.safetensors"
ENCODER_FILE = "encoder.safetensors"
CHECKPOINT_PREFIX = "checkpoint_"
TRAINING, FINAL = "training", "final"
FORMAT_VERSION = 2


class CheckpointError(TrainablesError):
    """A checkpoint file is missing, damaged or not one of ours; the message names it."""


# -- trial.json ------------------------------------------------------------------------------
def write_trial_json(directory: str | os.PathLike, content: dict) -> None:
    Path(directory, TRIAL_FILE).write_text(json.dumps({"version": FORMAT_VERSION, **content}, allow_nan=True))


def parse_trial_json(text: str, where: str) -> dict:
    try:
        content = json.loads(text)
    except ValueError as error:
        raise CheckpointError(f"{where}: not a readable {TRIAL_FILE} ({error})") from None
    if not isinstance(content, dict) or not isinstance(content.get("records"), list) or "epoch" not in content:
        raise CheckpointError(f"{where}: not a segstudy {TRIAL_FILE} (no epoch and records)")
    return content


# -- the full training state (weights_only-safe) ---------------------------------------------
def save_training_state(directory: str | os.PathLike, state: dict) -> None:
    import torch

    torch.save(state, Path(directory, STATE_FILE))


def load_training_state(path: str | os.PathLike) -> dict:
    """A `state.pt` (or a file given directly), loaded as tensors and plain values only."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state here")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an UnpicklingError for anything but tensors and plain values; others for damage
        raise CheckpointError(f"{path}: not a training state this tool can load safely "
                              f"({type(error).__name__}: {_first_line(error)})") from None


# -- weights --------------------------------------------------------------------------------
def save_weights(path: str | os.PathLike, state: dict, metadata: dict[str, str] | None = None) -> None:
    """A state dict as safetensors (contiguous CPU copies), written then renamed.

    Written through Python's open, not safetensors' save_file: that creates its file mode 0600 whatever the
    umask, and colleagues sharing a study folder could then not read its weights (report, predict)."""
    from safetensors.torch import save

    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    temporary = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(save(tensors, metadata=metadata))
    os.replace(temporary, path)


def load_weights(path: str | os.PathLike) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"{os.fspath(path)}: no weights file here")
    try:
        return load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{os.fspath(path)}: not a readable safetensors file ({_first_line(error)})") from None


def weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{os.fspath(path)}: not a readable safetensors file ({_first_line(error)})") from None


# -- RNG states as tensors and plain values ---------------------------------------------------
def get_rng_state() -> dict:
    import random

    import numpy as np
    import torch

    kind, key, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    kind, key, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- which checkpoint ---------------------------------------------------------------------------
def checkpoint_index(name: str) -> int | None:
    """3 for "checkpoint_000003"; None for anything else."""
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if digits.isdigit() else None


def checkpoint_folders(filesystem, folder: str) -> list[str]:
    """The checkpoint folders in a trial's folder on a pyarrow filesystem, newest first ([] if it cannot be listed)."""
    import pyarrow.fs as pafs

    try:
        infos = filesystem.get_file_info(pafs.FileSelector(folder.rstrip("/"), allow_not_found=True))
    except OSError:
        return []
    found = [(checkpoint_index(i.base_name), i.path) for i in infos
             if i.type == pafs.FileType.Directory and checkpoint_index(i.base_name) is not None]
    return [path for _, path in sorted(found, reverse=True)]


def read_trial_file(filesystem, checkpoint: str) -> dict | None:
    """A checkpoint's trial.json on a pyarrow filesystem; None where it is missing, cut short or not ours."""
    where = f"{checkpoint.rstrip('/')}/{TRIAL_FILE}"
    try:
        with filesystem.open_input_stream(where) as stream:
            return parse_trial_json(stream.read().decode(), where)
    except (OSError, UnicodeDecodeError, CheckpointError):
        return None


def newest_trial_file(filesystem, folder: str) -> dict | None:
    """The trial.json of the newest checkpoint in a trial's folder that has a readable one, or None."""
    for checkpoint in checkpoint_folders(filesystem, folder):
        content = read_trial_file(filesystem, checkpoint)
        if content is not None:
            return content
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


# -- one epoch's checkpoint -----------------------------------------------------------------------
def save_checkpoint(directory: str | os.PathLike, snapshot, extra: dict | None = None) -> str:
    """Write the checkpoint of `snapshot` (engine.Snapshot) into `directory`; returns its kind.

    A final snapshot keeps weights only (final, and best when another epoch was best) and
    the exported encoder; any other keeps the full training state to continue from.
    `extra` (who the trial is, its settings) goes into trial.json.
    """
    directory = Path(directory)
    kind = FINAL if snapshot.final else TRAINING
    if kind == TRAINING:
        save_training_state(directory, snapshot.training_state())
    else:
        save_weights(directory / FINAL_WEIGHTS, snapshot.weights())
        best = snapshot.best_weights_if_other()
        if best is not None:
            save_weights(directory / BEST_WEIGHTS, best)
        if snapshot.result.encoder_state is not None:
            save_encoder(directory / ENCODER_FILE, snapshot.result.encoder_state, snapshot.config)
    result = snapshot.result
    write_trial_json(directory, {**(extra or {}), "kind": kind, "epoch": snapshot.epoch,
                                 "best_epoch": result.best_epoch, "best_val_miou": result.best_val_miou,
                                 "has_best_weights": kind == FINAL and (directory / BEST_WEIGHTS).exists(),
                                 "class_weights": result.class_weights, "records": result.records})
    return kind


def save_encoder(path: str | os.PathLike, encoder_state: dict, config) -> None:
    """An exported encoder with what it fits: arch, segformer_stem, and the settings that trained it."""
    stem = config.segformer_stem  # held at its default by models that have no stem option
    save_weights(path, encoder_state, {"format": "segstudy-encoder", "arch": config.arch, "segformer_stem": stem,
                                       "settings": json.dumps(config.to_dict())})


def finalize(directory: str | os.PathLike) -> bool:
    """Turn a training checkpoint of a run that has ended (stopped early by a scheduler) into a final one:
    its weights and its best epoch's weights as safetensors, no optimizer state. False if already final.

    The weights are written first and the state deleted last, so a finalisation cut off at any point (a
    killed driver) is finished by the next call rather than leaving a full training state behind."""
    directory = Path(directory)
    content = parse_trial_json((directory / TRIAL_FILE).read_text(), str(directory / TRIAL_FILE))
    if content.get("kind") == FINAL:
        if not (directory / STATE_FILE).exists():
            return False
        (directory / STATE_FILE).unlink()  # final already: only the state was left
        return True
    state = load_training_state(directory)
    save_weights(directory / FINAL_WEIGHTS, state["model"])
    if state.get("best_weights") is not None:
        save_weights(directory / BEST_WEIGHTS, state["best_weights"])
    write_trial_json(directory, {**{k: v for k, v in content.items() if k != "version"}, "kind": FINAL,
                                 "has_best_weights": state.get("best_weights") is not None})
    (directory / STATE_FILE).unlink()
    return True
