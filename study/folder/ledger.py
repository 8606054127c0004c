"""The main stage's ledger: every decision of its searcher and scheduler, as JSON, in `<study>/decisions.json`.

Tune saves its searcher (pickled) only at its periodic experiment checkpoint and never saves ASHA's rungs
(ray-project/ray#30838), so a resumed search would ask from an older random state and stop trials on
empty rungs. The ledger is the study's own record of the search instead, written whole (temporary file
and rename on a disk; one put on an object store) at every ask, every tell and every scheduler decision:

- each proposed trial, by its index (the order in which the searcher proposed it; a grid: the plan's
  order): its trial key, the searcher's proposal, the Tune trial ids it ran under, the last epoch and
  metric the scheduler saw, the epoch after which ASHA stopped it, and how it was told to the searcher;
- the journal: the searcher's asks and tells in the order they happened (study/tune/searcher.py
  replays it through a fresh sampler on resume: same seed, same asks and results, same state);
- ASHA's rungs: each milestone's recorded metric per trial key.

`study resume` reads it before anything new is asked (study/tune/decisions.py); the results loader reads
the scheduler's stops and the proposals still to run from it. Nothing in it is pickled. This module
reads and writes it and says what a study's resume promises; it imports neither Ray nor Optuna.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from study.errors import StudyError
from study.storage import Storage

LEDGER_FILE = "decisions.json"
FORMAT = 1
ASK, TELL = "ask", "tell"
COMPLETE, FAIL = "COMPLETE", "FAIL"  # how an ended trial was told to the searcher (Optuna's words)

# What a resume promises (`study status --json`: resume.promise).
EXACT, SAME_SEQUENCE, NO_PROMISE = "exact", "same_sequence", "none"


@dataclass
class LedgerTrial:
    index: int  # trial_index: the order in which the searcher proposed it (a grid: the plan's order)
    key: str  # its trial key: its folder in the stage
    params: dict | None = None  # the searcher's proposal as Optuna sampled it (variant, number settings); grid: None
    tune_ids: list = field(default_factory=list)  # Tune trial ids it ran under (a re-handed proposal: a new one)
    last_epoch: int = 0  # the last epoch the scheduler saw
    last_value: float | None = None  # the scheduler's metric at that epoch, as reported
    diverged: bool = False  # its last epoch's training loss was not finite
    stopped_epoch: int | None = None  # ASHA stopped it after this epoch
    ended: dict | None = None  # {"state": COMPLETE | FAIL, "value": float | None}, once it ended (searcher: told)


@dataclass
class Ledger:
    stage: str
    searcher: str  # grid | optuna
    scheduler: str  # fifo | asha
    trials: list = field(default_factory=list)  # LedgerTrial, by index (a grid: only those that started)
    journal: list = field(default_factory=list)  # [ASK | TELL, index], in the order the searcher saw them
    rungs: dict = field(default_factory=dict)  # ASHA milestone (epoch) -> {trial key: metric as ASHA compares it}
    exact: bool = True  # false once the promise is broken (an Optuna whose replay differs, a rebuilt ledger)
    notes: list = field(default_factory=list)  # what happened to the ledger itself, one line each

    def by_key(self, key: str) -> LedgerTrial | None:
        return next((t for t in self.trials if t.key == key), None)

    def by_tune_id(self, tune_id: str) -> LedgerTrial | None:
        return next((t for t in self.trials if tune_id in t.tune_ids), None)

    def by_index(self, index: int) -> LedgerTrial | None:
        return next((t for t in self.trials if t.index == index), None)

    @property
    def stopped(self) -> tuple[str, ...]:
        """Trial keys the scheduler stopped."""
        return tuple(sorted(t.key for t in self.trials if t.stopped_epoch is not None))

    def to_json(self) -> dict:
        data = asdict(self)
        data["format"] = FORMAT
        data["rungs"] = {str(milestone): dict(values) for milestone, values in self.rungs.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> Ledger:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT}")
        trials = [LedgerTrial(**trial) for trial in data["trials"]]
        if [t.index for t in trials] != sorted({t.index for t in trials}):
            raise ValueError("trial indices out of order or repeated")
        journal = [[str(kind), int(index)] for kind, index in data["journal"]]
        if any(kind not in (ASK, TELL) for kind, _ in journal):
            raise ValueError("unknown journal entry")
        rungs = {int(milestone): {str(k): _number(v) for k, v in values.items()}
                 for milestone, values in data["rungs"].items()}
        return cls(stage=str(data["stage"]), searcher=str(data["searcher"]), scheduler=str(data["scheduler"]),
                   trials=trials, journal=journal, rungs=rungs, exact=bool(data.get("exact", True)),
                   notes=[str(n) for n in data.get("notes", [])])


def _number(value) -> float:
    return math.nan if value is None else float(value)


def read_ledger(storage: Storage, name: str) -> tuple[Ledger | None, list[str]]:
    """(the ledger, or None when the study has none; damage found, named)."""
    if not storage.exists(name, LEDGER_FILE):
        return None, []
    where = storage.uri(name, LEDGER_FILE)
    try:
        return Ledger.from_json(storage.read_json(name, LEDGER_FILE)), []
    except StudyError as error:
        return None, [f"{error}; `study resume` rebuilds it from the trials' record"]
    except (ValueError, KeyError, TypeError) as error:
        return None, [f"{where} is damaged ({type(error).__name__}: {str(error)[:200]}); `study resume` rebuilds it "
                      f"from the trials' record"]


def write_ledger(storage: Storage, name: str, ledger: Ledger) -> None:
    """Whole, compact (it is rewritten at every decision), atomically (Storage.write_text)."""
    storage.write_text(json.dumps(ledger.to_json(), sort_keys=True, separators=(",", ":")), name, LEDGER_FILE)


def decides(plan) -> bool:
    """Whether the main stage has decisions to keep: a searcher proposes, or ASHA stops trials."""
    return plan.search is not None or plan.execution.scheduler.type == "asha"


def resume_promise(plan, ledger: Ledger | None, started: bool) -> dict:
    """What `study resume` promises about this study's search: {"promise": exact | same_sequence | none, "why"}.

    `started`: trials of the main stage have run (a study started before segstudy kept a ledger has none).
    """
    at_once = plan.execution.max_concurrent
    if not decides(plan):
        return {"promise": EXACT, "why": "a grid without a scheduler: every trial is the plan's and runs to its "
                                         "end, whatever interrupts the study"}
    if ledger is None and started:
        return {"promise": NO_PROMISE, "why": f"its search started without a ledger ({LEDGER_FILE}): planned "
                                              f"with an older segstudy, or the ledger was deleted before a resume "
                                              f"rebuilt it"}
    if ledger is not None and not ledger.exact:
        return {"promise": NO_PROMISE, "why": "; ".join(ledger.notes) or "the ledger was rebuilt"}
    searcher = "the searcher proposes" if plan.search is not None else "the plan's trials run"
    asha = plan.execution.scheduler.type == "asha"
    stops = " and ASHA stops the same trials at the same epochs" if asha else ""
    if at_once == 1:
        return {"promise": EXACT, "why": f"one trial at a time: killed at any point and resumed, {searcher} the "
                                         f"same configurations in the same order{stops}, as an uninterrupted run "
                                         f"with the same seed"}
    deciders = [name for name, present in (("the searcher", plan.search is not None), ("ASHA", asha)) if present]
    return {"promise": SAME_SEQUENCE,
            "why": f"{at_once or 'several'} trials at a time: which of them reports or ends first depends on timing, "
                   f"and {' and '.join(deciders)} {'decide' if len(deciders) > 1 else 'decides'} on that order; a "
                   f"resumed study decides what the uninterrupted one "
                   f"would for the same sequence of asks and results (which two uninterrupted runs need not share "
                   f"either)"}
