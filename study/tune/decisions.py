"""The main stage's decisions, each kept in the study's ledger (study/folder/ledger.py) as it is made.

`StageDecisions` is what the Tune-facing classes ask (study/tune/adapters.py): the searcher's asks and
tells, ASHA's stop-or-continue at each result, and which trials Tune holds in this driver. Every ask,
tell and rung record is written to the ledger before Tune acts on it, so a driver killed at any point
leaves the decisions it made behind, and no decision it did not make.

On resume, before Tune asks anything, `prepare_decisions` brings the ledger up to the study's record:
epochs a killed driver never saw (a trial trains on until Ray goes; its checkpoint carries them) are
decided now, in trial order, exactly as they would have been; a trial ASHA stops that way is stopped
and told; a trial that ended is told. A missing or damaged ledger is rebuilt the same way from the
record (one trial at a time, the order of its trial indices is the order of the asks and tells). Then
the live Optuna study is replayed from the journal (study/tune/optuna_live.py). Proposals that were
asked but that Tune never held (the driver died before Tune saved its state) are handed out again,
under the same trial key, to the next trials Tune asks for: none is dropped, none is asked twice. A
trial decided on whose record the kill destroyed (its only checkpoint cut short) keeps its decision and is
trained again once the search is done (`lost_proposals`).

`SEGSTUDY_KILL_DRIVER_AT` (ask:K, tell:K or stop:K) makes the driver SIGKILL itself right after the ledger
records that decision about trial index K: how the tests stop it in the microseconds between two
decisions, which no outside signal can hit.
"""

from __future__ import annotations

import math
import os
import signal

from study.folder.ledger import ASK, COMPLETE, FAIL, TELL, Ledger, LedgerTrial, decides, read_ledger, write_ledger
from study.planning.plan import Plan, optuna_storage_url
from study.planning.record import ENDED
from study.storage import Storage
from study.tune import asha
from trainables.trial import StudyContext, resolve_trial, search_trial_key, trial_dirname

KILL_VARIABLE = "SEGSTUDY_KILL_DRIVER_AT"
FINISHED = "FINISHED"  # ray.tune.search.Searcher.FINISHED: no more trials

_ATTACHED: dict[str, StageDecisions] = {}  # stage -> this driver's decisions (Tune's classes find them here)


def attach(stage: str, decisions: StageDecisions | None) -> None:
    _ATTACHED[stage] = decisions


def attached(stage: str) -> StageDecisions:
    decisions = _ATTACHED.get(stage)
    if decisions is None:
        raise RuntimeError(f"no decisions attached for stage {stage!r}: run_stage attaches them before Tune runs")
    return decisions


class StageDecisions:
    def __init__(self, storage: Storage, name: str, plan: Plan, ledger: Ledger, concurrency: int = 1):
        self.storage, self.name, self.plan, self.ledger = storage, name, plan, ledger
        self.concurrency = concurrency  # trials at once: asked and not told, of those Tune holds
        scheduler = plan.execution.scheduler
        self.metric, self.mode, self.asha = scheduler.metric, scheduler.mode, scheduler.type == "asha"
        self.marks = asha.milestones(scheduler.grace_period, scheduler.reduction_factor, scheduler.max_t) \
            if self.asha else []
        self.planned_order = {trial.trial_key: index for index, trial in enumerate(plan.trials)}
        self.live = None  # optuna_live.LiveSearch of a search, once replayed
        self.known: set[str] = set()  # trial keys Tune holds in this driver's run
        self.kill_at = os.environ.get(KILL_VARIABLE)

    # -- what Tune holds ------------------------------------------------------------------------
    def add(self, tune_id: str, config: dict) -> None:
        """Tune holds this trial (new, restored or retried)."""
        key = trial_dirname(config, tune_id)
        self.known.add(key)
        entry = self.ledger.by_key(key)
        if entry is None:
            index = config.get("trial_index", self.planned_order.get(key))
            entry = LedgerTrial(index=-1 if index is None else int(index), key=key)
            if self.plan.search is not None:  # a proposal the ledger never recorded: it was lost with its file
                entry.params = {k: v for k, v in config.items() if k not in ("trial_index", "trial_key")}
                self.ledger.journal.append([ASK, entry.index])
                self._broken(f"Tune holds trial {key}, which the ledger never recorded")
            self._insert(entry)
        if tune_id not in entry.tune_ids:
            entry.tune_ids.append(tune_id)

    # -- the scheduler ----------------------------------------------------------------------------
    def result(self, key: str, epoch: int, value, diverged: bool = False) -> bool:
        """A trial's result: True to stop it (ASHA). A result it decided on already (a trial re-reporting after a
        resume from an earlier checkpoint) decides nothing again."""
        entry = self.ledger.by_key(key)
        if entry is None or entry.stopped_epoch is not None:
            # a stopped trial whose record was lost trains again (lost_proposals) up to the epoch it was stopped at
            return entry is not None and (not isinstance(epoch, int) or epoch >= entry.stopped_epoch)
        if entry.ended is not None or not isinstance(epoch, int) or epoch <= entry.last_epoch:
            return False
        entry.last_epoch, entry.last_value, entry.diverged = epoch, _float(value), bool(diverged)
        if not self.asha:
            return False
        rungs_before = sum(len(r) for r in self.ledger.rungs.values())
        stop = asha.decide(self.ledger.rungs, self.marks, self.plan.execution.scheduler.reduction_factor,
                           self.plan.execution.scheduler.max_t, key, epoch, asha.signed(value, self.mode))
        early = stop and epoch < self.plan.execution.scheduler.max_t
        if early:
            entry.stopped_epoch = epoch
        if early or sum(len(r) for r in self.ledger.rungs.values()) != rungs_before:
            self.save()
        if early:
            self._kill_point("stop", entry.index)
        return stop

    def complete(self, key: str) -> None:
        """Tune ended the trial (its last epoch, a stop): ASHA records its last result, as Tune's does."""
        entry = self.ledger.by_key(key)
        if entry is None or not entry.last_epoch:
            return
        if self.asha:
            before = sum(len(r) for r in self.ledger.rungs.values())
            asha.record_end(self.ledger.rungs, self.marks, self.plan.execution.scheduler.reduction_factor, key,
                            entry.last_epoch, asha.signed(entry.last_value, self.mode))
            if sum(len(r) for r in self.ledger.rungs.values()) != before:
                self.save()
        if self.plan.search is None and entry.ended is None:
            entry.ended = _how_it_ended(entry, error=False)
            self.save()

    # -- the searcher -----------------------------------------------------------------------------
    def suggest(self, tune_id: str):
        """The next trial's config: a proposal Tune never held (asked before a kill), else a new ask; None while
        `concurrency` trials are asked and not told (the limit counts from the ledger, not from Tune's state,
        which can be older); FINISHED once every sample has been proposed."""
        if sum(1 for t in self.ledger.trials if t.ended is None and t.key in self.known) >= self.concurrency:
            return None
        orphan = next((t for t in self.ledger.trials if t.ended is None and t.stopped_epoch is None
                       and t.key not in self.known), None)
        if orphan is not None:
            orphan.tune_ids.append(tune_id)
            self.save()
            return self._config(orphan)
        index = len(self.ledger.trials)
        if index >= self.plan.search.num_samples:
            return FINISHED
        params = self.live.ask(index)
        entry = LedgerTrial(index=index, key=search_trial_key(tune_id), params=params, tune_ids=[tune_id])
        self.ledger.trials.append(entry)
        self.ledger.journal.append([ASK, index])
        self.save()
        self._kill_point("ask", index)
        return self._config(entry)

    def report(self, tune_id: str, result: dict) -> None:
        entry = self.ledger.by_tune_id(tune_id)
        if entry is not None and entry.ended is None and self.live is not None:
            self.live.report(entry.index, _float(result.get(self.metric)), result.get("epoch"))

    def tell(self, tune_id: str, error: bool) -> None:
        """Tune ended the trial: told to the searcher once, with the metric of the last epoch the scheduler saw
        (not Tune's last result, which for a restored trial can be an older epoch's)."""
        entry = self.ledger.by_tune_id(tune_id)
        if entry is None or entry.ended is not None:
            return  # not a proposal of this search, or told already
        if not (error or entry.last_epoch):  # it ended without an epoch (stopped before it started): it is
            self.known.discard(entry.key)  # still to run, and the next trial Tune asks for takes its proposal
            return
        self._end(entry, error)

    def _end(self, entry: LedgerTrial, error: bool) -> None:
        entry.ended = _how_it_ended(entry, error)
        if self.plan.search is not None:
            self.ledger.journal.append([TELL, entry.index])
            if self.live is not None:
                self.live.tell(entry.index, entry.ended)
        self.save()
        self._kill_point("tell", entry.index)

    @staticmethod
    def _config(entry: LedgerTrial) -> dict:
        return {**entry.params, "trial_index": entry.index, "trial_key": entry.key}

    # -- resume ----------------------------------------------------------------------------------
    def catch_up(self, rows: list[dict], epoch_rows: list[dict], stage: str) -> None:
        """Decide what the record holds and the ledger does not (see the module's docstring). `rows`,
        `epoch_rows`: the study's record (StudyResults.rows, .epoch_rows)."""
        started = [row for row in rows if row["stage"] == stage and row.get("trial_id") is not None]
        for row in sorted(started, key=lambda r: (_index(r, self.planned_order), str(r["trial_key"]))):
            entry = self.ledger.by_key(row["trial_key"]) or self._recorded_ask(row)
            if entry is None or entry.ended is not None:
                continue
            planned = row.get("epochs")
            for epoch, value, diverged in carried(epoch_rows, row["trial_key"], stage, self.metric):
                if epoch <= entry.last_epoch:
                    continue
                stop = self.result(entry.key, epoch, value, diverged)
                if stop or diverged:
                    break
            done = entry.diverged or (planned is not None and entry.last_epoch >= planned)
            if entry.stopped_epoch is not None or done:
                self._stopped_or_done(entry)
        # ASHA stopped it and the driver died before Tune did: the ledger holds the decision and its value, even
        # where the record lost the trial (its checkpoint cut short); lost_proposals trains it again afterwards
        for entry in self.ledger.trials:
            if entry.stopped_epoch is not None and entry.ended is None:
                self._stopped_or_done(entry)
        self.save()

    def _stopped_or_done(self, entry: LedgerTrial) -> None:
        self.complete(entry.key)
        if self.plan.search is not None:
            self._end(entry, error=False)

    def _recorded_ask(self, row: dict) -> LedgerTrial | None:
        """A started trial the ledger lacks (a rebuilt ledger): its ask, from its record."""
        if self.plan.search is None:
            entry = LedgerTrial(index=self.planned_order.get(row["trial_key"], -1), key=row["trial_key"],
                                tune_ids=[row["trial_id"]])
            self._insert(entry)
            return entry
        index = row.get("trial_index")
        if index is None or int(index) != len(self.ledger.trials):
            self._broken(f"trial {row['trial_key']} (index {index}) is not the next ask of the ledger")
            return None
        params = {"variant": row["config_name"], **{dim: float(row[dim]) for dim in self.plan.search.float_dims}}
        entry = LedgerTrial(index=int(index), key=row["trial_key"], params=params, tune_ids=[row["trial_id"]])
        self.ledger.trials.append(entry)
        self.ledger.journal.append([ASK, entry.index])
        return entry

    def _insert(self, entry: LedgerTrial) -> None:
        self.ledger.trials.append(entry)
        self.ledger.trials.sort(key=lambda t: t.index)

    def _broken(self, why: str) -> None:
        self.ledger.exact = False
        if why not in self.ledger.notes:  # each driver start catches up again
            self.ledger.notes.append(why)

    def save(self) -> None:
        write_ledger(self.storage, self.name, self.ledger)

    def _kill_point(self, kind: str, index: int) -> None:
        if self.kill_at == f"{kind}:{index}":
            os.kill(os.getpid(), signal.SIGKILL)


def _how_it_ended(entry: LedgerTrial, error: bool) -> dict:
    value = entry.last_value
    if error or entry.diverged or value is None or not math.isfinite(value):
        return {"state": FAIL, "value": None}
    return {"state": COMPLETE, "value": value}


def _float(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _index(row: dict, planned_order: dict) -> int:
    index = row.get("trial_index")
    if index is None or (isinstance(index, float) and math.isnan(index)):
        index = planned_order.get(row["trial_key"], 10**9)
    return int(index)


def carried(epoch_rows: list[dict], key: str, stage: str, metric: str) -> list[tuple[int, float, bool]]:
    """(epoch, the metric as the trial reported it, diverged) of a trial's recorded epochs. Between validations a
    trial reports its last validated values (trainables.trial.trial_report), NaN before the first; the record
    keeps those epochs without validation."""
    from trainables.records import VAL_PREFIX

    last = math.nan
    found = []
    for row in sorted((r for r in epoch_rows if r["trial_key"] == key and r["stage"] == stage),
                      key=lambda r: r["epoch"]):
        value = row.get(metric)
        if metric.startswith(VAL_PREFIX):
            if row.get("validated"):
                last = math.nan if value is None else float(value)
            value = last
        found.append((int(row["epoch"]), math.nan if value is None else float(value), bool(row.get("diverged"))))
    return found


def lost_proposals(plan: Plan, storage: Storage, name: str, rows: list[dict]) -> list[dict]:
    """The search's proposals that the ledger decided on but whose record holds no end (a checkpoint cut short as
    its driver was killed, with no result.json yet): as grid trials ({TrainConfig fields, trial_key, config_name,
    stage}) to run again under their keys. Their training is the same (the same settings and seed), their
    decisions stand: ASHA stops each at its recorded epoch and the searcher is not told twice."""
    ledger, _ = read_ledger(storage, name)
    if ledger is None or plan.search is None:
        return []
    ended_states = {state.value for state in ENDED}
    ended = {row["trial_key"] for row in rows if row["stage"] == "main" and row.get("trial_id") is not None
             and row["status"] in ended_states}
    context = StudyContext(base=dict(plan.search.base_config), variants=plan.search.labels)
    lost = []
    for entry in ledger.trials:
        if entry.ended is None or entry.index < 0 or entry.key in ended:
            continue
        identity, settings = resolve_trial(StageDecisions._config(entry), context)
        lost.append({**settings.to_dict(), **identity})
    return lost


def prepare_decisions(storage: Storage, name: str, plan: Plan, stage: str, results, concurrency: int,
                      legacy: bool = False) -> StageDecisions | None:
    """This driver's decisions for a stage, attached for Tune's classes: the ledger read (or begun, or rebuilt
    from the record), brought up to the record, and (a search) its Optuna study replayed. `results`: the study's
    record (StudyResults) when Tune restores the stage or the study has a ledger, else None. None: the stage
    decides nothing (pretraining, a grid without ASHA), or `legacy`: Tune's restored experiment was begun by a
    segstudy that kept no ledger (its own searcher and scheduler come back from its state, as they did then)."""
    from study.tune.optuna_live import LiveSearch

    if stage != "main" or not decides(plan) or legacy:
        attach(stage, None)
        return None
    ledger, notes = read_ledger(storage, name)
    if ledger is None:
        ledger = Ledger(stage=stage, searcher=plan.execution.searcher.type, scheduler=plan.execution.scheduler.type)
        if results is not None and any(r["stage"] == stage and r.get("trial_id") for r in results.rows):
            ledger.notes.append("rebuilt from the trials' record" + (f" ({notes[0]})" if notes else ""))
            if plan.execution.max_concurrent != 1:
                ledger.exact = False  # the order of asks and results of concurrent trials is not in the record
    decisions = StageDecisions(storage, name, plan, ledger, concurrency)
    if results is not None:
        decisions.catch_up(results.rows, results.epoch_rows, stage)
    if plan.search is not None:
        decisions.live = LiveSearch(plan, name, optuna_storage_url(plan, storage, name))
        differs = decisions.live.replay(ledger)
        if differs is not None:
            decisions._broken(differs)
    decisions.save()
    attach(stage, decisions)
    return decisions
