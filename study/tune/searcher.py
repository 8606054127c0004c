"""Optuna as Tune's searcher, made safe for resumed studies.

Both classes live in an importable module because Tune pickles the searcher by
reference into the experiment state that `study resume` restores.
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


def reconcile_optuna_study(optuna_storage, study_name: str, space: VariantSpace, metric: str, mode: str,
                           tune_trials: list[dict]) -> str:
    """Make the Optuna study hold each Tune trial exactly once, with its final state and value.

    `tune_trials`: {"trial_id", "config" (Tune's: variant and floats), "status", "value"} per
    ended trial. A driver killed mid-sweep and restored leaves Optuna trials RUNNING forever
    beside re-suggested copies; once the sweep has ended the study is rebuilt from Tune's
    trials, so dashboards and importance analysis count each trial once. Returns what was done.
    """
    import optuna

    def expected(trial: dict) -> tuple[dict, float | None]:
        params = {"variant": trial["config"]["variant"]}
        params.update({name: trial["config"][name] for name, _ in space.float_dims})
        value = trial["value"]
        ok = trial["status"] in ("finished", "early_stopped") and value is not None and value == value
        return params, (float(value) if ok else None)

    def signature(params: dict, value: float | None) -> str:
        return repr((sorted(params.items()), value))

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    have = study.get_trials(deepcopy=False)
    wanted = sorted(signature(*expected(t)) for t in tune_trials)
    present = sorted(signature(t.params, t.value if t.state.name == "COMPLETE" else None) for t in have)
    if wanted == present and all(t.state.is_finished() for t in have):
        return f"the Optuna study agrees with Tune ({len(have)} trials)"
    distributions = {"variant": optuna.distributions.CategoricalDistribution(list(space.variants))}
    for name, (kind, low, high) in space.float_dims:
        distributions[name] = optuna.distributions.FloatDistribution(float(low), float(high), log=kind == "loguniform")
    running = sum(1 for t in have if t.state == optuna.trial.TrialState.RUNNING)
    optuna.delete_study(study_name=study_name, storage=optuna_storage)
    rebuilt = optuna.create_study(study_name=study_name, storage=optuna_storage,
                                  direction="maximize" if mode == "max" else "minimize")
    for trial in tune_trials:
        params, value = expected(trial)
        state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        rebuilt.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, value=value, state=state,
            user_attrs={"tune_trial_id": trial["trial_id"], "status": trial["status"], "metric": metric}))
    return (f"rebuilt the Optuna study from Tune's {len(tune_trials)} trials (it held {len(have)}, "
            f"{running} left RUNNING by the interruption)")
