"""Check a study against its own plan, not against the backend's state.

The plan (`plan.json`, written before any trial starts) says which trials must run;
the stage folders and the driver's trial states say which did. Ray's experiment
state can be lost or truncated, and a resumed grid has been known to skip trials,
so after every run and resume the study checks that each planned trial ran exactly
once and says which did not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from study.plan import PretrainJob
from study.progress import ENDED_STATES
from study.results import StudyResults


@dataclass(frozen=True)
class Audit:
    missing: list = field(default_factory=list)  # planned trial keys with no ended trial
    duplicated: dict = field(default_factory=dict)  # trial key -> number of trial folders
    samples_ended: int | None = None  # searcher studies: ended samples
    samples_planned: int | None = None

    @property
    def incomplete(self) -> bool:
        """Something planned has not ended: `study resume` runs it."""
        short = self.samples_planned is not None and (self.samples_ended or 0) < self.samples_planned
        return bool(self.missing or short)

    @property
    def ok(self) -> bool:
        return not (self.incomplete or self.duplicated)

    def problems(self) -> list[str]:
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} planned trial(s) did not run to the end: {', '.join(self.missing)}")
        for key, count in sorted(self.duplicated.items()):
            lines.append(f"trial {key} ran {count} times (one folder each under its stage); the report counts each")
        if self.samples_planned is not None and (self.samples_ended or 0) < self.samples_planned:
            lines.append(f"{self.samples_ended} of {self.samples_planned} planned searcher samples ended")
        return lines


def audit_study(results: StudyResults) -> Audit:
    trials = results.trials
    ran = trials[trials["trial_id"].notna()] if not trials.empty else trials
    ended_keys = set(ran.loc[ran["status"].isin(ENDED_STATES), "trial_key"]) if not ran.empty else set()
    planned = [PretrainJob(**job).trial_key for job in results.plan.get("pretrain_jobs", [])]
    planned += [trial["trial_key"] for trial in results.plan.get("trials", [])]
    missing = [key for key in planned if key not in ended_keys]
    counts = ran.groupby("trial_key").size() if not ran.empty else {}
    duplicated = {key: int(n) for key, n in dict(counts).items() if n > 1}
    search = results.plan.get("search")
    if search is None:
        return Audit(missing=missing, duplicated=duplicated)
    main = ran[ran["stage"] == "main"] if not ran.empty else ran
    ended = int(main["status"].isin(ENDED_STATES).sum()) if not main.empty else 0
    return Audit(missing=missing, duplicated=duplicated, samples_ended=ended, samples_planned=search["num_samples"])
