"""Pretrained weights a plan reads (ImageNet, COCO, a file), each copied once into the storage's artifacts.

Before Ray starts, every weights file a planned trial will read is found on the driver (a family's
FAMILY.locate for `pretrain: imagenet | coco`, the path itself for `pretrain: FILE`) and copied, once,
into `<storage>/_artifacts/weights/<sha256[:16]>/<file name>`: every node's trials then read the same
bytes, also on a cluster whose nodes have no such file. A file that is missing is named before Ray
starts, with where it was expected; one that does not fit the model (not a state dict, a key or shape that
differs) is named there too: the model is built once on the driver with it. Trials find their copy
through `weights_key` (trainables/trial.py).
"""

from __future__ import annotations

import hashlib
import os

from study.errors import StudyError
from study.planning.plan import Plan
from study.storage import ARTIFACTS, Storage
from trainables.errors import TrainablesError
from trainables.models import BUILTIN_WEIGHTS, family_of
from trainables.trial import weights_key


def weights_artifacts(plan: Plan, storage: Storage, say) -> dict[str, str]:
    """{weights_key: the weights file's copy in the storage} for every planned trial reading built-in or file
    weights; a StudyError naming the file for weights that are not on this machine."""
    sources = {job.source for job in plan.pretrain_jobs}
    copies: dict[str, str] = {}
    digests: dict[str, str] = {}  # local file -> sha256, each file read once
    for settings in plan.planned_settings():
        pretrain = settings["pretrain"]
        if pretrain == "none" or pretrain in sources:
            continue
        key = weights_key(settings)
        if key in copies:
            continue
        path = local_weights_file(settings)
        check_weights_fit(settings, path)
        if path not in digests:
            digests[path] = _sha256(path)
        folder = (ARTIFACTS, "weights", digests[path][:16])
        name = os.path.basename(path)
        if not storage.exists(*folder, name):
            say(f"copying the weights {path} into the study's storage ({os.path.getsize(path) / 2**20:.1f} MiB)")
            storage.upload(path, *folder, name)
        copies[key] = storage.uri(*folder, name)
    return copies


def local_weights_file(settings: dict) -> str:
    """The file on this machine that a trial of these settings reads its pretrained weights from."""
    pretrain = settings["pretrain"]
    if pretrain in BUILTIN_WEIGHTS:
        try:
            return family_of(settings["arch"]).locate(settings)
        except TrainablesError as error:
            raise StudyError(str(error)) from None
    path = os.path.abspath(os.path.expanduser(pretrain))
    if not os.path.isfile(path):
        raise StudyError(f"pretrain: no weights file at {pretrain!r} (on the machine that runs `study run`: it is "
                         f"copied into the study's storage from there)")
    return path


def check_weights_fit(settings: dict, path: str) -> None:
    """Build the model of `settings` on the CPU with its weights read from `path`, as its trials will: a file that
    is no state dict, or whose keys or shapes do not fit, is named here, once, instead of in every trial's retries."""
    import importlib

    from trainables.config import TrainConfig

    config = TrainConfig.from_dict({**settings, "device": "cpu"})
    try:
        importlib.import_module(family_of(config.arch).module).build(config, weights=path)
    except TrainablesError as error:
        raise StudyError(str(error)) from None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
