"""Study files: the schema, its constants and the typed sections a file is validated into."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import yaml

from study.names import NAME  # noqa: F401 (re-exported: the name rule of study files)
from study.planning.record import MATCHABLE
from trainables.config import CHOICES, FIELDS, TrainConfig  # noqa: F401 (CHOICES: re-exported)
from trainables.data.declaration import DataDeclaration

TOP_KEYS = ("name", "description", "datasets", "train", "configurations", "space", "exclude", "seeds", "searcher",
            "scheduler", "resources", "max_concurrent", "max_failures", "pretraining", "tables", "tracking")
DATASET_KEYS = ("root", "env", "generate")
GENERATE_DEFAULTS = {"train": 32, "val": 16, "seed": 0}
SEARCHER_KEYS = ("type", "num_samples", "seed", "storage", "multivariate", "constant_liar")
SCHEDULER_KEYS = ("type", "metric", "mode", "grace_period", "reduction_factor")
SCHEDULER_METRICS = ("val_miou", "val_loss", "train_miou", "train_loss")
RESOURCE_KEYS = ("cpu", "gpu")
TABLE_KEYS = ("name", "title", "columns", "rows")
TRACKING_KEYS = ("mlflow", "wandb", "tensorboard")
MLFLOW_KEYS = ("tracking_uri", "experiment")
WANDB_KEYS = ("project", "entity", "mode")
WANDB_MODES = ("online", "offline")
ROW_KEYS = ("label", "match")
TABLE_COLUMNS = ("train_loss", "train_miou", "val_loss", "val_miou", "best_val_miou")
DEFAULT_TABLE_COLUMNS = ("train_loss", "train_miou", "val_loss", "val_miou")
# The trial columns of study/reading/results.py that a table row may match on.
# The trial columns (study/planning/record.py) that a table row may match on.
MATCH_COLUMNS = tuple(MATCHABLE)
STAGES = ("main", "pretrain")
BUILTIN_PRETRAIN = ("none", "imagenet", "coco")


def is_weights_file(value) -> bool:
    """A `pretrain` value that names a weights file rather than a source: a path (it has a / or a suffix)."""
    return isinstance(value, str) and ("/" in value or value.endswith((".pth", ".pt", ".bin", ".safetensors")))
DIMENSION_KINDS = ("grid", "choice", "loguniform", "uniform")

# Upper bounds of sizes: beyond them a study cannot be meant (a typo, a hostile file). The planned
# trial count of a grid beyond MAX_TRIALS needs `study run --allow-large`.
MAX_SEEDS = 1000
MAX_SAMPLES = 100_000
MAX_TRIALS = 2000
MAX_GENERATED = 100_000
MAX_CPU_PER_TRIAL = 1024
MAX_GPU_PER_TRIAL = 64
MAX_CONCURRENT = 100_000
MAX_FAILURES = 1000

FIELD_TYPES = {name: str(field.type) for name, field in FIELDS.items()}
DEFAULTS = TrainConfig().to_dict()
# TrainConfig fields a study file does not set, and why: shown instead of "unknown key".
NOT_SETTINGS = {"data_root": "comes from datasets.<name>.root", "cache_dir": "is <data root>/.segstudy-cache",
                "num_classes": "comes from the dataset's classes (datasets.<name>)"}
NOT_PER_TRIAL = {**NOT_SETTINGS, "seed": "comes from `seeds`"}
NOT_SEARCHED = {**NOT_PER_TRIAL, "dataset": "is not searched: set it in `train` or per configuration"}
SETTINGS = tuple(name for name in FIELD_TYPES if name not in NOT_SETTINGS)
TRIAL_SETTINGS = tuple(name for name in SETTINGS if name not in NOT_PER_TRIAL)
SEARCHED_SETTINGS = tuple(name for name in SETTINGS if name not in NOT_SEARCHED)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str  # absolute, after the environment and --set overrides
    env: str  # the variable that overrides root
    generate: dict | None  # {train, val, seed} of generated data, or None: real data only
    declaration: DataDeclaration = None  # where its images and masks are, what a mask's values mean

    @property
    def num_classes(self) -> int:
        return self.declaration.num_classes


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # fixed | grid | choice | loguniform | uniform
    values: tuple = ()  # fixed, grid, choice
    low: float = 0.0  # loguniform, uniform
    high: float = 0.0

    @property
    def categorical(self) -> bool:
        return self.kind in ("fixed", "grid", "choice")


@dataclass(frozen=True)
class Configuration:
    name: str
    config: dict  # TrainConfig.to_dict(): data_root resolved; `pretrain` is the source name; seed set by the plan


@dataclass(frozen=True)
class PretrainSpec:
    source: str
    config: dict  # TrainConfig.to_dict() of one job: data_root resolved, arch/stem of its dependents


@dataclass(frozen=True)
class SearcherSpec:
    type: str = "grid"
    num_samples: int = 10
    seed: int = 0
    storage: str | None = None
    # Optuna's TPESampler: Optuna 5's defaults, pinned so a study reproduces across Optuna versions
    multivariate: bool = True
    constant_liar: bool = True


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "fifo"
    metric: str = "val_miou"
    mode: str = "max"
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class ResourcesSpec:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class MLflowSpec:
    tracking_uri: str  # a server (http[s]://host:port), a database (sqlite:///abs/path.db, ...) or a folder
    experiment: str | None = None  # None: the study's name (filled in by the plan)


@dataclass(frozen=True)
class WandbSpec:
    project: str | None = None  # None: the study's name (filled in by the plan)
    entity: str | None = None  # None: the W&B login's default entity
    mode: str = "online"  # online | offline (run folders in each trial's folder, for `wandb sync`)


@dataclass(frozen=True)
class TrackingSpec:
    """Where each trial is logged besides the study's record, by Tune's logger callbacks (study/tune/tracking.py)."""

    mlflow: MLflowSpec | None = None
    wandb: WandbSpec | None = None
    tensorboard: bool = False

    @property
    def any(self) -> bool:
        return bool(self.mlflow or self.wandb or self.tensorboard)

    @classmethod
    def from_dict(cls, data: dict) -> TrackingSpec:
        """From plan.json's `execution.tracking`; strict: an unknown or missing key raises KeyError/TypeError."""
        def exact(value: dict, keys: tuple, what: str) -> dict:
            if not isinstance(value, dict) or set(value) != set(keys):
                raise TypeError(f"{what}: expected the keys {list(keys)}, got {value!r}"[:200])
            return value

        exact(data, TRACKING_KEYS, "tracking")
        mlflow, wandb = data["mlflow"], data["wandb"]
        if not isinstance(data["tensorboard"], bool):
            raise TypeError(f"tracking.tensorboard: expected true or false, got {data['tensorboard']!r}")
        return cls(mlflow=MLflowSpec(**exact(mlflow, MLFLOW_KEYS, "tracking.mlflow")) if mlflow is not None else None,
                   wandb=WandbSpec(**exact(wandb, WANDB_KEYS, "tracking.wandb")) if wandb is not None else None,
                   tensorboard=data["tensorboard"])


@dataclass(frozen=True)
class RowSpec:
    label: str
    match: dict


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[RowSpec, ...]


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    datasets: dict  # name -> DatasetSpec
    train_settings: dict  # the `train` section, typed (a sparse set of TrainConfig fields)
    configurations: tuple  # Configuration, grid studies: explicit then cross product
    variants: tuple  # optuna studies: every valid combination of the categorical dims, {setting: value}
    float_dims: dict  # optuna studies: setting -> (loguniform | uniform, low, high)
    dropped: tuple  # "N dropped: why", for the cross product / the variants
    seeds: tuple
    searcher: SearcherSpec
    scheduler: SchedulerSpec
    resources: ResourcesSpec
    max_concurrent: int | None
    max_failures: int
    pretraining: tuple  # PretrainSpec, one per source and encoder (arch and its encoder options) trials need
    tables: tuple  # TableSpec
    raw: dict  # the file's mapping with the overrides applied
    overrides: tuple  # the --set strings applied
    source_path: str
    tracking: TrackingSpec = TrackingSpec()

    def to_yaml(self) -> str:
        """The spec as run: the file with its overrides and the dataset roots it resolved (absolute)."""
        raw = copy.deepcopy(self.raw)
        for name, dataset in self.datasets.items():
            raw["datasets"][name]["root"] = dataset.root  # a resumed study finds the same data from any folder
        if self.tracking.mlflow is not None:  # a relative sqlite file or folder, resolved like dataset roots
            raw["tracking"]["mlflow"]["tracking_uri"] = self.tracking.mlflow.tracking_uri
        header = [f"# study file as run: {self.source_path}"] + [f"# --set {o}" for o in self.overrides]
        return "\n".join(header) + "\n" + yaml.safe_dump(raw, sort_keys=False)

    def dataset_root(self, name: str) -> str:
        return self.datasets[name].root

    def generated(self, name: str) -> dict | None:
        return self.datasets[name].generate

    def search_base_config(self) -> dict:
        """Optuna: the settings every sample starts from; a variant and the sampled numbers go over it.

        Not a TrainConfig on its own (train may rely on a variant, e.g. freeze needs pretrain);
        every variant over it was validated at both ends of each sampled range.
        """
        dataset = self.train_settings.get("dataset", DEFAULTS["dataset"])
        root = self.dataset_root(dataset) if dataset in self.datasets else ""  # a grid's configurations name theirs
        return copy.deepcopy({**DEFAULTS, **self.train_settings, "data_root": root, "seed": self.seeds[0]})

    def used_datasets(self) -> list[str]:
        used = {c.config["dataset"] for c in self.configurations} | {p.config["dataset"] for p in self.pretraining}
        if self.searcher.type == "optuna":
            used.add(self.train_settings.get("dataset", DEFAULTS["dataset"]))
        return sorted(used)

