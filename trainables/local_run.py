"""One training outside Ray, written to a folder: what `study train` runs.

    <out>/config.json         the settings
    <out>/metrics.jsonl       one JSON object per epoch
    <out>/checkpoint_last.pt  full training state at the last validation (resumable)
    <out>/checkpoint_best.pt  full training state at the best validation mIoU
    <out>/encoder.pt          the encoder, when export_encoder is "last" or "best"
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from trainables.config import TrainConfig
from trainables.engine import FitResult, fit
from trainables.errors import ConfigError
from trainables.models.transfer import save_encoder_state


def train_to_folder(config: TrainConfig, out_dir: str | os.PathLike, resume: bool = False) -> FitResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.jsonl"
    last = out / "checkpoint_last.pt"
    resume_state = None
    if resume:
        if not last.exists():
            raise ConfigError(f"--resume: no checkpoint to resume from at {last}")
        resume_state = torch.load(last, map_location="cpu", weights_only=False)
        if resume_state["config"] != config.to_dict():
            raise ConfigError(f"--resume: {last} was written with other settings; use the same options or another --out")
        _keep_epochs_up_to(metrics_file, resume_state["epoch"])
    elif metrics_file.exists():
        raise ConfigError(f"--out {out} already holds a run (metrics.jsonl); pass --resume to continue it or pick another folder")
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))

    def on_epoch_end(record: dict, training_state) -> None:
        with metrics_file.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        final = record["epoch"] == config.epochs or record["diverged"]
        if record["validated"] or final:
            state = training_state()
            _save_atomic(state, last)
            if record["validated"] and record["best_epoch"] == record["epoch"]:
                _save_atomic(state, out / "checkpoint_best.pt")
            if state["encoder_export"] is not None:
                save_encoder_state(state["encoder_export"], out / "encoder.pt", config)

    return fit(config, on_epoch_end=on_epoch_end, resume_state=resume_state, log=lambda line: print(line, file=sys.stderr))


def _save_atomic(state: dict, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _keep_epochs_up_to(metrics_file: Path, epoch: int) -> None:
    """Drop epochs after the checkpoint: they are trained again."""
    if not metrics_file.exists():
        return
    lines = [line for line in metrics_file.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= epoch]
    metrics_file.write_text("".join(line + "\n" for line in kept))
