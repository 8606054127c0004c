"""After a sweep: the search's Optuna study rebuilt from the study's record (imports Optuna, not Ray).

The live searcher offers Optuna one `variant` categorical and Tune's view of each trial; once the sweep has
ended, the Optuna storage is made to say what the study's record says, each trial once, in the order the
searcher proposed them (trial_index), so a resumed study's Optuna history is an uninterrupted one's.
"""

from __future__ import annotations

import math
import sys

from study.planning.plan import Plan, optuna_storage_url
from study.storage import Storage


def sync_optuna_study(plan: Plan, storage: Storage, name: str, trials, epochs) -> None:
    """After the sweep: the Optuna study rebuilt from the study's record (reconcile_optuna_study).

    `trials`, `epochs`: the study's record (results.trials, results.epochs).
    """
    import optuna

    url = optuna_storage_url(plan, storage, name)
    if url is None:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    outcome = reconcile_optuna_study(optuna.storages.RDBStorage(url), name, plan, searched_trials(plan, trials, epochs))
    say(f"[optuna] {outcome}")


# Categorical settings every Optuna trial names in its user attributes, searched or not (besides the searched ones).
CATEGORICAL_SETTINGS = ("arch", "pretrain", "freeze")


def searched_trials(plan, trials, epochs) -> list[dict]:
    """Each ended trial of the sweep, from the study's record (results.trials and results.epochs), as the
    rebuilt Optuna study records it: its settings, how it ended, its final value and its value per epoch."""
    from study.planning.record import ENDED
    from study.reading.results import ABANDONED

    metric = plan.execution.scheduler.metric
    labels = plan.search.labels
    ended = trials[(trials["stage"] == "main") & trials["status"].isin([s.value for s in ENDED])
                   & (trials["error"].fillna("") != ABANDONED)]
    ended = ended.sort_values(["trial_index", "trial_key"], na_position="last")  # in the order they were proposed
    searched = []
    for row in ended.to_dict("records"):
        if row["config_name"] not in labels:
            continue
        own = epochs[epochs["trial_key"] == row["trial_key"]]
        per_epoch = {int(epoch): float(value) for epoch, value in zip(own["epoch"], own[metric]) if _finite(value)}
        searched.append({
            "trial_id": row["trial_id"], "trial_key": row["trial_key"], "config_name": row["config_name"],
            "trial_index": _int_or_none(row["trial_index"]),
            "status": row["status"], "categorical": dict(labels[row["config_name"]]),
            "settings": {k: row[k] for k in (*CATEGORICAL_SETTINGS, *sorted(labels[row["config_name"]]))
                         if k in row and isinstance(row[k], str)},
            "floats": {dim: float(row[dim]) for dim in plan.search.float_dims},
            "value": float(row[f"final_{metric}"]) if _finite(row.get(f"final_{metric}")) else None,
            "per_epoch": per_epoch,
        })
    return searched


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):  # null (pandas' NA)
        return None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def reconcile_optuna_study(optuna_storage, study_name: str, plan, searched: list[dict]) -> str:
    """Make the Optuna study hold each trial of the sweep exactly once, as the study's record says it ended.

    The live searcher offers one `variant` categorical (Optuna's categorical choices cannot depend on other
    parameters, so the valid combinations are one fixed set), and Tune tells it every ended trial as COMPLETE
    (ASHA's stops too); a killed and restored driver leaves trials RUNNING forever beside re-suggested copies.
    Once the sweep has ended, the study is rebuilt from the record: each categorical dimension its own
    parameter (so `optuna.importance.get_param_importances` separates them), trials stopped by ASHA PRUNED
    with their value per epoch, diverged and errored trials FAIL; user attributes trial_key, config_name,
    status and each categorical setting; the Optuna version and the sampler's arguments as study attributes.
    Returns what was done.
    """
    import optuna

    search = plan.search
    dims = sorted({key for variant in search.variants for key in variant})
    distributions = {dim: optuna.distributions.CategoricalDistribution(
        list(dict.fromkeys(variant[dim] for variant in search.variants))) for dim in dims}
    for name, (kind, low, high) in search.float_dims.items():
        distributions[name] = optuna.distributions.FloatDistribution(float(low), float(high), log=kind == "loguniform")
    states = {"finished": optuna.trial.TrialState.COMPLETE, "early_stopped": optuna.trial.TrialState.PRUNED}

    def expected(trial: dict) -> dict:
        state = states.get(trial["status"], optuna.trial.TrialState.FAIL)
        value = trial["value"]
        if state == optuna.trial.TrialState.PRUNED and trial["per_epoch"]:
            value = trial["per_epoch"][max(trial["per_epoch"])]  # as Optuna records a pruned trial: its last value
        if value is None and state == optuna.trial.TrialState.COMPLETE:
            state = optuna.trial.TrialState.FAIL  # Optuna's word for a trial without a value
        if state == optuna.trial.TrialState.FAIL:
            value = None  # an errored or diverged trial may have validated before it failed: Optuna takes no value
        user_attrs = {"trial_key": trial["trial_key"], "config_name": trial["config_name"], "status": trial["status"],
                      "tune_trial_id": trial["trial_id"], "metric": plan.execution.scheduler.metric,
                      "trial_index": trial["trial_index"], **trial["settings"]}
        return {"params": {**{dim: trial["categorical"][dim] for dim in dims}, **trial["floats"]}, "state": state,
                "value": None if value is None else float(value), "intermediate_values": trial["per_epoch"],
                "user_attrs": user_attrs}

    def signature(params: dict, state, value, trial_key) -> str:
        return repr((sorted(params.items()), state.name, value, trial_key))

    searcher = plan.execution.searcher
    study_attrs = {"optuna_version": optuna.__version__, "planned_with_optuna": plan.versions.get("optuna"),
                   "sampler": {"class": "TPESampler", "seed": searcher.seed, "multivariate": searcher.multivariate,
                               "constant_liar": searcher.constant_liar},
                   "metric": plan.execution.scheduler.metric, "segstudy": "rebuilt from the study's record after the "
                   "sweep; the live searcher sampled one `variant` categorical"}
    wanted = [expected(trial) for trial in searched]
    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    have = study.get_trials(deepcopy=False)
    if [signature(w["params"], w["state"], w["value"], w["user_attrs"]["trial_key"]) for w in wanted] == \
            [signature(t.params, t.state, t.value, t.user_attrs.get("trial_key")) for t in have] \
            and study.user_attrs == study_attrs:
        return f"the Optuna study agrees with the study's record ({len(have)} trials)"
    running = sum(1 for t in have if t.state == optuna.trial.TrialState.RUNNING)
    optuna.delete_study(study_name=study_name, storage=optuna_storage)
    rebuilt = optuna.create_study(study_name=study_name, storage=optuna_storage,
                                  direction="maximize" if plan.execution.scheduler.mode == "max" else "minimize")
    for key, value in study_attrs.items():
        rebuilt.set_user_attr(key, value)
    for trial in wanted:
        rebuilt.add_trial(optuna.trial.create_trial(distributions=distributions, **trial))
    pruned = sum(1 for w in wanted if w["state"] == optuna.trial.TrialState.PRUNED)
    return (f"rebuilt the Optuna study from the study's record: {len(wanted)} trials ({pruned} pruned by ASHA), "
            f"each categorical setting its own parameter (it held {len(have)}, {running} left RUNNING by an "
            f"interruption)")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
