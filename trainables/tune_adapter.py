"""The only Ray import under trainables/: a trial config in, `fit()` out, reports and checkpoints.

Each epoch's report is the flat EpochRecord (trainables/records.py) plus who the trial is
(trial_key, config_name, stage) and where it ran; Tune writes it to the trial's result.json.
At each validation (and at the end) the report carries a checkpoint in the layout of
trainables/checkpoint.py. A resumed trial continues from the newest checkpoint in its folder,
even one that Tune's own experiment state does not name yet (on an object store that state is
synced periodically, not at every checkpoint).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from trainables.checkpoint import (
    FINAL,
    TRIAL_FILE,
    CheckpointError,
    checkpoint_folders,
    checkpoint_index,
    load_training_state,
    parse_trial_json,
    save_checkpoint,
)
from trainables.engine import fit
from trainables.trial import StudyContext, join_uri, resolve_trial, trial_report, weights_key

_LOCAL_COPIES: dict[str, str] = {}  # encoder URI -> local file, kept for the worker's later trials


def train_trial(config: dict, context: StudyContext) -> None:
    identity, settings = resolve_trial(config, context, tune.get_context().get_trial_id())
    if identity["trial_key"] in context.stopped:
        return  # the scheduler stopped it under an earlier driver: its record ends there, nothing to train
    train_config, weights = settings, None
    key = weights_key(settings.to_dict())
    if key in context.encoders:  # the storage's copy of the encoder of a pretraining source, or of a weights file
        if settings.pretrain in ("imagenet", "coco"):
            weights = local_copy(context.encoders[key])  # built-in weights: read from this copy
        else:
            train_config = train_config.replace(pretrain=local_copy(context.encoders[key]))
    if train_config.num_threads is None:  # fit() applies num_threads with torch.set_num_threads
        assigned = ray.get_runtime_context().get_assigned_resources()
        train_config = train_config.replace(num_threads=threads_for(assigned))
    execution = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "run_device": "cuda" if torch.cuda.is_available() and train_config.device != "cpu" else "cpu",
        "run_threads": train_config.num_threads,
    }
    folder = join_uri(context.stage_uri, identity["trial_key"]) if context.stage_uri else None
    with tempfile.TemporaryDirectory() as local:
        resume = newest_checkpoint(tune.get_checkpoint(), folder, local)
    if resume is not None and resume[0].get("kind") == FINAL:
        return  # it ended before an earlier driver recorded so: its folder holds all of it, nothing to train
    resume_state = resume[1] if resume is not None else None
    checkpoint_extra = {"identity": identity, "settings": settings.to_dict(), "execution": execution}
    last_val: dict = {}

    def on_epoch_end(record: dict, snapshot) -> None:
        metrics = trial_report(record, identity, {**execution, "worker_rss_mib": resident_mib()}, last_val)
        if not (record["validated"] or snapshot.final):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(directory, snapshot, checkpoint_extra)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    try:
        fit(train_config, declaration(context, settings.dataset), on_epoch_end=on_epoch_end,
            resume_state=resume_state, reuse_data=True, weights=weights)
    finally:
        release_memory()


def declaration(context: StudyContext, dataset: str):
    """The dataset's declaration from the study (None: the preset of that name, as `study train` reads it)."""
    from trainables.data.declaration import DataDeclaration

    declared = getattr(context, "datasets", None)  # a context pickled by a segstudy before declarations has none
    return DataDeclaration.from_dict(declared[dataset]) if declared and dataset in declared else None


def resident_mib() -> float | None:
    """This process's resident memory now (Linux), in MiB."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def release_memory() -> None:
    """Between trials of a reused worker: free what the trial left, and give freed heap pages back to the
    system (glibc keeps them otherwise, and the worker's memory would grow trial after trial). A full
    gc.collect() costs about 0.45 s here with torch and Ray loaded; the young generations are enough."""
    import ctypes
    import gc

    gc.collect(1)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def newest_checkpoint(recorded, trial_folder: str | None, local: str) -> tuple[dict, dict | None] | None:
    """(trial.json, training state or None for a final checkpoint) to continue from, or None to start afresh.

    The newest of Tune's recorded checkpoint and the checkpoints in the trial's folder on storage, copied
    into the empty folder `local`. A checkpoint that cannot be read is skipped (named on stderr), so damage
    costs epochs, never the run.
    """
    candidates = []
    if trial_folder is not None:
        import pyarrow.fs as pafs

        filesystem, path = pafs.FileSystem.from_uri(trial_folder) if "://" in trial_folder else \
            (pafs.LocalFileSystem(), trial_folder)
        candidates = [(checkpoint_index(found.rsplit("/", 1)[-1]), filesystem, found)
                      for found in checkpoint_folders(filesystem, path)]
    if recorded is not None:
        index = checkpoint_index(recorded.path.rstrip("/").rsplit("/", 1)[-1])
        candidates.append((index if index is not None else -1, recorded.filesystem, recorded.path))
    for _, filesystem, path in sorted(candidates, key=lambda c: c[0], reverse=True):
        try:
            return _read_checkpoint(filesystem, path, local)
        except (CheckpointError, OSError) as error:
            print(f"segstudy: skipping checkpoint {path}: {error}", flush=True)
            shutil.rmtree(local, ignore_errors=True)
            os.makedirs(local, exist_ok=True)
    return None


def _read_checkpoint(filesystem, path: str, local: str) -> tuple[dict, dict | None]:
    import pyarrow.fs as pafs

    pafs.copy_files(path, local, source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
    content = parse_trial_json(Path(local, TRIAL_FILE).read_text(), f"{path}/{TRIAL_FILE}")
    if content.get("kind") == FINAL:
        return content, None
    return content, load_training_state(local)


def local_copy(path_or_uri: str) -> str:
    """A local path for an encoder kept on shared disk or in an object store (copied once per worker)."""
    if "://" not in path_or_uri:
        return path_or_uri
    if path_or_uri in _LOCAL_COPIES and os.path.exists(_LOCAL_COPIES[path_or_uri]):
        return _LOCAL_COPIES[path_or_uri]
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(path_or_uri)
    folder = tempfile.mkdtemp(prefix="segstudy-encoder-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    target = Path(folder) / path.rsplit("/", 1)[-1]
    with filesystem.open_input_stream(path) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)
    _LOCAL_COPIES[path_or_uri] = str(target)
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


__all__ = ["train_trial", "StudyContext", "threads_for"]
