"""Collecting a study file's problems, each with its key path, and the small helpers that word them."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from study.errors import SpecError
from study.names import RULE, is_name


class _Problems:
    """Collects every problem found, so a user fixes a file in one round."""

    def __init__(self, source: str, overridden: dict[str, str]):
        self.source = source
        self.overridden = overridden  # key path -> the --set that wrote it
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        line = f"{path}: {message}" if path else message
        for where, override in self.overridden.items():
            if path == where or path.startswith((where + ".", where + "[")):
                line += f" (from --set {override})"
        if line not in self.lines:
            self.lines.append(line)

    def raise_if_any(self) -> None:
        if self.lines:
            more = f" (and {len(self.lines) - 1} more problem(s) below)" if len(self.lines) > 1 else ""
            rest = [f"  {self.source}: {line}" for line in self.lines[1:]]
            raise SpecError("\n".join([f"{self.source}: {self.lines[0]}{more}", *rest]))

    def known_keys(self, mapping: dict, allowed: Sequence[str], path: str,
                   reasons: Mapping[str, str] | None = None) -> None:
        """Unknown keys, each with the closest known one (or why a known setting is not allowed here)."""
        for key in mapping:
            if key in allowed:
                continue
            if reasons and key in reasons:
                self.add(_join(path, key), f"not set here: {key} {reasons[key]}")
                continue
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of {list(allowed)}"
            self.add(_join(path, key), f"unknown key; {hint}")

    def mapping(self, value: Any, path: str, required: bool = False) -> dict:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.add(path, f"expected a mapping, got {_kind(value)}")
            return {}
        return value

    def integer(self, value: Any, path: str, minimum: int, maximum: int | None = None) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
                (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum:,}" if maximum is not None else f">= {minimum}"
            self.add(path, f"expected an integer {bounds}, got {_kind(value)}")
            return None
        return value

    def number(self, value: Any, path: str, minimum: float, strict: bool = False,
               maximum: float | None = None) -> float | None:
        number = _number_or_none(value)
        if number is None or not math.isfinite(number) or number < minimum or (strict and number == minimum) or \
                (maximum is not None and number > maximum):
            upper = f" and <= {maximum:g}" if maximum is not None else ""
            self.add(path, f"expected a number {'>' if strict else '>='} {minimum}{upper}, got {_kind(value)}")
            return None
        return number

    def choice(self, value: Any, allowed: Sequence[str], path: str) -> str | None:
        if not isinstance(value, str) or value not in allowed:
            self.add(path, f"expected one of {list(allowed)}, got {_kind(value)}{_suggest(value, allowed)}")
            return None
        return value

    def name(self, value: Any, path: str, what: str) -> str | None:
        if not is_name(value):
            self.add(path, f"expected {what} of {RULE}, got {_kind(value)}")
            return None
        return value



def _number_or_none(value: Any) -> float | None:
    # PyYAML reads 1e-3 (no dot) as a string: accept what float() reads, as the user means a number.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _label(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _suggest(value: Any, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=1) if isinstance(value, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__} {value!r}"[:80]
    return repr(value)[:80]
