"""A study's own files (plan.json, spec.yaml, study.json), read with every damage named.

plan.json is the contract: missing or damaged, it is reported as exactly that, and `study
resume` rebuilds it from spec.yaml. spec.yaml is a copy of the study file as run, which the
plan also holds with its sha256: an edited or missing spec.yaml is named, and the plan's copy
is used. study.json (state and history) is a cache: damaged, it is named and its state is
derived from the trials and the lock.
"""

from __future__ import annotations

import hashlib
import time

from study.errors import StudyError
from study.planning.plan import PLAN_FILE, SPEC_FILE, Plan, PlanError, sha256
from study.planning.record import StudyState
from study.storage import Storage

STUDY_FILE = "study.json"


def read_plan(storage: Storage, name: str) -> Plan:
    storage.require_study(name)
    where = storage.uri(name, PLAN_FILE)
    if not storage.exists(name, PLAN_FILE):
        raise PlanError(f"study {name}: {where} is missing although the study's folder is there; "
                        f"`study resume {name}` rebuilds it from {SPEC_FILE}")
    try:
        text = storage.read_text(name, PLAN_FILE)
    except StudyError as error:
        raise PlanError(f"study {name}: {error}; `study resume {name}` rebuilds it from {SPEC_FILE}") from None
    try:
        return Plan.from_json(text, where)
    except PlanError as error:
        raise PlanError(f"study {name}: {error}; `study resume {name}` rebuilds it from {SPEC_FILE}") from None


def spec_copy_notes(storage: Storage, name: str, plan: Plan) -> list[str]:
    """What is wrong with the stored spec.yaml (the plan's own copy is used either way), and which model factories
    changed since the study was planned."""
    return _spec_copy_notes(storage, name, plan) + factory_notes(plan)


def factory_notes(plan: Plan) -> list[str]:
    """A model factory (arch module:function) whose source file is no longer what the plan recorded: trials that
    start from now on build the new code. The file is hashed, never imported."""
    notes = []
    for arch, recorded in sorted(plan.factories.items()):
        path = recorded.get("source", "")
        try:
            with open(path, "rb") as file:
                current = hashlib.sha256(file.read()).hexdigest()
        except OSError:
            current = None
        if current != recorded.get("sha256"):
            what = "is gone" if current is None else "was changed after the study was planned (its sha256 differs)"
            notes.append(f"the model factory {arch}'s source {path} {what}; trials that start from now on build "
                         f"what the module holds then")
    return notes


def _spec_copy_notes(storage: Storage, name: str, plan: Plan) -> list[str]:
    where = storage.uri(name, SPEC_FILE)
    if not storage.exists(name, SPEC_FILE):
        return [f"{where} is missing; the plan's copy of the study file as run is used"]
    try:
        text = storage.read_text(name, SPEC_FILE)
    except StudyError as error:
        return [f"{error}; the plan's copy of the study file as run is used"]
    if sha256(text) != plan.spec_sha256:
        return [f"{where} was changed after the study was planned (its sha256 differs from the plan's); "
                f"the plan's copy of the study file as run is used"]
    return []


def read_study_file(storage: Storage, name: str) -> tuple[dict, list[str]]:
    """(study.json's content, damage found): {} when it is missing or damaged."""
    try:
        content = storage.read_json(name, STUDY_FILE, default=None)
    except StudyError as error:
        return {}, [f"{error}; the study's state is derived from its trials"]
    if content is None:
        return {}, []
    if not isinstance(content, dict) or content.get("state") not in {s.value for s in StudyState} \
            or not isinstance(content.get("history", []), list):
        return {}, [f"{storage.uri(name, STUDY_FILE)} is damaged (no valid state); the study's state is derived "
                    f"from its trials"]
    return content, []


def write_study_file(storage: Storage, name: str, state: StudyState, history: list, **extra) -> None:
    storage.write_json({"state": state.value, "history": history, "updated": time.time(), **extra}, name, STUDY_FILE)
