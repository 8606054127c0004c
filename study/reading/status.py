"""`study status`: trials by state, the best so far, errors and damage, from the shared results loader."""

from __future__ import annotations

import math
from collections import Counter

from study.folder.ledger import resume_promise
from study.planning.record import Stage, TrialState
from study.reading.results import StudyResults, load_results
from study.storage import Storage


def status_summary(storage: Storage, name: str) -> dict:
    return summarize(load_results(storage, name), storage.uri(name))


def summarize(results: StudyResults, where: str) -> dict:
    """Counts by stage and state, the best main trial so far, errors and notes: from the record's rows (no pandas)."""
    rows = results.rows
    summary = {"study": results.name, "state": results.state.value, "storage": where, "stages": {}, "best": None,
               "errors": [], "notes": list(results.notes), "driver": results.driver}
    for stage in (Stage.PRETRAIN.value, Stage.MAIN.value):
        counts = Counter(row["status"] for row in rows if row["stage"] == stage)
        if counts:
            summary["stages"][stage] = {state.value: counts[state.value] for state in TrialState if counts[state.value]}
    if results.plan.search is not None:
        started = sum(1 for row in rows if row["stage"] == "main" and row.get("trial_id") is not None)
        summary["stages"].setdefault("main", {})["not_started"] = max(0, results.plan.search.num_samples - started)
    scored = [row for row in rows if row["stage"] == "main" and _finite(row.get("best_val_miou"))]
    if scored:
        best = max(scored, key=lambda row: row["best_val_miou"])
        summary["best"] = {"trial_key": best["trial_key"], "best_val_miou": float(best["best_val_miou"]),
                           "best_epoch": int(best["best_epoch"]), "status": best["status"]}
    for row in rows:
        if row["status"] == TrialState.ERRORED.value:
            summary["errors"].append({"trial_key": row["trial_key"], "error": row.get("error") or "unknown error"})
    started = any(row["stage"] == Stage.MAIN.value and row.get("trial_id") is not None for row in rows)
    summary["resume"] = resume_promise(results.plan, results.ledger, started)
    return summary


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def listed_state(storage: Storage, name: str) -> str:
    """A study's state for `study list`, quickly: the lock and study.json (not the whole record)."""
    from study.folder.files import read_study_file
    from study.folder.lock import driver_alive
    from study.planning.record import StudyState

    if driver_alive(storage, name) is not None:
        return StudyState.RUNNING.value
    content, notes = read_study_file(storage, name)
    state = content.get("state")
    if state == StudyState.RUNNING.value:
        return f"{StudyState.INTERRUPTED.value} (driver process gone)"
    if state is None:
        return "unknown (study.json missing or damaged; `study status` derives it)" if notes or \
            storage.exists(name, "plan.json") else "damaged (no plan.json)"
    return state


def format_status(summary: dict) -> str:
    state = summary["state"]
    if summary.get("driver") and summary["driver"].get("pid"):
        driver = summary["driver"]
        state += f" (driver process {driver['pid']} on {driver['host']})"
    elif state == "interrupted":
        state += " (no driver is running it: `study resume` continues it)"
    lines = [f"study {summary['study']}: {state}", f"  storage: {summary['storage']}"]
    for stage, counts in summary["stages"].items():
        text = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in counts.items()) or "no trials"
        lines.append(f"  {stage}: {text}")
    best = summary["best"]
    if best and not math.isnan(best["best_val_miou"]):
        lines.append(f"  best so far: {best['trial_key']} val mIoU {best['best_val_miou']:.4f} "
                     f"at epoch {best['best_epoch']} ({best['status']})")
    for error in summary["errors"]:
        lines.append(f"  errored {error['trial_key']}: {error['error']}")
    if summary.get("resume"):
        lines.append(f"  a resume promises: {summary['resume']['promise']} ({summary['resume']['why']})")
    for note in summary["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
