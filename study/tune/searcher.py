"""The search space as Optuna sees it, and the searcher of studies begun before the study kept a ledger.

Both classes live in an importable module because Tune pickles them by reference into the experiment state
that `study resume` restores: VariantSpace is what the live Optuna study asks (study/tune/optuna_live.py);
StudyOptunaSearch is what Tune restores in a study begun by a segstudy without the ledger (new studies run
study/tune/adapters.py's StudySearcher).
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.tune.search.optuna import OptunaSearch


@dataclass(frozen=True)
class VariantSpace:
    """Define-by-run space: one categorical over the valid combinations, then the float dims.

    Optuna's categorical distributions cannot change their choices between trials, so
    the valid (arch, pretrain, freeze, stem) combinations are offered as one fixed set.
    """

    variants: tuple[str, ...]
    float_dims: tuple[tuple[str, tuple[str, float, float]], ...]

    def __call__(self, trial) -> None:
        trial.suggest_categorical("variant", list(self.variants))
        for name, (kind, low, high) in self.float_dims:
            trial.suggest_float(name, float(low), float(high), log=(kind == "loguniform"))


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that ignores results of trial ids it never suggested.

    A trial restarted on resume can come back under an id the restored searcher does
    not know; stock OptunaSearch raises KeyError then, on every later restore too. The ids
    it suggested are kept in `suggested`, which OptunaSearch's own save/restore carries
    (it saves the searcher's attributes).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.suggested: set[str] = set()

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if config is not None:
            self.suggested.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.suggested:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.suggested:
            super().on_trial_complete(trial_id, result, error)
