"""A plan's data, made ready on the driver before Ray starts: generated datasets and preprocessed caches."""

from __future__ import annotations

import sys
from pathlib import Path

from study.planning.plan import DatasetPlan, Plan
from trainables.data import SPLITS, load_split, synth_dataset


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
            synth_dataset(name, root, train=generate["train"], val=generate["val"], seed=generate.get("seed", 0))


def build_caches(plan: Plan) -> None:
    """Build each split's preprocessed cache once, on the driver, before Ray starts.

    Bad data fails fast with the dataset's own message, and trials on this node
    find their caches ready instead of building them side by side.
    """
    needs = set()
    for config in plan.configs():
        train_split, val_split = SPLITS[config["dataset"]]
        common = (config["dataset"], config["data_root"], tuple(config["image_size"]), config.get("cache_dir"))
        needs.add((*common, train_split, config.get("max_train_samples")))
        needs.add((*common, val_split, config.get("max_val_samples")))
    for dataset, root, image_size, cache_dir, split, max_samples in sorted(needs, key=str):
        load_split(dataset, root, split, image_size, cache_dir, max_samples=max_samples)
