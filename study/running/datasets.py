"""A plan's data, made ready and checked on the driver before Ray starts: generated datasets, the data check,
and the preprocessed caches."""

from __future__ import annotations

import sys
from pathlib import Path

from study.errors import StudyError
from study.planning.plan import DatasetPlan, Plan
from trainables.data import check_dataset, load_split, synth_declared
from trainables.data.declaration import DataDeclaration, preset
from trainables.errors import DatasetError


def generate_missing_datasets(datasets: dict[str, DatasetPlan]) -> None:
    """Create the generated datasets a study declares, when their folder is missing or empty.

    A dataset without `generate` is never replaced by generated data.
    """
    for name, dataset in datasets.items():
        root = Path(dataset.root)
        if dataset.generate is not None and not (root.is_dir() and any(root.iterdir())):
            generate = dataset.generate
            print(f"generating the synthetic {name} dataset in {root} "
                  f"({generate['train']} train, {generate['val']} val images)", file=sys.stderr, flush=True)
            synth_declared(_declaration(name, dataset), root, train=generate["train"], val=generate["val"],
                           seed=generate.get("seed", 0))


def check_datasets(plan: Plan, say) -> None:
    """The data check of every dataset the plan trains on, at each working resolution it uses: every problem of
    its masks named before Ray starts (a StudyError), every warning said. The check builds (or reuses) each
    split's cache, so trials on this node find their caches ready."""
    used = sorted({(config["dataset"], config["data_root"], tuple(config["image_size"]), config.get("cache_dir"))
                   for config in plan.configs()}, key=str)
    for name, root, image_size, cache_dir in used:
        try:
            report = check_dataset(plan.declaration(name), root, image_size, name=name, cache_dir=cache_dir)
        except DatasetError as error:
            raise StudyError(f"dataset {name} at {root}: {error}") from None
        for warning in report.get("warnings", []):
            say(f"warning: dataset {name}: {warning}")


def build_caches(plan: Plan) -> None:
    """The caches of the first-N sample subsets trials ask for (max_train_samples, max_val_samples), which the
    data check (whole splits) does not build."""
    needs = set()
    for config in plan.configs():
        common = (config["dataset"], config["data_root"], tuple(config["image_size"]), config.get("cache_dir"))
        for role, limit in (("train", config.get("max_train_samples")), ("val", config.get("max_val_samples"))):
            if limit is not None:
                needs.add((*common, role, limit))
    for name, root, image_size, cache_dir, role, max_samples in sorted(needs, key=str):
        load_split(plan.declaration(name), root, role, image_size, cache_dir, max_samples=max_samples)


def _declaration(name: str, dataset: DatasetPlan) -> DataDeclaration:
    return DataDeclaration.from_dict(dataset.declaration) if dataset.declaration else preset(name)
