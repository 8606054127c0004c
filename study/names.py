"""The one rule for every name that becomes part of a path: studies, configurations, tables, pretraining sources.

Letters, digits and _ . + = -, starting with a letter or a digit (so never "", ".", "..", a hidden
name or the storage's own `_artifacts`), at most MAX_LENGTH characters (a trial key adds a
suffix, and file systems refuse names over 255 bytes).
"""

from __future__ import annotations

import re

from study.errors import StudyError

MAX_LENGTH = 120
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*\Z")
RULE = f"letters, digits and _ . + = - (starting with a letter or digit, at most {MAX_LENGTH} characters)"


def is_name(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_LENGTH and NAME.match(value) is not None


def check_name(value: object, what: str) -> str:
    """`value` when it follows the rule; else a StudyError naming `what` and the rule."""
    if not is_name(value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise StudyError(f"{what} {shown}: expected {RULE}")
    return value
