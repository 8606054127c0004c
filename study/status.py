"""`study status`: trials by state and the best so far, from the shared results loader."""

from __future__ import annotations

import math

from study.results import STATUSES, load_results
from study.storage import Storage


def status_summary(storage: Storage, name: str) -> dict:
    results = load_results(storage, name)
    trials = results.trials
    summary = {"study": name, "state": results.state, "storage": storage.uri(name), "stages": {}, "best": None,
               "errors": []}
    if trials.empty:
        return summary
    for stage, group in trials.groupby("stage", sort=False):
        counts = group["status"].value_counts().to_dict()
        summary["stages"][stage] = {status: int(counts.get(status, 0)) for status in STATUSES if counts.get(status)}
    search = results.plan.get("search")
    if search:
        started = int((trials["stage"] == "main").sum())
        summary["stages"].setdefault("main", {})["not_started"] = max(0, search["num_samples"] - started)
    main = trials[(trials["stage"] == "main") & trials["best_val_miou"].notna()] if "best_val_miou" in trials else trials[:0]
    if not main.empty:
        best = main.loc[main["best_val_miou"].astype(float).idxmax()]
        summary["best"] = {"trial_key": best["trial_key"], "best_val_miou": float(best["best_val_miou"]),
                           "best_epoch": int(best["best_epoch"]), "status": best["status"]}
    if "error" in trials:
        for _, row in trials[trials["error"].notna()].iterrows():
            summary["errors"].append({"trial_key": row["trial_key"], "error": row["error"]})
    return summary


def format_status(summary: dict) -> str:
    lines = [f"study {summary['study']}: {summary['state']}", f"  storage: {summary['storage']}"]
    for stage, counts in summary["stages"].items():
        text = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in counts.items()) or "no trials"
        lines.append(f"  {stage}: {text}")
    best = summary["best"]
    if best and not math.isnan(best["best_val_miou"]):
        lines.append(f"  best so far: {best['trial_key']} val mIoU {best['best_val_miou']:.4f} "
                     f"at epoch {best['best_epoch']} ({best['status']})")
    for error in summary["errors"]:
        lines.append(f"  errored {error['trial_key']}: {error['error']}")
    return "\n".join(lines)
