"""Study files: the `tables` section, rows checked against the trials the study plans."""

from __future__ import annotations

import math
from typing import Any

from study.planning.record import BOOL, FLOAT, INT, MATCH_CHOICES, MATCHABLE, same_value, setting_values
from study.planning.spec._expand import _complete
from study.planning.spec._problems import _kind, _Problems
from study.planning.spec._schema import (
    DEFAULT_TABLE_COLUMNS,
    MATCH_COLUMNS,
    ROW_KEYS,
    TABLE_COLUMNS,
    TABLE_KEYS,
    RowSpec,
    TableSpec,
)


def _tables(value: Any, configurations: list, variants: list, float_dims: dict, train: dict, seeds: tuple,
            problems: _Problems, check_matches: bool = True) -> tuple[TableSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.add("tables", f"expected a list of tables, got {_kind(value)}")
        return ()
    # The main trials a row can match; for a search, sampled numbers and names can be anything.
    if configurations:
        candidates = [{**setting_values(c.config), "config_name": c.name, "trial_key": f"{c.name}-s{seed}",
                       "stage": "main", "seed": seed} for c in configurations for seed in seeds]
    else:
        candidates = [{**setting_values(_complete({**train, **v})), "stage": "main", "seed": seeds[0]}
                      for v in variants]
    # Known only once trials run: a sampled number, a search trial's key, a trial's status.
    unknowable = set(float_dims) | {"status"} | (set() if configurations else {"config_name", "trial_key"})
    tables, names = [], set()
    for index, entry in enumerate(value):
        path = f"tables[{index}]"
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping of name, title, columns and rows, got {_kind(entry)}")
            continue
        problems.known_keys(entry, TABLE_KEYS, path)
        name = entry.get("name")
        if name in names:
            problems.add(f"{path}.name", f"expected a table name not used before, got {_kind(name)}")
        elif problems.name(name, f"{path}.name", "a table name") is not None:  # it names the table's files
            names.add(name)
        title = entry.get("title", name if isinstance(name, str) else "")
        if not isinstance(title, str):
            problems.add(f"{path}.title", f"expected text, got {_kind(title)}")
        columns = entry.get("columns", list(DEFAULT_TABLE_COLUMNS))
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            problems.add(f"{path}.columns", f"expected a list of {list(TABLE_COLUMNS)}, got {_kind(columns)}")
            columns = []
        for column in columns:
            problems.choice(column, TABLE_COLUMNS, f"{path}.columns")
        rows = entry.get("rows")
        if not isinstance(rows, list) or not rows:
            problems.add(f"{path}.rows", f"expected a non-empty list of {{label, match}}, got {_kind(rows)}")
            rows = []
        specs = []
        for row_index, row in enumerate(rows):
            row_path = f"{path}.rows[{row_index}]"
            if not isinstance(row, dict):
                problems.add(row_path, f"expected a mapping of label and match, got {_kind(row)}")
                continue
            problems.known_keys(row, ROW_KEYS, row_path)
            label = row.get("label")
            if not isinstance(label, str) or not label:
                problems.add(f"{row_path}.label", f"expected the row's label, got {_kind(label)}")
            match = _match(problems.mapping(row.get("match"), f"{row_path}.match", required=True),
                           f"{row_path}.match", problems)
            if check_matches and match and not any(
                    all(k in unknowable or same_value(c[k], v) for k, v in match.items()) for c in candidates):
                problems.add(f"{row_path}.match", f"{match} matches no trial of this study")
            specs.append(RowSpec(label=str(label), match=match))
        tables.append(TableSpec(name=str(name), title=str(title), columns=tuple(columns), rows=tuple(specs)))
    return tuple(tables)


def _match(mapping: dict, path: str, problems: _Problems) -> dict:
    """The row's match, each value typed as its record column (study/planning/record.py)."""
    problems.known_keys(mapping, MATCH_COLUMNS, path)
    if not mapping:
        problems.add(path, f"expected at least one of {list(MATCH_COLUMNS)}")
    match = {}
    for key, value in mapping.items():
        if key not in MATCHABLE:
            continue
        where, kind = f"{path}.{key}", MATCHABLE[key].type
        if key in MATCH_CHOICES:
            typed = problems.choice(value, MATCH_CHOICES[key], where)
        elif kind == BOOL:
            typed = value if isinstance(value, bool) else \
                problems.add(where, f"expected true or false, got {_kind(value)}")
        elif kind == INT:
            typed = problems.integer(value, where, -(2**63))
        elif kind == FLOAT:
            typed = problems.number(value, where, -math.inf)
        elif isinstance(value, str):
            typed = value
        else:
            typed = problems.add(where, f"expected text, got {_kind(value)}")
        if typed is not None:
            match[key] = typed
    return match
