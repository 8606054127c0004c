"""The tables a study's report shows: the study file's `tables:` (kept in the plan), or a default.

A grid study without declared tables gets one row per configuration; a search gets one row per
trial, best first, since a searcher samples each configuration with its own numbers (its trials
are not seeds of one row). `study report` builds these tables and `study best --table T --row L`
chooses within them, so both read them from here.
"""

from __future__ import annotations

from study.planning.spec import TABLE_COLUMNS, RowSpec, TableSpec


def report_tables(plan, main_trials) -> list[TableSpec]:
    """The declared tables of `plan`; without any, the default tables over `main_trials` (the record's
    main-stage trials, a DataFrame of the record's columns)."""
    if plan.tables:
        return list(plan.tables)
    if plan.search is not None and not main_trials.empty:
        ranked = main_trials.sort_values("best_val_miou", ascending=False, na_position="last")
        return [TableSpec(name="trials", title="All trials, best first", columns=TABLE_COLUMNS,
                          rows=tuple(RowSpec(label=f"{row.config_name}, lr {row.lr:.3g}",
                                             match={"trial_key": row.trial_key}) for row in ranked.itertuples()))]
    names = list(dict.fromkeys(main_trials["config_name"].dropna())) if "config_name" in main_trials else []
    return [TableSpec(name="configurations", title="All configurations", columns=TABLE_COLUMNS,
                      rows=tuple(RowSpec(label=str(n), match={"config_name": n}) for n in names))]
