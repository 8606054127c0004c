"""Choosing a study's trial: `study best`, and which trial `load_model`, `predict` and `export-model` take.

Which trial is "best" (`study best`, and the default of `load_model`, `predict`, `export-model`):
among the main-stage trials that ended with stored weights (finished, or stopped early by the
scheduler; not diverged, errored, running or pending), the one with the highest value of the
metric (the lowest for a loss); ties go to the trial key that sorts first, so the choice never
depends on the order the trials ran in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from study.errors import StudyError
from study.models.checkpoints import (
    WHICH_DOC,
    check_which,
    checkpoint_epoch,
    checkpoint_val_miou,
    int_text,
    is_missing,
    outcome_metrics,
    weights_location,
)
from study.planning.record import (
    FLOAT,
    OUTCOME_COLUMNS,
    Stage,
    StudyState,
    TrialState,
    matching_mask,
    settings_from_row,
)
from study.planning.tables import report_tables

# Metrics a trial can be chosen by: the record's mIoU and loss outcomes; a loss is best when lowest.
BY_METRICS = {c.name: "min" if c.name.endswith("_loss") else "max" for c in OUTCOME_COLUMNS
              if c.type == FLOAT and c.name.endswith(("_miou", "_loss"))}
DEFAULT_BY = "best_val_miou"
# Trials that ended with a final checkpoint of usable weights: candidates for "best".
CANDIDATE_STATES = (TrialState.FINISHED.value, TrialState.EARLY_STOPPED.value)
SHOWN_KEYS = 12  # how many trial keys an error lists


def default_which(by: str) -> str:
    """The checkpoint that a metric describes: best_val_miou the best epoch's weights, final_* the last ones."""
    return "best" if by.startswith("best_") else "last"


# -- choosing a trial ------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    row: dict  # the trial's record row
    by: str
    mode: str  # max or min
    value: float
    candidates: int  # trials compared
    ties: tuple[str, ...]  # other trials with the same value (the first key in sort order won)
    scope: str  # "study NAME" or "table T, row L"
    not_ended: tuple[str, ...] = ()  # "key (status)" of trials still to end
    notes: tuple[str, ...] = field(default=())


def not_ended_trials(results) -> tuple[str, ...]:
    trials = results.trials
    if trials.empty:
        return ()
    pending = trials[~trials["status"].isin([s.value for s in TrialState if s.ended])]
    return tuple(f"{row.trial_key} ({row.status})" for row in pending.itertuples())


def running_note(results) -> tuple[str, ...]:
    """A line saying which trials have not ended, while the study is not finished."""
    waiting = not_ended_trials(results)
    if results.state == StudyState.FINISHED or not waiting:
        return ()
    shown = ", ".join(waiting[:SHOWN_KEYS]) + (", ..." if len(waiting) > SHOWN_KEYS else "")
    return (f"study {results.name} is {results.state.value}: {len(waiting)} trial(s) have not ended and are left "
            f"out ({shown}); chosen among the trials that ended",)


def choose_best(results, by: str = DEFAULT_BY, table: str | None = None, row: str | None = None) -> Choice:
    """The best trial of the study, or of one row of a declared table (that row's best seed)."""
    if by not in BY_METRICS:
        raise StudyError(f"--by: unknown metric {by!r}; known: {', '.join(BY_METRICS)}")
    trials = results.trials
    main = trials[trials["stage"] == Stage.MAIN.value] if not trials.empty else trials
    scope = f"study {results.name}"
    if table is not None or row is not None:
        main, scope = _row_trials(results, main, table, row)
    if main.empty:
        raise StudyError(f"{scope} has no main-stage trial")
    ordered = ranked_candidates(main, by)
    if ordered.empty:
        counts = main["status"].value_counts()
        described = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items())
        raise StudyError(f"{scope} has no finished trial with stored weights and a {by} yet ({described})")
    best = ordered.iloc[0]
    value = float(best[by])
    ties = tuple(str(k) for k in ordered["trial_key"].iloc[1:][ordered[by].iloc[1:].astype("float64") == value])
    return Choice(row=_row_dict(best), by=by, mode=BY_METRICS[by], value=value,
                  candidates=len(ordered), ties=ties, scope=scope, not_ended=not_ended_trials(results),
                  notes=running_note(results))


def ranked_candidates(trials, by: str = DEFAULT_BY):
    """The trials a best one is chosen from, best first: the rule of the module's docstring, used by `study best`,
    `load_model` and the report alike (ended in a CANDIDATE_STATES state, final weights stored, a finite `by`)."""
    if trials.empty:
        return trials
    values = trials[by].astype("float64")
    eligible = trials[trials["status"].isin(CANDIDATE_STATES) & trials["weights_final"].notna()
                      & values.map(math.isfinite).astype(bool)]
    key = eligible[by].astype("float64") * (-1 if BY_METRICS[by] == "max" else 1)
    order = eligible.assign(_key=key).sort_values(["_key", "trial_key"], kind="stable").index
    return eligible.loc[order]


def _row_trials(results, main, table: str | None, row: str | None):
    tables = report_tables(results.plan, main)
    names = [t.name for t in tables]
    if table is None:
        if len(tables) != 1:
            raise StudyError(f"--row needs --table: study {results.name} declares the tables {', '.join(names)}")
        declaration = tables[0]
    else:
        matches = [t for t in tables if t.name == table]
        if not matches:
            raise StudyError(f"--table: study {results.name} has no table {table!r}; its tables: {', '.join(names)}")
        declaration = matches[0]
    if row is None:  # every row of the table
        mask = None
        for declared in declaration.rows:
            one = matching_mask(main, declared.match)
            mask = one if mask is None else mask | one
        return (main[mask] if mask is not None else main.iloc[0:0]), f"table {declaration.name}"
    labels = [r.label for r in declaration.rows]
    if row not in labels:
        raise StudyError(f"--row: table {declaration.name} has no row {row!r}; its rows: "
                         + ", ".join(repr(label) for label in labels))
    declared = declaration.rows[labels.index(row)]
    return main[matching_mask(main, declared.match)], f"table {declaration.name}, row {row!r}"


def find_trial(results, key: str) -> dict:
    """A trial's record row by its key; unknown keys name the trials that have stored weights."""
    trials = results.trials
    hits = trials[trials["trial_key"] == key] if not trials.empty else trials
    if hits.empty:
        raise StudyError(f"--trial: study {results.name} has no trial {key!r}; {_with_weights(results)}")
    return _row_dict(hits.iloc[0])


def _with_weights(results) -> str:
    trials = results.trials
    usable = [] if trials.empty else \
        list(trials[trials["status"].isin(CANDIDATE_STATES) & trials["weights_final"].notna()]["trial_key"])
    if not usable:
        return "none of its trials has stored weights yet"
    shown = ", ".join(usable[:SHOWN_KEYS]) + (", ..." if len(usable) > SHOWN_KEYS else "")
    return f"trials with stored weights: {shown}"


def model_trial(results, trial: str | None = None, which: str = "best") -> tuple[dict, tuple[str, ...]]:
    """(record row, notes) of the trial whose model is wanted: `trial`, or the study's best by best_val_miou."""
    check_which(which)
    if trial is None:
        choice = choose_best(results)
        return choice.row, choice.notes
    row = find_trial(results, trial)
    status = row.get("status")
    if status not in [s.value for s in TrialState if s.ended]:
        raise StudyError(f"--trial: trial {trial} of study {results.name} is {status}: only ended trials have "
                         f"stored weights; {_with_weights(results)}")
    if status == TrialState.DIVERGED.value and which == "last":
        raise StudyError(f"--which last: trial {trial} diverged at epoch {int_text(row.get('diverged_epoch'))}, so its "
                         f"last weights are not finite; use --which best")
    weights_location(row, which)  # it must have them
    return row, ()


def _row_dict(series) -> dict:
    return {k: (None if is_missing(v) else v) for k, v in series.to_dict().items()}


# -- `study best` -------------------------------------------------------------------------------
SETTINGS_NOT_SHOWN = ("data_root", "cache_dir", "device", "num_threads", "fault_epoch", "fault_kind", "fault_once")


def describe_choice(choice: Choice) -> dict:
    """`study best --json`: the trial, which checkpoint, its settings, metrics and weights."""
    row = choice.row
    which = default_which(choice.by)
    return {
        "study": row.get("study"), "scope": choice.scope, "by": choice.by, "mode": choice.mode,
        "value": choice.value, "trial_key": row.get("trial_key"), "config_name": row.get("config_name"),
        "status": row.get("status"), "which": which, "which_means": WHICH_DOC[which],
        "epoch": checkpoint_epoch(row, which), "recorded_val_miou": checkpoint_val_miou(row, which),
        "weights": weights_location(row, which), "settings": settings_from_row(row), "metrics": outcome_metrics(row),
        "candidates": choice.candidates, "ties": list(choice.ties), "not_ended": list(choice.not_ended),
        "notes": list(choice.notes),
    }


def format_choice(description: dict) -> str:
    from trainables.config import TrainConfig

    defaults = TrainConfig().to_dict()
    settings = description["settings"]
    shown = {k: v for k, v in settings.items() if k not in SETTINGS_NOT_SHOWN and v != defaults.get(k)}
    metrics = description["metrics"]
    ties = description["ties"]
    key, which = description["trial_key"], description["which"]
    recorded = description["recorded_val_miou"]
    extreme = "highest" if description["mode"] == "max" else "lowest"
    lines = [
        f"best of {description['scope']} by {description['by']} ({extreme} of {description['candidates']} ended "
        f"trial(s)): {key}",
        f"  {description['by']}: {description['value']:.6f}",
        f"  configuration: {description['config_name']} ({description['status'].replace('_', ' ')})",
        f"  checkpoint: {which}, {description['which_means']} (epoch {description['epoch']})"
        + (f"; val mIoU recorded for it {recorded:.6f}" if recorded is not None else ""),
        f"  weights: {description['weights']}",
        "  settings (those not at TrainConfig's defaults; --json lists all): "
        + ", ".join(f"{k} {_text(v)}" for k, v in shown.items()),
        "  metrics: " + ", ".join(f"{k} {_text(v)}" for k, v in metrics.items() if v is not None),
    ]
    if ties:
        lines.append(f"  tied with {', '.join(ties)} (the trial key that sorts first wins)")
    lines += [f"note: {note}" for note in description["notes"]]
    lines.append(f"use it: study predict {description['study']} --trial {key} --which {which} --images ... --out ...; "
                 f"study export-model {description['study']} --trial {key} --which {which} --out model.pt2")
    return "\n".join(lines)


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)
