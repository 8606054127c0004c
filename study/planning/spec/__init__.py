"""Study files: load one, apply `--set` overrides, validate all of it before Ray starts.

A study file is YAML. Only `datasets` and `train` are required; every other key has
the default shown.

```yaml
name: report                 # default: the file's stem. The study's folder name (`study run --name` overrides);
                             # letters, digits and _ . + = - (as are configuration and pretraining names)
description: "..."           # free text, default ""
datasets:                    # every dataset the study uses (main trials and pretraining), by name
  pets:                      # a preset by its name alone (pets, cityscapes, voc, ade20k), or `format:` and
    root: data/pets          # the keys of its layout (README, "Your own data"). root: a relative path
                             # resolves against the working directory
    env: SEGSTUDY_PETS_ROOT  # default SEGSTUDY_<NAME>_ROOT; when that variable is set it wins over root
                             # (precedence: environment > --set datasets.pets.root=... > the file)
    generate: {train: 32, val: 16, seed: 0}   # optional: generated data in the declared layout, which
                             # `study run` creates when the folder is missing or empty. Without `generate`
                             # the data must already exist.
train:                       # TrainConfig fields shared by every main trial (trainables/config.py lists them
  dataset: pets              # with their defaults). Not here: data_root (from `datasets`), num_classes (its
  image_size: [64, 64]       # classes), cache_dir (<data root>/.segstudy-cache), seed (from `seeds`).
  epochs: 30
configurations:              # explicit configurations: a unique name plus TrainConfig fields over `train`
  - {name: fcn_scratch, arch: fcn_resnet50, pretrain: none}
space:                       # searched settings, each one of:
  arch: {grid: [fcn_resnet50, segformer_b0]}   #   a plain value (fixed), {grid: [...]} (every value),
  pretrain: {choice: [none, cityscapes]}       #   {choice: [...]} (the searcher picks; optuna only),
  lr: {loguniform: [1.0e-4, 3.0e-3]}           #   {loguniform: [low, high]} or {uniform: [low, high]}
                             #   (number settings such as lr; optuna only). Not searchable: dataset, seed.
exclude:                     # partial configurations dropped from the cross product of `space`
  - {arch: fcn_resnet50, freeze: encoder}
seeds: 1                     # N (seeds 0..N-1) or a list of distinct seeds [0, 7]; every configuration runs
                             # once per seed. An optuna study takes exactly one seed: each sample is one trial.
searcher: {type: grid}       # grid, or {type: optuna, num_samples: 10, seed: 0, storage: null}: Optuna TPE
                             # (seed: the sampler's; storage: an Optuna storage URL, null = a sqlite file
                             # in the study folder). multivariate: true, constant_liar: true: TPESampler's
                             # arguments, pinned (Optuna 5's defaults). Grid ignores all but type.
scheduler: {type: fifo}      # fifo, or {type: asha, metric: val_miou, mode: max, grace_period: 1,
                             # reduction_factor: 2}. metric: val_miou | val_loss | train_miou | train_loss;
                             # mode defaults to min for a loss, else max. grace_period <= train.epochs.
resources: {cpu: 1, gpu: 0}  # per trial; gpu may be a fraction (0.25: four trials share one GPU)
max_concurrent: null         # trials at once; null = as many as the cluster's resources hold
max_failures: 2              # retries of a failed trial, each from its last checkpoint
pretraining:                 # sources a `pretrain` value may name, besides none, imagenet, coco and a file
  cityscapes:                # any TrainConfig fields over TrainConfig's defaults (not over `train`);
    dataset: cityscapes      # dataset is required (any declared one). arch and its encoder options (such
    epochs: 31               # as segformer_stem) come from the trials that use the source (one job per
                             # distinct encoder, so that it fits them) unless given here: then only trials
                             # with those may use it. export_encoder defaults to last; seed to 0; pretrain
                             # may be none, imagenet, coco or a file.
tables:                      # what `study report` shows; default: one row per configuration
  - name: fcn                # unique
    title: "FCN-ResNet50: from scratch vs ImageNet backbone"   # default: the name
    columns: [train_miou, val_miou, train_loss, val_loss]     # of train_loss, train_miou, val_loss, val_miou,
                             # best_val_miou; default [train_loss, train_miou, val_loss, val_miou]
    rows:                    # a row aggregates (over seeds) the main trials whose columns equal every match
      - {label: "FCN from scratch", match: {config_name: fcn_scratch}}   # value; each row must match a trial.
                             # match keys: any column of trials.parquet that says what a trial is:
                             # config_name, trial_key, stage, status and every setting (arch, pretrain,
                             # lr, optimizer, batch_size, image_height, seed, ...)
tracking:                    # also log each trial (pretraining jobs too) to trackers; default: none.
                             # Needs `pip install 'segstudy[tracking]'` (mlflow-skinny, wandb, tensorboard).
  mlflow:                    # one MLflow run per trial, named by its trial key
    tracking_uri: http://127.0.0.1:5000   # a tracking server, sqlite:///FILE.db or a folder (relative to the
                             # working directory); a server that does not answer is named before Ray starts
    experiment: report       # default: the study's name
  wandb: {project: report, entity: null, mode: online}   # project default: the study's name; entity default:
                             # the login's; online needs `wandb login`, offline writes run folders into each
                             # trial's folder (upload later with `wandb sync`)
  tensorboard: false         # true: event files with hparams in each trial's folder (tensorboard --logdir)
```

The main configurations of a grid study are the explicit `configurations` plus the
cross product of `space` (each over `train`); a cross-product configuration is named
by its grid values joined with "-" (e.g. `segformer_b0-cityscapes-encoder`). Built-in
rules: `imagenet` weights exist only for fcn_resnet50; `pretrain` is none, imagenet
or a `pretraining` source; `freeze: encoder` needs a pretrained encoder; a source whose
job pins arch/segformer_stem serves only trials with those; `segformer_stem` means
nothing for fcn_resnet50 (it becomes `paper`, and repeats are dropped). An explicit
configuration that breaks a rule, or repeats another's settings, is an error; a
combination of the cross product that breaks one, or that `exclude` names, is dropped,
and the plan records how many and why. Nothing left is an error ("empty search space").

An optuna study has no explicit `configurations`: the searcher samples one valid
combination of the categorical (fixed, grid, choice) dimensions (the plan lists them
all, so no invalid one is ever tried) plus the loguniform/uniform dimensions.

Every planned configuration, every pretraining job and (optuna) every variant at both
ends of each sampled range is built as a TrainConfig, so its own checks (lr > 0, ...)
run before Ray starts. Every problem names the file and the key path, e.g.
`search_spaces/x.yaml: configurations[2].lr: expected a number > 0, got -1.0`.
`--set KEY.PATH=VALUE` (e.g. `train.epochs=2`, `configurations[0].lr=5e-4`,
`searcher.num_samples=4`) changes the file's mapping before validation; the value is
read as YAML. The spec as run (`StudySpec.to_yaml`) is the file with the overrides.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from study.errors import SpecError
from study.planning.spec._overrides import _apply_overrides
from study.planning.spec._problems import _kind, _Problems
from study.planning.spec._schema import (
    DEFAULTS,
    MATCH_COLUMNS,
    MAX_TRIALS,
    NAME,
    TABLE_COLUMNS,
    Configuration,
    DatasetSpec,
    Dimension,
    MLflowSpec,
    PretrainSpec,
    ResourcesSpec,
    RowSpec,
    SchedulerSpec,
    SearcherSpec,
    StudySpec,
    TableSpec,
    TrackingSpec,
    WandbSpec,
)
from study.planning.spec._validate import _validate

# A study file is a page of settings: these limits stop huge documents and YAML alias bombs
# (a few lines that expand to billions of nodes) before they are built.
MAX_FILE_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_DEPTH = 32
MAX_NODES = 100_000


def load_spec(path: str | os.PathLike, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None,
              allow_large: bool = False) -> StudySpec:
    """Read, override and validate a study file; every problem is a SpecError naming file and key path."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(f"{path}: a study file of {path.stat().st_size:,} bytes; expected at most "
                            f"{MAX_FILE_BYTES:,}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such study file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: a folder, not a study file") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read the study file ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return loads(text, str(path), overrides, environ, allow_large)


def loads(text: str, source: str, overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None,
          allow_large: bool = False) -> StudySpec:
    """Validate the text of a study file; `source` names it in messages."""
    return spec_from_dict(parse_yaml(text, source), source, overrides, environ, allow_large)


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document, within the limits above; a SpecError naming the line otherwise."""
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(f"{source}: a study file of {len(text):,} characters; expected at most {MAX_FILE_BYTES:,}")
    try:
        _check_limits(text, source)
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{source}: not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)") from None


def _check_limits(text: str, source: str) -> None:
    """Refuse, from YAML's events alone, a document too deep or too large: its size counted as it would be once
    built, every alias (*name) counting the whole node it repeats, so nested aliases cannot hide an expansion."""
    aliases = 0
    sizes: dict[str, int] = {}  # anchor -> the size of its node, aliases inside it expanded
    open_nodes: list[list] = []  # [anchor, size so far] of each collection being read
    expanded = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = f" (line {event.start_mark.line + 1})" if event.start_mark else ""
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append([event.anchor, 1])
            if len(open_nodes) > MAX_DEPTH:
                raise SpecError(f"{source}: nested more than {MAX_DEPTH} levels deep{line}")
            size = 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, total = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = total
            if open_nodes:
                open_nodes[-1][1] += total
            continue  # its nodes were counted as they came
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise SpecError(f"{source}: more than {MAX_ALIASES} YAML aliases (*name){line}; "
                                f"a study file needs few, if any")
            size = sizes.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        else:
            continue
        if open_nodes and not isinstance(event, yaml.CollectionStartEvent):
            open_nodes[-1][1] += size
        expanded += size
        if expanded > MAX_NODES:
            what = "once its aliases are expanded " if aliases else ""
            raise SpecError(f"{source}: more than {MAX_NODES:,} YAML nodes {what}{line.strip()}; expected a page "
                            f"of settings")


def spec_from_dict(raw: Any, source: str, overrides: Sequence[str] = (),
                   environ: Mapping[str, str] | None = None, allow_large: bool = False) -> StudySpec:
    """Validate a study file's mapping; `source` names it in messages."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of study keys at the top level, got {_kind(raw)}")
    raw, overridden = _apply_overrides(copy.deepcopy(raw), overrides, source)
    problems = _Problems(source, overridden)
    spec = _validate(raw, problems, os.environ if environ is None else environ, tuple(overrides), allow_large)
    problems.raise_if_any()
    return spec


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)



__all__ = ["load_spec", "loads", "spec_from_dict", "StudySpec", "DatasetSpec", "Dimension", "Configuration",
           "PretrainSpec", "SearcherSpec", "SchedulerSpec", "ResourcesSpec", "RowSpec", "TableSpec", "TrackingSpec",
           "MLflowSpec", "WandbSpec", "DEFAULTS", "MATCH_COLUMNS", "TABLE_COLUMNS", "NAME", "MAX_TRIALS"]
