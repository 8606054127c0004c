"""`--set KEY.PATH=VALUE`: changes to a study file's mapping before it is validated."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import yaml

from study.errors import SpecError


def _apply_overrides(raw: dict, overrides: Sequence[str], source: str) -> tuple[dict, dict[str, str]]:
    """Apply `KEY.PATH=VALUE` strings; returns the mapping and {key path: override} for messages."""
    overridden = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = re.sub(r"\[(\d+)\]", r".\1", key.strip()).split(".")
        if not sep or not all(parts):
            raise SpecError(f"{source}: --set {override!r}: expected KEY.PATH=VALUE, e.g. train.epochs=2")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node: Any = raw
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdecimal() or int(part) >= len(node):
                    raise SpecError(f"{source}: --set {override!r}: {where} is not an index of a list of {len(node)}")
                part = int(part)
            elif not isinstance(node, dict):
                raise SpecError(f"{source}: --set {override!r}: {'.'.join(parts[:depth])} is a value, not a mapping")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
        overridden[re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", ".".join(parts))] = override
    return raw, overridden


