"""Expand a validated StudySpec into stages: pretraining jobs, then main trials or a search.

The plan is written to the study folder before any trial starts; `resume`,
`status` and the planned-vs-ran check read it back rather than trusting Ray's state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from study.spec import StudySpec
from trainables.config import TrainConfig

# Settings that change where or how fast a run goes, not what it learns: not part of a job's key.
EXECUTION_ONLY = ("data_root", "cache_dir", "device", "num_threads", "fault_epoch")


@dataclass(frozen=True)
class PretrainJob:
    source: str
    key: str  # content hash of the training settings and the dataset's fingerprint
    config: dict  # TrainConfig.to_dict(), data_root resolved

    @property
    def trial_key(self) -> str:
        return f"pretrain-{self.source}-{self.config['arch']}-{self.config['segformer_stem']}-{self.key[:8]}"


@dataclass(frozen=True)
class PlannedTrial:
    trial_key: str
    config_name: str
    config: dict  # TrainConfig.to_dict(); `pretrain` keeps the source name, the runner gives the file


@dataclass(frozen=True)
class SearchPlan:
    variants: list  # valid categorical combinations
    float_dims: dict  # name -> (kind, low, high)
    num_samples: int
    seed: int
    storage: str | None
    base_config: dict  # TrainConfig.to_dict() shared by every sample


@dataclass(frozen=True)
class Plan:
    study_name: str
    pretrain_jobs: list = field(default_factory=list)
    trials: list = field(default_factory=list)  # grid studies
    search: SearchPlan | None = None
    dropped: list = field(default_factory=list)

    def job_for(self, source: str, arch: str, segformer_stem: str) -> PretrainJob:
        stem = "paper" if arch == "fcn_resnet50" else segformer_stem
        return next(j for j in self.pretrain_jobs
                    if (j.source, j.config["arch"], j.config["segformer_stem"]) == (source, arch, stem))


def make_plan(spec: StudySpec, fingerprint: Callable[[str, str], str], name: str | None = None) -> Plan:
    """`fingerprint(dataset, root)` identifies a dataset's content (trainables.data.dataset_fingerprint)."""
    jobs = _pretrain_jobs(spec, fingerprint)
    if spec.searcher.type == "grid":
        trials = [
            PlannedTrial(trial_key=f"{config_name}-s{seed}", config_name=config_name,
                         config=_full_config(spec, {**settings, "seed": seed}))
            for config_name, settings in spec.configurations
            for seed in spec.seeds
        ]
        return Plan(study_name=name or spec.name, pretrain_jobs=jobs, trials=trials, dropped=list(spec.dropped))
    search = SearchPlan(
        variants=[dict(v) for v in spec.variants], float_dims=dict(spec.float_dims),
        num_samples=spec.searcher.num_samples, seed=spec.searcher.seed, storage=spec.searcher.storage,
        base_config=_full_config(spec, {**spec.train, "seed": spec.seeds[0]}),
    )
    return Plan(study_name=name or spec.name, pretrain_jobs=jobs, search=search, dropped=list(spec.dropped))


def _full_config(spec: StudySpec, settings: dict) -> dict:
    return TrainConfig.from_dict({**settings, "data_root": spec.dataset_root(settings["dataset"])}).to_dict()


def _pretrain_jobs(spec: StudySpec, fingerprint: Callable[[str, str], str]) -> list[PretrainJob]:
    needed = {}
    for settings in spec.main_settings():
        source = settings.get("pretrain", "none")
        if source in spec.pretraining:
            arch = settings.get("arch", "segformer_b0")
            stem = "paper" if arch == "fcn_resnet50" else settings.get("segformer_stem", "paper")
            needed[(source, arch, stem)] = None
    jobs = []
    for source, arch, stem in needed:
        job_settings = {"seed": 0, **spec.pretraining[source], "arch": arch, "segformer_stem": stem}
        config = _full_config(spec, job_settings)
        learned = {k: v for k, v in sorted(config.items()) if k not in EXECUTION_ONLY}
        data = fingerprint(config["dataset"], config["data_root"])
        key = hashlib.sha256(json.dumps([learned, data], sort_keys=True).encode()).hexdigest()[:16]
        jobs.append(PretrainJob(source=source, key=key, config=config))
    return jobs
