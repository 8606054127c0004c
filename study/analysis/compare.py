"""`study report --compare OTHER`: two studies' tables side by side, row by row (A | B | B − A)."""

from __future__ import annotations

import pandas as pd

from study.analysis.significance import ALPHA, format_p, welch_t_test
from study.analysis.tables import METRIC_LABELS, METRIC_SOURCES, SIGNIFICANCE_METRIC, Summary, Table, format_cell
from study.errors import StudyError


# -- comparing two studies -------------------------------------------------------
def check_same_declarations(tables_a: list[Table], tables_b: list[Table], name_a: str, name_b: str) -> None:
    shape_a = [(t.name, [r.label for r in t.rows]) for t in tables_a]
    shape_b = [(t.name, [r.label for r in t.rows]) for t in tables_b]
    if shape_a != shape_b:
        raise StudyError(f"--compare: studies {name_a!r} and {name_b!r} declare different tables "
                         f"(names and row labels must be equal): {shape_a} vs {shape_b}")


def compare_grid(table_a: Table, table_b: Table, name_a: str, name_b: str) -> tuple[list[str], list[list[str]]]:
    """One line per row and metric: A | B | B − A, and Welch's test on the final val mIoU line."""
    headers = ["row", "metric", name_a, name_b, f"difference ({name_b} − {name_a})", "differs? (Welch)"]
    cells = []
    for row_a, row_b in zip(table_a.rows, table_b.rows):
        for metric in table_a.columns:
            a, b = row_a.summaries[metric], row_b.summaries[metric]
            difference = f"{b.mean - a.mean:+.4f}" if a.n and b.n else "–"
            verdict = _compare_verdict(a, b) if metric == SIGNIFICANCE_METRIC else ""
            cells.append([row_a.label, METRIC_LABELS[metric], format_cell(row_a, metric), format_cell(row_b, metric),
                          difference, verdict])
    return headers, cells


def _compare_verdict(a: Summary, b: Summary) -> str:
    p = welch_t_test(a.values, b.values)
    if p is None:
        return "not testable (one seed)" if a.n and b.n else "not testable (no finished trial)"
    return f"{'yes' if p < ALPHA else 'no'} ({format_p(p)})"


def compare_frame(table_a: Table, table_b: Table) -> pd.DataFrame:
    lines = []
    for row_a, row_b in zip(table_a.rows, table_b.rows):
        for metric in METRIC_SOURCES:
            a, b = row_a.summaries[metric], row_b.summaries[metric]
            lines.append({"table": table_a.name, "row": row_a.label, "metric": metric, "a_mean": a.mean,
                          "a_std": a.std, "a_n": a.n, "b_mean": b.mean, "b_std": b.std, "b_n": b.n,
                          "difference": b.mean - a.mean,
                          "p_value": welch_t_test(a.values, b.values) if metric == SIGNIFICANCE_METRIC else None})
    return pd.DataFrame(lines)
