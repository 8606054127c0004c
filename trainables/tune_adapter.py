"""The only Ray import under trainables/: a trial config in, `fit()` out, reports and checkpoints.

Ray hands the trial one of two config shapes, both resolved here into a TrainConfig:
- grid and pretraining trials: {"trial": {...TrainConfig fields..., "trial_key", "config_name", "stage"}}
- Optuna trials: {"variant": "<label>", <float dims>...}, completed from `context.variants` and `context.base`.
A `pretrain` value naming a pretraining source is replaced by the encoder file the study made for it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
from ray import tune

from trainables.config import TrainConfig
from trainables.engine import fit
from trainables.models.transfer import save_encoder_state

STATE_FILE = "state.pt"
ENCODER_FILE = "encoder.pt"
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
# Columns that describe a trial (rather than its training settings), carried in every report.
TRIAL_FIELDS = ("trial_key", "config_name", "stage")


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a stage shares; passed once through `tune.with_parameters`."""

    base: dict = field(default_factory=dict)  # Optuna: settings shared by every variant
    variants: dict = field(default_factory=dict)  # Optuna: label -> one valid categorical combination
    encoders: dict = field(default_factory=dict)  # "source|arch|stem" -> encoder file path or URI


def resolve_trial(config: dict, context: StudyContext) -> tuple[dict, TrainConfig]:
    """(descriptive columns, training settings) of one trial."""
    if "trial" in config:
        values = dict(config["trial"])
    else:
        variant = config["variant"]
        values = {**context.base, **context.variants[variant], "config_name": variant}
        values.update({k: v for k, v in config.items() if k != "variant"})
        values.setdefault("stage", "main")
    columns = {k: values.pop(k) for k in TRIAL_FIELDS if k in values}
    source = values.get("pretrain", "none")
    key = encoder_key(source, values.get("arch", ""), values.get("segformer_stem", "paper"))
    if key in context.encoders:  # a pretraining source of the study; anything else is none, imagenet or a path
        values["pretrain"] = local_copy(context.encoders[key])
        columns["pretrain_source"] = source
        columns["encoder_source"] = context.encoders[key]
    columns.setdefault("pretrain_source", source)
    return columns, TrainConfig.from_dict({k: v for k, v in values.items() if k in TRAIN_FIELDS})


def encoder_key(source: str, arch: str, stem: str) -> str:
    return f"{source}|{arch}|{stem if arch != 'fcn_resnet50' else 'paper'}"


def local_copy(path_or_uri: str) -> str:
    """A local path for an encoder kept on shared disk or in an object store."""
    if "://" not in path_or_uri:
        return path_or_uri
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(path_or_uri)
    target = Path(tempfile.mkdtemp(prefix="segstudy-encoder-")) / ENCODER_FILE
    with filesystem.open_input_stream(path) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)
    return str(target)


def threads_for(assigned: dict, cores: int | None = None) -> int:
    """torch intra-op threads for a trial: its whole assigned CPUs (at least 1, at most the cores).

    `assigned` is `ray.get_runtime_context().get_assigned_resources()` ({"CPU": 2.0, "GPU": 0.25}).
    Trials packed on one machine then share its cores instead of each starting one
    thread per core and fighting over them; a fractional CPU gets one thread.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(int(assigned.get("CPU", 0) or 0), max(1, cores)))


def train_trial(config: dict, context: StudyContext) -> None:
    columns, train_config = resolve_trial(config, context)
    if train_config.num_threads is None:  # fit() applies num_threads with torch.set_num_threads
        assigned = ray.get_runtime_context().get_assigned_resources()
        train_config = dataclasses.replace(train_config, num_threads=threads_for(assigned))
    columns.setdefault("trial_key", f"search-{tune.get_context().get_trial_id()}")  # searcher trials
    typed = {
        **columns,
        "arch": train_config.arch,
        "freeze": train_config.freeze,
        "seed": train_config.seed,
        "segformer_stem": train_config.segformer_stem,
        "dataset": train_config.dataset,
        "epochs_planned": train_config.epochs,
        "num_threads": train_config.num_threads,
        "node_id": ray.get_runtime_context().get_node_id(),
        "device": "cuda" if torch.cuda.is_available() and train_config.device != "cpu" else "cpu",
    }
    resume_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume_state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)

    last_val: dict = {}

    def on_epoch_end(record: dict, training_state) -> None:
        metrics = {**record, **typed, "lr_initial": train_config.lr}
        # Schedulers and searchers compare `val_miou` on every report: between validations
        # they see the last validated value (NaN before the first); `validated` tells them apart.
        if record["validated"]:
            last_val.update({k: v for k, v in record.items() if k.startswith("val_")})
        else:
            metrics.update(last_val or {"val_miou": math.nan, "val_loss": math.nan})
        final = record["epoch"] == train_config.epochs or record["diverged"]
        if not (record["validated"] or final):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            state = training_state()
            torch.save(state, Path(directory) / STATE_FILE)
            if state["encoder_export"] is not None:
                save_encoder_state(state["encoder_export"], Path(directory) / ENCODER_FILE, train_config)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    fit(train_config, on_epoch_end=on_epoch_end, resume_state=resume_state)
