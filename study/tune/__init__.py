"""The Ray layer: the only part of study/ that knows Ray Tune.

- stage.py             Ray start-up, one Tune experiment per stage (build, restore, watch), schedulers
- callback.py          the driver's Tune callback: progress (live line or plain lines, k/N, ETA) and the event log
- tracking.py          MLflow, W&B and TensorBoard through Tune's logger callbacks (the study file's `tracking:`)
- trial_files.py       a trial's folder (the one reach into Tune's Trial for it) and the records its checkpoints hold
- adapters.py          the searcher and scheduler Tune runs in the main stage: thin, over the stage's decisions
- decisions.py         every ask, tell and ASHA decision, kept in the study's ledger as made; a resume brought
                       up to the record before Tune asks anything
- asha.py              ASHA's stopping rule on rungs that are plain data (the ledger's)
- optuna_live.py       the live Optuna study, replayed from the ledger's journal at each driver start
- searcher.py          the search space as Optuna sees it, and the searcher of studies begun before the ledger
- optuna_record.py     after a sweep, the Optuna study rebuilt from the study's record
- pickle_guard.py      Tune's saved pickles checked before a restore hands them back to Tune

What Tune wrote in a stage folder is read without Ray by study/folder/tune_state.py. This room belongs to
running (study/running/): importing the package imports nothing of Ray.
"""
