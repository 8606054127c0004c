"""Check a study against its own plan, not against the backend's state.

The plan says which trials must run; the study's record (results.py, from the trial
folders) says which ran. Ray's experiment state can be lost or truncated, and a resumed
grid has been known to skip trials, so after every run and resume the study checks that
each planned trial ended exactly once and says which did not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from study.planning.plan import Plan
from study.planning.record import ENDED


@dataclass(frozen=True)
class Audit:
    missing: list = field(default_factory=list)  # planned trial keys with no ended trial
    duplicated: dict = field(default_factory=dict)  # trial key -> number of trial folders
    samples_ended: int | None = None  # searcher studies: ended samples
    samples_planned: int | None = None

    @property
    def complete(self) -> bool:
        """Everything planned has ended (`study resume` has nothing to run)."""
        short = self.samples_planned is not None and (self.samples_ended or 0) < self.samples_planned
        return not (self.missing or short)

    @property
    def ok(self) -> bool:
        return self.complete and not self.duplicated

    def problems(self) -> list[str]:
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} planned trial(s) did not run to the end: {', '.join(self.missing)}")
        for key, count in sorted(self.duplicated.items()):
            lines.append(f"trial {key} ran {count} times (one folder each under its stage); the report counts each")
        if self.samples_planned is not None and (self.samples_ended or 0) < self.samples_planned:
            lines.append(f"{self.samples_ended} of {self.samples_planned} planned searcher samples ended")
        return lines


def audit_study(plan: Plan, rows: list[dict]) -> Audit:
    """`rows`: the study's trial rows (StudyResults.rows)."""
    ended_states = {state.value for state in ENDED}
    ran = [row for row in rows if row.get("trial_id") is not None]
    ended = [row for row in ran if row["status"] in ended_states]
    ended_keys = {row["trial_key"] for row in ended}
    planned = [job.trial_key for job in plan.pretrain_jobs] + [trial.trial_key for trial in plan.trials]
    missing = [key for key in planned if key not in ended_keys]
    duplicated = {key: n for key, n in Counter(row["trial_key"] for row in ran).items() if n > 1}
    if plan.search is None:
        return Audit(missing=missing, duplicated=duplicated)
    samples = sum(1 for row in ended if row["stage"] == "main")
    return Audit(missing=missing, duplicated=duplicated, samples_ended=samples, samples_planned=plan.search.num_samples)
