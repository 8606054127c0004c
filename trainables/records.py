"""What a training run reports after each epoch: one typed record.

`fit` (engine.py) builds an `EpochRecord` per epoch; the Ray adapter reports it to Tune
(result.json), `study train` writes it to metrics.jsonl, and the study's record
(study/planning/record.py) derives the columns of epochs.parquet from these fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Validation fields: set on validated epochs only (null elsewhere in every record a reader sees).
VAL_PREFIX = "val_"


def metric(doc: str, default: Any = None) -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass
class EpochRecord:
    epoch: int = metric("epoch number, from 1")
    lr: float = metric("learning rate of the epoch's first iteration (the encoder's: the head's is x head_lr_mult)")
    train_loss: float = metric("training loss (the run's `loss`, class weights and aux head included; 255 "
                               "ignored), the mean of the epoch's batches weighted by their images")
    train_miou: float = metric("train mIoU of the epoch (one confusion matrix over the split; absent classes count 0)")
    train_miou_present: float = metric("train mIoU over the classes present in target or prediction")
    images_per_second: float = metric("training images per second in this epoch")
    epoch_seconds: float = metric("wall time of the epoch, validation included")
    validated: bool = metric("this epoch was validated", False)
    diverged: bool = metric("the training loss was not finite: the run stopped here", False)
    val_loss: float | None = metric("validation loss (as train_loss)")
    val_miou: float | None = metric("validation mIoU (one confusion matrix over the split)")
    val_miou_present: float | None = metric("validation mIoU over the classes present")
    val_pixel_accuracy: float | None = metric("validation pixel accuracy (255 ignored)")
    val_iou: list[float] | None = metric("validation IoU of each class (columns val_iou_0 … val_iou_{K-1})")
    best_val_miou: float = metric("highest validation mIoU so far (NaN before the first validation)", math.nan)
    best_epoch: int = metric("epoch of best_val_miou (0 before the first validation)", 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {field.name: field for field in dataclasses.fields(EpochRecord)}


def flat(record: dict) -> dict:
    """The record with `val_iou` spread into val_iou_0 … val_iou_{K-1}: one number per key, as Tune and
    trackers take metrics (and as result.json and metrics.jsonl hold them)."""
    values = {key: value for key, value in record.items() if key != "val_iou"}
    for index, iou in enumerate(record.get("val_iou") or ()):
        values[f"val_iou_{index}"] = iou
    return values


def format_record(record: dict) -> str:
    """One line per epoch for a terminal."""
    text = f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} mIoU {record['train_miou']:.4f}"
    if record["validated"]:
        text += f"  val loss {record['val_loss']:.4f} mIoU {record['val_miou']:.4f}"
    if record["diverged"]:
        text += "  DIVERGED (non-finite loss)"
    return text + f"  lr {record['lr']:.2e}  {record['images_per_second']:.0f} img/s"
