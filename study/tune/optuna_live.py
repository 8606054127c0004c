"""The live Optuna study of a search, rebuilt at every driver start by replaying the ledger's journal.

Optuna leaves restoring a sampler to its user (optuna/optuna#3992). TPE is deterministic given its seed
and the asks and tells it sees, so a fresh TPESampler with the study's seed, shown the journal's asks and
tells in their order (study/folder/ledger.py), is in the state the killed driver's sampler was in: its
random state, the trials it knows, the asked-and-not-told trials that constant liar steers around. Each
replayed ask is checked against the proposal the journal recorded. One that differs (an Optuna or numpy
other than the one that proposed it) is named; the study is then rebuilt with the recorded proposals
(so Optuna's history stays the study's) and its promise becomes "none". Only Optuna's public API is used.
Replaying costs one ask per past trial: milliseconds each at the sizes a study runs.
"""

from __future__ import annotations

import math

from study.folder.ledger import ASK, COMPLETE, Ledger
from study.tune.searcher import VariantSpace


class LiveSearch:
    """The searcher's Optuna study: asks (a trial's proposal), reports and tells, by trial index."""

    def __init__(self, plan, study_name: str, storage_url: str | None):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "Trial N finished ..." per tell: the progress says it
        self.plan, self.study_name = plan, study_name
        self.storage = optuna.storages.RDBStorage(storage_url) if storage_url else None
        search = plan.search
        self.space = VariantSpace(tuple(search.labels), tuple((k, tuple(v)) for k, v in search.float_dims.items()))
        self.study = self._fresh_study()
        self.trials: dict = {}  # trial index -> optuna.Trial

    def _fresh_study(self):
        import optuna

        if self.storage is not None:
            try:
                optuna.delete_study(study_name=self.study_name, storage=self.storage)
            except KeyError:
                pass  # none yet
        searcher = self.plan.execution.searcher
        sampler = optuna.samplers.TPESampler(seed=searcher.seed, multivariate=searcher.multivariate,
                                             constant_liar=searcher.constant_liar)
        direction = "maximize" if self.plan.execution.scheduler.mode == "max" else "minimize"
        return optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=sampler,
                                   direction=direction)

    def ask(self, index: int, fixed: dict | None = None) -> dict:
        """Trial `index`'s proposal: {"variant": label, <number setting>: value, ...}. `fixed`: take these values
        instead of sampling them (the study's history keeps a proposal the sampler did not make now)."""
        if fixed is not None:
            self.study.enqueue_trial(fixed, skip_if_exists=False)
        trial = self.study.ask()
        self.space(trial)
        self.trials[index] = trial
        return dict(trial.params)

    def report(self, index: int, value, epoch: int) -> None:
        trial = self.trials.get(index)
        if trial is not None and isinstance(value, float) and math.isfinite(value):
            trial.report(value, epoch)

    def tell(self, index: int, ended: dict) -> None:
        import optuna

        state = optuna.trial.TrialState.COMPLETE if ended["state"] == COMPLETE else optuna.trial.TrialState.FAIL
        self.study.tell(self.trials[index], ended["value"] if ended["state"] == COMPLETE else None, state=state)

    def replay(self, ledger: Ledger) -> str | None:
        """Show the sampler the journal's asks and tells; None when every replayed ask proposed what the journal
        recorded, else what differed (the study is then rebuilt with the recorded proposals)."""
        differs = self._replay(ledger, verify=True)
        if differs is not None:
            self.study, self.trials = self._fresh_study(), {}
            self._replay(ledger, verify=False)
        return differs

    def _replay(self, ledger: Ledger, verify: bool) -> str | None:
        for kind, index in ledger.journal:
            trial = ledger.by_index(index)
            if kind == ASK:
                params = self.ask(index, fixed=None if verify else trial.params)
                if verify and params != trial.params:
                    return (f"replaying the search, trial {index} was proposed as {params}, not as recorded "
                            f"({trial.params}): another Optuna or numpy than the one that proposed it; the rest of "
                            f"the search is not the one an uninterrupted run would have made")
            else:
                self.tell(index, trial.ended)
        return None
