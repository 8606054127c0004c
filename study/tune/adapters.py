"""The searcher and scheduler Tune runs in a study's main stage: thin adapters over the stage's decisions.

Tune pickles both into the experiment's `tuner.pkl` (and the searcher into its periodic state) and
unpickles them on `study resume`; they therefore hold nothing but their stage's name (and the metric
Tune checks results for), and find this driver's decisions through `decisions.attached(stage)`, which
`run_stage` prepares before Tune starts: the ledger read, brought up to the record, the Optuna study
replayed (study/tune/decisions.py). Both live in an importable module, named in the pickle guard's
allowlist.
"""

from __future__ import annotations

import pickle

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from study.tune.decisions import attached
from trainables.trial import trial_dirname


class StudySearcher(Searcher):
    """Optuna TPE, asked and told through the study's ledger, which also limits how many run at once.

    Tune is told no metric: the decisions take it from the plan, and tell a trial's end by the ledger's last
    epoch, so a restored trial that returns at once (its end was recorded before the kill) is no error."""

    def __init__(self, stage: str):
        super().__init__(metric=None, mode=None)
        self.stage = stage

    def __getstate__(self) -> dict:
        return {"stage": self.stage, "_metric": self._metric, "_mode": self._mode}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return True  # the decisions limit it, from the ledger; Tune's ConcurrencyLimiter then only passes through

    def suggest(self, trial_id: str):
        return attached(self.stage).suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        attached(self.stage).report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        attached(self.stage).tell(trial_id, error)

    def save(self, checkpoint_path: str) -> None:
        # Tune's periodic copy holds no state: the ledger (decisions.json) is the searcher's state.
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"state": "decisions.json in the study folder"}, handle)

    def restore(self, checkpoint_path: str) -> None:
        pass  # run_stage attached the decisions, from the ledger, before Tune started


class StudyScheduler(FIFOScheduler):
    """FIFO or ASHA (plan.execution.scheduler), with the rungs and stops in the study's ledger. Like the searcher,
    it names no metric to Tune."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def __getstate__(self) -> dict:
        return {"stage": self.stage, "_metric": self._metric}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def on_trial_add(self, tune_controller, trial) -> None:
        attached(self.stage).add(trial.trial_id, trial.config)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decisions = attached(self.stage)
        stop = decisions.result(_key(trial), result.get("epoch"), result.get(decisions.metric),
                                bool(result.get("diverged")))
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        attached(self.stage).complete(_key(trial))

    def debug_string(self) -> str:
        return "segstudy's scheduler (FIFO or ASHA, its decisions in the study's ledger)"


def _key(trial) -> str:
    return trial_dirname(trial.config, trial.trial_id)
