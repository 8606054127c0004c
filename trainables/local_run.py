"""One training outside Ray, written to a folder: what `study train` runs.

    <out>/config.json      the settings
    <out>/metrics.jsonl    one JSON object per epoch
    <out>/checkpoint/      the latest checkpoint, in a trial's layout (trainables/checkpoint.py): while
                           training the full training state (resumable with --resume); at the end the
                           final weights, the best epoch's weights where another epoch was best, and
                           encoder.safetensors when export_encoder is "last" or "best"
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from trainables.checkpoint import FINAL, TRAINING, TRIAL_FILE, load_training_state, parse_trial_json, save_checkpoint
from trainables.config import TrainConfig
from trainables.engine import FitResult, fit
from trainables.errors import ConfigError
from trainables.records import flat

CHECKPOINT = "checkpoint"


def train_to_folder(config: TrainConfig, out_dir: str | os.PathLike, resume: bool = False,
                    data=None) -> FitResult:
    """`data`: the dataset's declaration (None: the preset named config.dataset)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.jsonl"
    checkpoint = out / CHECKPOINT
    resume_state = None
    if resume:
        if not (checkpoint / TRIAL_FILE).exists():
            raise ConfigError(f"--resume: no checkpoint to resume from in {checkpoint}")
        kind = parse_trial_json((checkpoint / TRIAL_FILE).read_text(), str(checkpoint / TRIAL_FILE)).get("kind")
        if kind == FINAL:
            raise ConfigError(f"--resume: the run in {out} has already finished; pick another --out for a new one")
        resume_state = load_training_state(checkpoint)
        if resume_state["config"] != config.to_dict():
            raise ConfigError(f"--resume: {checkpoint} was written with other settings; use the same options or "
                              f"another --out")
        _keep_epochs_up_to(metrics_file, resume_state["epoch"])
    elif metrics_file.exists():
        raise ConfigError(f"--out {out} already holds a run (metrics.jsonl); pass --resume to continue it or pick "
                          f"another folder")
    _write_atomic(out / "config.json", json.dumps(config.to_dict(), indent=1))

    def on_epoch_end(record: dict, snapshot) -> None:
        with metrics_file.open("a") as handle:
            handle.write(json.dumps(flat(record)) + "\n")
        if record["validated"] or snapshot.final:
            # A new folder, then a rename: a run killed while saving keeps its previous checkpoint.
            staging = out / f".{CHECKPOINT}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            save_checkpoint(staging, snapshot, {"settings": config.to_dict()})
            previous = out / f".{CHECKPOINT}.old"
            shutil.rmtree(previous, ignore_errors=True)
            if checkpoint.exists():
                checkpoint.rename(previous)
            staging.rename(checkpoint)
            shutil.rmtree(previous, ignore_errors=True)

    return fit(config, data, on_epoch_end=on_epoch_end, resume_state=resume_state,
               log=lambda line: print(line, file=sys.stderr))


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _keep_epochs_up_to(metrics_file: Path, epoch: int) -> None:
    """Drop epochs after the checkpoint: they are trained again. A line cut short by a kill is dropped too."""
    if not metrics_file.exists():
        return
    kept = []
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("epoch", epoch + 1) <= epoch:
            kept.append(line)
    _write_atomic(metrics_file, "".join(line + "\n" for line in kept))


__all__ = ["train_to_folder", "CHECKPOINT", "TRAINING", "FINAL"]
