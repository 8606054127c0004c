"""Expand a validated StudySpec into stages: pretraining jobs, then main trials or a search.

The plan is written to the study folder before any trial starts; `resume`,
`status` and the planned-vs-ran check read it back rather than trusting Ray's state.
Everything here was validated by study/spec.py, so planning does not fail.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from study.spec import StudySpec

# Settings that change where or how fast a job runs, not what it learns: not part of its key.
EXECUTION_ONLY = ("data_root", "cache_dir", "device", "num_threads", "compile", "channels_last", "fused_optimizer",
                  "cuda_graphs", "fault_epoch")


@dataclass(frozen=True)
class PretrainJob:
    source: str
    key: str  # sha256 (16 hex) of the settings that shape the encoder and of the dataset's fingerprint
    config: dict  # TrainConfig.to_dict(), data_root resolved

    @property
    def trial_key(self) -> str:
        return f"pretrain-{self.source}-{self.config['arch']}-{self.config['segformer_stem']}-{self.key[:8]}"


@dataclass(frozen=True)
class PlannedTrial:
    trial_key: str  # <config_name>-s<seed>
    config_name: str
    config: dict  # TrainConfig.to_dict(), data_root resolved; `pretrain` keeps the source name for the runner


@dataclass(frozen=True)
class SearchPlan:
    variants: list  # every valid combination of the categorical dims, {setting: value}
    float_dims: dict  # setting -> (loguniform | uniform, low, high)
    num_samples: int
    seed: int  # the sampler's
    storage: str | None  # Optuna storage URL; None: the runner's default
    base_config: dict  # TrainConfig fields every sample starts from (a variant and the floats go over it)


@dataclass(frozen=True)
class Plan:
    study_name: str
    pretrain_jobs: list  # PretrainJob
    trials: list  # PlannedTrial; empty for a search
    search: SearchPlan | None
    dropped: list  # "N dropped: why"

    def job_for(self, source: str, arch: str, segformer_stem: str) -> PretrainJob:
        stem = "paper" if arch == "fcn_resnet50" else segformer_stem
        for job in self.pretrain_jobs:
            if (job.source, job.config["arch"], job.config["segformer_stem"]) == (source, arch, stem):
                return job
        raise KeyError(f"no pretraining job for source {source!r}, arch {arch}, segformer_stem {stem}")


def make_plan(spec: StudySpec, fingerprint: Callable[[str, str], str], study_name: str | None = None) -> Plan:
    """`fingerprint(dataset, root)` identifies a dataset's content (trainables.data.dataset_fingerprint).

    `study_name` is the name the study runs under (`study run --name`), default the spec's.
    """
    jobs = [PretrainJob(source=p.source, key=pretrain_key(p.config, fingerprint), config=p.config)
            for p in spec.pretraining]
    trials, search = [], None
    if spec.searcher.type == "grid":
        trials = [PlannedTrial(trial_key=f"{c.name}-s{seed}", config_name=c.name, config={**c.config, "seed": seed})
                  for c in spec.configurations for seed in spec.seeds]
    else:
        search = SearchPlan(variants=[dict(v) for v in spec.variants], float_dims=dict(spec.float_dims),
                            num_samples=spec.searcher.num_samples, seed=spec.searcher.seed,
                            storage=spec.searcher.storage, base_config=spec.search_base_config())
    return Plan(study_name=study_name or spec.name, pretrain_jobs=jobs, trials=trials, search=search,
                dropped=list(spec.dropped))


def pretrain_key(config: dict, fingerprint: Callable[[str, str], str]) -> str:
    """Same key, same encoder: an artifact made by any study with this key is reused.

    Unset optional settings (None) are left out too, so a new optional setting does not change old keys.
    """
    shaping = {k: v for k, v in config.items() if k not in EXECUTION_ONLY and v is not None}
    data = fingerprint(config["dataset"], config["data_root"])
    return hashlib.sha256(json.dumps([shaping, data], sort_keys=True).encode()).hexdigest()[:16]
