"""The plan: everything a study runs, decided once from the study file and written before any trial starts.

The plan is the contract. `study run` validates the study file into a StudySpec, expands
it into a Plan and writes `plan.json`; from then on the runner runs the plan (never the
study file), `resume` continues the plan, and status, report and export read it. It holds
the pretraining jobs (each keyed by a content hash, so an encoder is made once per
storage), the main trials or the search, the execution settings (scheduler, resources,
concurrency, failures, the searcher's arguments pinned explicitly, where trials are tracked:
MLflow, W&B, TensorBoard), the declared tables,
the package versions that planned it, and the study file as run with its sha256: a
`spec.yaml` edited afterwards is detected and the plan's own copy is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from study.errors import StudyError
from study.names import is_name
from study.planning.spec import RowSpec, StudySpec, TableSpec, TrackingSpec
from trainables.config import LATER
from trainables.data.declaration import DataDeclaration, preset
from trainables.models import family_of
from trainables.trial import variant_label

PLAN_FILE = "plan.json"
SPEC_FILE = "spec.yaml"
PLAN_VERSION = 4  # 3: execution.tracking; 4: pretraining jobs name their trial key
READABLE_VERSIONS = (2, 3, PLAN_VERSION)  # format 2: without tracking; before 4: the job's key by the old rule
VERSIONED_PACKAGES = ("segstudy", "torch", "torchvision", "ray", "optuna", "pandas", "pyarrow")
# Settings that change where or how fast a job runs, not what it learns: not part of its key.
EXECUTION_ONLY = ("data_root", "cache_dir", "device", "num_threads", "compile", "channels_last", "fused_optimizer",
                  "cuda_graphs", "fault_epoch", "data_memory_mib")
# Settings a job's key leaves out because the dataset's fingerprint already covers them.
DERIVED = ("num_classes",)


class PlanError(StudyError):
    """plan.json is missing, damaged or from another version; the message says which and what to do."""


@dataclass(frozen=True)
class PretrainJob:
    source: str
    key: str  # sha256 (16 hex) of the settings that shape the encoder and of the dataset's fingerprint
    config: dict  # TrainConfig.to_dict(), data_root resolved
    trial_key: str  # pretrain-<source>-<arch>[-<encoder options>]-<key>: its folder in the pretrain stage

    @property
    def encoder_signature(self) -> tuple:
        return family_of(self.config["arch"]).encoder_signature(self.config)


def job_trial_key(source: str, key: str, config: dict) -> str:
    """A pretraining job's trial key: its source, the encoder it makes (arch, encoder options) and its key."""
    family = family_of(config["arch"])
    options = [str(config[name]) if is_name(str(config[name])) else sha256(str(config[name]))[:8]
               for name in family.encoder_options]
    return "-".join(["pretrain", source, config["arch"], *options, key[:8]])


def _legacy_job_trial_key(job: dict) -> str:
    """The trial key plans before format 4 derived: arch and SegFormer stem, whatever the arch."""
    return f"pretrain-{job['source']}-{job['config']['arch']}-{job['config']['segformer_stem']}-{job['key'][:8]}"


@dataclass(frozen=True)
class PlannedTrial:
    trial_key: str  # <config_name>-s<seed>
    config_name: str
    config: dict  # TrainConfig.to_dict(), data_root resolved; `pretrain` keeps the source name for the runner


@dataclass(frozen=True)
class SearchPlan:
    variants: list  # every valid combination of the categorical dims, {setting: value}
    float_dims: dict  # setting -> [loguniform | uniform, low, high]
    num_samples: int
    base_config: dict  # TrainConfig fields every sample starts from (a variant and the floats go over it)

    @property
    def labels(self) -> dict[str, dict]:
        """variant label (a search trial's config_name) -> its categorical settings."""
        return {variant_label(v): v for v in self.variants}


@dataclass(frozen=True)
class SchedulerPlan:
    type: str  # fifo | asha
    metric: str
    mode: str
    grace_period: int
    reduction_factor: int
    max_t: int  # ASHA's last rung: the main trials' epochs


@dataclass(frozen=True)
class SearcherPlan:
    type: str  # grid | optuna
    seed: int  # Optuna's TPESampler seed
    storage: str | None  # Optuna storage URL; None: sqlite in a local study folder, else in memory
    multivariate: bool  # TPESampler arguments, pinned (Optuna 5 changed their defaults)
    constant_liar: bool


@dataclass(frozen=True)
class Execution:
    scheduler: SchedulerPlan
    searcher: SearcherPlan
    cpu: float  # per trial
    gpu: float
    max_concurrent: int | None
    max_failures: int
    # MLflow / W&B / TensorBoard, defaults filled in (experiment and project: the study's name)
    tracking: TrackingSpec = TrackingSpec()


@dataclass(frozen=True)
class DatasetPlan:
    root: str  # absolute
    generate: dict | None  # {train, val, seed} of generated data, or None: real data only
    # the dataset's declaration (trainables/data/declaration.py, to_dict()); {}: a plan before format 4 (a preset)
    declaration: dict = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    study_name: str
    datasets: dict  # name -> DatasetPlan
    pretrain_jobs: list  # PretrainJob
    trials: list  # PlannedTrial; empty for a search
    search: SearchPlan | None
    dropped: list  # "N dropped: why"
    execution: Execution
    tables: tuple  # TableSpec, as declared (empty: the report's default tables)
    spec_yaml: str  # the study file as run
    spec_sha256: str
    versions: dict  # package -> version, of the driver that planned the study
    created: float = 0.0
    version: int = PLAN_VERSION
    # arch module:function -> {"source": its file, "sha256"}: a model factory changed later is named
    factories: dict = dataclasses.field(default_factory=dict)

    def job_for(self, source: str, settings: dict) -> PretrainJob:
        """The pretraining job of `source` whose encoder fits a trial of these settings."""
        signature = family_of(settings["arch"]).encoder_signature(settings)
        for job in self.pretrain_jobs:
            if job.source == source and job.encoder_signature == signature:
                return job
        raise KeyError(f"no pretraining job for source {source!r} and the encoder {signature}")

    def planned_settings(self) -> list[dict]:
        """Every settings a trial of this plan may run with: jobs, trials, and a search's base under each variant
        (its sampled numbers at their lower end)."""
        settings = [job.config for job in self.pretrain_jobs] + [trial.config for trial in self.trials]
        if self.search is not None:
            lows = {name: low for name, (_, low, _) in self.search.float_dims.items()}
            settings += [{**self.search.base_config, **variant, **lows} for variant in self.search.variants]
        return settings

    def declaration(self, dataset: str) -> DataDeclaration:
        """The dataset's declaration; a plan before format 4 names a preset."""
        planned = self.datasets.get(dataset)
        if planned is not None and planned.declaration:
            return DataDeclaration.from_dict(planned.declaration)
        return preset(dataset)

    def class_names(self, dataset: str | None, count: int) -> list[str]:
        """The names of a dataset's classes, as declared; "class i" past their end (or for no dataset)."""
        known = self.declaration(dataset).class_names if dataset in self.datasets else []
        return [known[i] if i < len(known) else f"class {i}" for i in range(count)]

    def palette(self, dataset: str | None, count: int) -> list[tuple[int, int, int]]:
        """The colour of each class id of a dataset, as declared (or drawn when it declares none)."""
        known = self.declaration(dataset).colours if dataset in self.datasets else []
        return [tuple(known[i]) if i < len(known) else (40 + (i * 37) % 200,) * 3 for i in range(count)]

    def configs(self) -> list[dict]:
        """The settings of every job and planned trial (a search: its base settings)."""
        configs = [job.config for job in self.pretrain_jobs] + [trial.config for trial in self.trials]
        return configs + ([self.search.base_config] if self.search else [])

    def describe(self) -> str:
        main = (f"{len(self.trials)} trials" if self.search is None
                else f"an Optuna search of {self.search.num_samples} trials")
        return f"{len(self.pretrain_jobs)} pretraining job(s), then {main}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> Plan:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("version") not in READABLE_VERSIONS:
                raise PlanError(f"{where}: a plan of format {data.get('version', 1)!r}; this segstudy reads formats "
                                f"{', '.join(map(str, READABLE_VERSIONS))} (run the study with the segstudy version "
                                f"that planned it)")
            search = data["search"]
            execution = data["execution"]
            return cls(
                study_name=data["study_name"],
                datasets={name: DatasetPlan(**d) for name, d in data["datasets"].items()},
                pretrain_jobs=[PretrainJob(**({"trial_key": _legacy_job_trial_key(job), **job}
                                              if data["version"] < 4 else job)) for job in data["pretrain_jobs"]],
                trials=[PlannedTrial(**trial) for trial in data["trials"]],
                search=SearchPlan(**search) if search else None,
                dropped=list(data["dropped"]),
                execution=Execution(**{**execution, "scheduler": SchedulerPlan(**execution["scheduler"]),
                                       "searcher": SearcherPlan(**execution["searcher"]),
                                       "tracking": TrackingSpec.from_dict(execution["tracking"])
                                       if data["version"] >= 3 else TrackingSpec()}),
                tables=tuple(TableSpec(**{**t, "columns": tuple(t["columns"]),
                                          "rows": tuple(RowSpec(**r) for r in t["rows"])}) for t in data["tables"]),
                spec_yaml=data["spec_yaml"], spec_sha256=data["spec_sha256"], versions=dict(data["versions"]),
                created=float(data.get("created", 0.0)), factories=dict(data.get("factories", {})),
            )
        except PlanError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise PlanError(f"{where} is damaged ({type(error).__name__}: {str(error)[:200]})") from None


def datasets_of(spec: StudySpec) -> dict[str, DatasetPlan]:
    """The datasets the study's trials and pretraining jobs use."""
    used = spec.used_datasets()
    return {name: DatasetPlan(root=d.root, generate=d.generate, declaration=d.declaration.to_dict())
            for name, d in spec.datasets.items() if name in used}


def make_plan(spec: StudySpec, fingerprint: Callable, study_name: str | None = None) -> Plan:
    """`fingerprint(declaration, root)` identifies a dataset's content (trainables.data.dataset_fingerprint).

    `study_name` is the name the study runs under (`study run --name`), default the spec's.
    """
    jobs = []
    for pretraining in spec.pretraining:
        config = pretraining.config
        key = pretrain_key(config, fingerprint(spec.datasets[config["dataset"]].declaration, config["data_root"]))
        jobs.append(PretrainJob(source=pretraining.source, key=key, config=pretraining.config,
                                trial_key=job_trial_key(pretraining.source, key, pretraining.config)))
    trials, search = [], None
    if spec.searcher.type == "grid":
        trials = [PlannedTrial(trial_key=f"{c.name}-s{seed}", config_name=c.name, config={**c.config, "seed": seed})
                  for c in spec.configurations for seed in spec.seeds]
    else:
        search = SearchPlan(variants=[dict(v) for v in spec.variants],
                            float_dims={k: list(v) for k, v in spec.float_dims.items()},
                            num_samples=spec.searcher.num_samples, base_config=spec.search_base_config())
    settings = spec.scheduler
    execution = Execution(
        scheduler=SchedulerPlan(type=settings.type, metric=settings.metric, mode=settings.mode,
                                grace_period=settings.grace_period, reduction_factor=settings.reduction_factor,
                                max_t=int(spec.search_base_config()["epochs"])),
        searcher=SearcherPlan(type=spec.searcher.type, seed=spec.searcher.seed, storage=spec.searcher.storage,
                              multivariate=spec.searcher.multivariate, constant_liar=spec.searcher.constant_liar),
        cpu=float(spec.resources.cpu), gpu=float(spec.resources.gpu), max_concurrent=spec.max_concurrent,
        max_failures=spec.max_failures, tracking=plan_tracking(spec.tracking, study_name or spec.name),
    )
    spec_yaml = spec.to_yaml()
    plan = Plan(
        study_name=study_name or spec.name,
        datasets=datasets_of(spec),
        pretrain_jobs=jobs, trials=trials, search=search, dropped=list(spec.dropped), execution=execution,
        tables=spec.tables, spec_yaml=spec_yaml, spec_sha256=sha256(spec_yaml), versions=package_versions(),
        created=time.time(),
    )
    return dataclasses.replace(plan, factories=factory_sources(plan))


def factory_sources(plan: Plan) -> dict:
    """Each model factory (module:function) the plan builds, with its source file and that file's sha256."""
    import importlib

    from trainables.models import FACTORY_FAMILY

    factories = {}
    for settings in plan.planned_settings():
        family = family_of(settings["arch"])
        if family.module == FACTORY_FAMILY and settings["arch"] not in factories:
            path, digest = importlib.import_module(family.module).source(settings["arch"])
            factories[settings["arch"]] = {"source": path, "sha256": digest}
    return factories

def plan_tracking(tracking: TrackingSpec, study_name: str) -> TrackingSpec:
    """The study file's trackers with their defaults filled in: the MLflow experiment and W&B project are named
    after the study (`study run --name`)."""
    mlflow, wandb = tracking.mlflow, tracking.wandb
    if mlflow is not None and mlflow.experiment is None:
        mlflow = dataclasses.replace(mlflow, experiment=study_name)
    if wandb is not None and wandb.project is None:
        wandb = dataclasses.replace(wandb, project=study_name)
    return TrackingSpec(mlflow=mlflow, wandb=wandb, tensorboard=tracking.tensorboard)


def pretrain_key(config: dict, data: str) -> str:
    """Same key, same encoder: an artifact made by any study with this key is reused. `data`: the fingerprint of
    the job's dataset's content.

    Unset optional settings (None), and settings added since the first plans while at their default, are left
    out too, so a new setting does not change old keys.
    """
    shaping = {k: v for k, v in config.items() if k not in EXECUTION_ONLY and k not in DERIVED and v is not None
               and not (k in LATER and _same(v, LATER[k]))}
    return hashlib.sha256(json.dumps([shaping, data], sort_keys=True).encode()).hexdigest()[:16]


def _same(value, default) -> bool:
    return list(value) == list(default) if isinstance(default, tuple) else value == default


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    from importlib import metadata as package_metadata

    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def optuna_storage_url(plan: Plan, storage, name: str) -> str | None:
    """Where a search's Optuna study lives: the study file's `searcher.storage`, else an SQLite file in a local
    study folder (`<study>/optuna.db`), else None (in memory). `storage` is the study's Storage."""
    if plan.execution.searcher.storage is None and storage is not None and storage.is_local:
        return f"sqlite:///{storage.path(name, 'optuna.db')}"
    return plan.execution.searcher.storage
