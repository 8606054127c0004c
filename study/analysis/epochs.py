"""A study's epochs indexed by trial once, so that each table row's epochs are found without a scan."""

from __future__ import annotations

import numpy as np
import pandas as pd

IOU_PREFIX = "val_iou_"


# -- epochs by trial ----------------------------------------------------------------
class EpochIndex:
    """The study's epochs, grouped by trial id once, so that each row's epochs are found without a scan."""

    def __init__(self, epochs: pd.DataFrame):
        self.frame = epochs
        usable = not epochs.empty and "trial_id" in epochs and "epoch" in epochs
        self.positions = epochs.groupby("trial_id", sort=False).indices if usable else {}

    def grouped(self, groups, column: str) -> dict[int, pd.DataFrame]:
        """Per group of trial ids (by its index in `groups`): mean, min and max of `column` per epoch.

        Non-finite values (epochs without validation) are left out. One groupby for all groups.
        """
        if column not in self.frame:
            return {}
        positions, labels = [], []
        for number, trial_ids in enumerate(groups):
            for trial_id in trial_ids:
                found = self.positions.get(trial_id)
                if found is not None:
                    positions.append(found)
                    labels.append(np.full(len(found), number))
        if not positions:
            return {}
        where = np.concatenate(positions)
        values = pd.to_numeric(self.frame[column].iloc[where], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        epochs = self.frame["epoch"].iloc[where].to_numpy(dtype=float, na_value=np.nan)
        keep = np.isfinite(values) & np.isfinite(epochs)
        data = pd.DataFrame({"group": np.concatenate(labels)[keep], "epoch": epochs[keep].astype(int),
                             "value": values[keep]})
        stats = data.groupby(["group", "epoch"])["value"].agg(["mean", "min", "max"])
        return {int(group): part.droplevel(0) for group, part in stats.groupby(level=0)}

    def last_validated(self, trial_ids) -> pd.DataFrame:
        """The last validated epoch of each of these trials."""
        found = [self.positions[t] for t in trial_ids if t in self.positions]
        if not found or "val_miou" not in self.frame:
            return self.frame.iloc[0:0]
        rows = self.frame.iloc[np.concatenate(found)]
        validated = rows[pd.to_numeric(rows["val_miou"], errors="coerce").notna()]
        return validated.sort_values("epoch").groupby("trial_id", sort=False).tail(1)


def iou_columns(frame: pd.DataFrame) -> list[str]:
    """The per-class IoU columns of an epochs frame, in class order."""
    columns = [c for c in frame.columns if c.startswith(IOU_PREFIX) and c[len(IOU_PREFIX):].isdigit()]
    return sorted(columns, key=class_index)


def class_index(column: str) -> int:
    return int(column[len(IOU_PREFIX):])


def class_ious(epochs: EpochIndex, trial_ids) -> tuple[pd.Series, pd.Series]:
    """(mean, sample std) over these trials of each class's val IoU at each trial's last validated epoch, indexed by
    class id; empty when none has a validated epoch."""
    last = epochs.last_validated(trial_ids)
    ious = last[iou_columns(last)].apply(pd.to_numeric, errors="coerce").dropna(axis=1, how="all")
    if ious.empty:
        return pd.Series(dtype=float), pd.Series(dtype=float)
    ious.columns = [class_index(c) for c in ious.columns]
    return ious.mean(), ious.std()
