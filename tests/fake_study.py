"""Study folders written as the service writes them, through its own writers, without training.

A fake trial's epochs are EpochRecords (trainables/records.py) with chosen val mIoUs; its
result.json lines are what the Ray adapter reports (trainables.trial.trial_report) plus the keys
Tune adds; its plan is a real Plan; what its driver saw goes through the real event log. So
status, report and export are tested through the real loader on the real layout.
"""

from __future__ import annotations

import json
import math
from contextlib import ExitStack
from pathlib import Path

from study.folder.events import COMPLETE, ERROR, RESULT, START, EventLog
from study.folder.files import write_study_file
from study.folder.lock import study_lock
from study.planning.plan import (
    PLAN_FILE,
    SPEC_FILE,
    Execution,
    Plan,
    PlannedTrial,
    SchedulerPlan,
    SearcherPlan,
    SearchPlan,
    sha256,
)
from study.planning.record import StudyState, TrialState
from study.planning.spec import RowSpec, TableSpec
from study.storage import Storage
from trainables.checkpoint import FINAL, save_weights, write_trial_json
from trainables.config import TrainConfig
from trainables.records import EpochRecord
from trainables.trial import search_trial_key, trial_report, variant_label

SPEC_YAML = "name: fake\n# the study file as run\n"
VAL_INTERVAL = 2
_HELD = ExitStack()  # driver locks held for "running" fake studies, until the test process ends


def fake_trial(config_name: str, seed: int, val_mious: list[float], *, arch: str = "fcn_resnet50",
               pretrain: str = "none", freeze: str = "none", lr: float = 1e-3, status: str = "finished",
               error: str | None = None, epochs_planned: int | None = None, diverge: bool = False,
               dataset: str = "pets", weights: dict | None = None) -> dict:
    """One main trial; `val_mious` are its val mIoU at epochs 2, 4, ... (no epochs: not started).

    `weights` (a state dict) gives it a final checkpoint holding them.
    """
    settings = TrainConfig(arch=arch, pretrain=pretrain if pretrain in ("none", "imagenet") else "none",
                           freeze="none", lr=lr, seed=seed, dataset=dataset, data_root=f"/data/{dataset}",
                           epochs=epochs_planned or VAL_INTERVAL * max(len(val_mious), 1),
                           val_interval=VAL_INTERVAL, batch_size=16).to_dict()
    settings.update(pretrain=pretrain, freeze=freeze)  # a source name, as a plan holds it
    return dict(config_name=config_name, seed=seed, val_mious=val_mious, settings=settings, status=status,
                error=error, diverge=diverge, weights=weights, trial_key=f"{config_name}-s{seed}")


def epoch_records(trial: dict) -> list[dict]:
    """The trial's EpochRecords (as dicts), as fit() makes them."""
    records, best, best_epoch = [], math.nan, 0
    seed, epochs = trial["seed"], VAL_INTERVAL * len(trial["val_mious"])
    for epoch in range(1, epochs + 1):
        record = EpochRecord(epoch=epoch, lr=trial["settings"]["lr"] * 0.98 ** (epoch - 1),
                             train_loss=1.0 / epoch + 0.01 * seed, train_miou=0.5 + 0.01 * epoch + 0.02 * seed,
                             train_miou_present=0.6, images_per_second=100.0, epoch_seconds=2.0)
        if trial["diverge"] and epoch == epochs:
            record.train_loss, record.diverged = math.nan, True
        elif epoch % VAL_INTERVAL == 0:
            miou = trial["val_mious"][epoch // VAL_INTERVAL - 1]
            record.validated, record.val_miou, record.val_loss = True, miou, 1.0 - miou + 0.001 * seed
            record.val_miou_present, record.val_pixel_accuracy = miou, 0.9
            record.val_iou = [miou + 0.1, miou - 0.1, miou]
            if not best_epoch or miou > best:
                best, best_epoch = miou, epoch
        record.best_val_miou, record.best_epoch = best, best_epoch
        records.append(record.to_dict())
    return records


def write_fake_study(root: Path, name: str, trials: list[dict], *, state: str = "finished",
                     search: dict | None = None, tables: tuple = ()) -> Storage:
    """The study folder; `search` ({"num_samples": N}) makes it a searcher study of these trials."""
    storage = Storage(root)
    folder = Path(storage.path(name))
    (folder / "main").mkdir(parents=True)
    search_plan = None
    if search is not None:
        variants = [{"arch": t["settings"]["arch"], "pretrain": t["settings"]["pretrain"]} for t in trials]
        search_plan = SearchPlan(variants=[dict(v) for v in {variant_label(v): v for v in variants}.values()],
                                 float_dims={"lr": ["loguniform", 1e-4, 3e-3]}, num_samples=search["num_samples"],
                                 base_config=trials[0]["settings"])
    plan = Plan(study_name=name, datasets={}, pretrain_jobs=[],
                trials=[] if search else [PlannedTrial(t["trial_key"], t["config_name"], t["settings"])
                                          for t in trials],
                search=search_plan, dropped=[],
                execution=Execution(scheduler=SchedulerPlan("fifo", "val_miou", "max", 1, 2, 4),
                                    searcher=SearcherPlan("optuna" if search else "grid", 0, None, True, True),
                                    cpu=1.0, gpu=0.0, max_concurrent=None, max_failures=1),
                tables=tuple(tables), spec_yaml=SPEC_YAML, spec_sha256=sha256(SPEC_YAML), versions={})
    storage.write_text(plan.to_json(), name, PLAN_FILE)
    storage.write_text(SPEC_YAML, name, SPEC_FILE)
    write_study_file(storage, name, StudyState(state), [])
    events = EventLog(storage, name)
    for index, trial in enumerate(trials):
        if not trial["val_mious"]:
            continue  # planned, not started
        trial_id = f"t{index:03d}"
        if search is not None:
            variant = variant_label({"arch": trial["settings"]["arch"], "pretrain": trial["settings"]["pretrain"]})
            trial["trial_key"], trial["config_name"] = search_trial_key(trial_id), variant
            config = {"variant": variant, "lr": trial["settings"]["lr"]}
        else:
            config = {"trial": {**trial["settings"], "trial_key": trial["trial_key"],
                                "config_name": trial["config_name"], "stage": "main"}}
        identity = {"trial_key": trial["trial_key"], "config_name": trial["config_name"], "stage": "main"}
        execution = {"node_id": "n1", "run_device": "cpu", "run_threads": 1}
        records, last_val = epoch_records(trial), {}
        lines = [{**trial_report(r, identity, execution, last_val), "trial_id": trial_id, "config": config,
                  "time_total_s": 2.0 * r["epoch"], "training_iteration": r["epoch"], "node_ip": "10.0.0.1",
                  "hostname": "node1"} for r in records]
        trial_dir = folder / "main" / trial["trial_key"]
        trial_dir.mkdir()
        if trial["weights"] is not None:
            checkpoint = trial_dir / "checkpoint_000001"
            checkpoint.mkdir()
            save_weights(checkpoint / "final.safetensors", trial["weights"])
            write_trial_json(checkpoint, {"kind": FINAL, "epoch": records[-1]["epoch"], "records": records,
                                          "identity": identity, "settings": trial["settings"]})
            lines[-1]["checkpoint_dir_name"] = checkpoint.name
        (trial_dir / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
        seen = {"stage": "main", "trial_id": trial_id, "trial_key": trial["trial_key"], "dir": trial["trial_key"]}
        events.add({**seen, "event": START})
        for record in records:
            events.add({**seen, "event": RESULT, "epoch": record["epoch"], "epochs": trial["settings"]["epochs"]})
        if trial["status"] == TrialState.ERRORED.value:
            events.add({**seen, "event": ERROR, "error": trial["error"]})
        elif trial["status"] in (TrialState.FINISHED.value, TrialState.EARLY_STOPPED.value, TrialState.DIVERGED.value):
            events.add({**seen, "event": COMPLETE, "state": trial["status"]})
    if state == StudyState.RUNNING.value:
        _HELD.enter_context(study_lock(storage, name))  # a live driver
    return storage


def table(name: str, rows: list[tuple[str, dict]], columns=("train_loss", "train_miou", "val_loss", "val_miou"),
          title: str | None = None) -> TableSpec:
    """A declared table, as a study file's `tables` entry is validated into."""
    return TableSpec(name=name, title=title or name, columns=tuple(columns),
                     rows=tuple(RowSpec(label=label, match=match) for label, match in rows))
