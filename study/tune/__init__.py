"""The Ray layer: the only part of study/ that knows Ray Tune.

- stage.py             Ray start-up, one Tune experiment per stage (build, restore, watch), schedulers
- callback.py          the driver's Tune callback: progress (live line or plain lines, k/N, ETA) and the event log
- tracking.py          MLflow, W&B and TensorBoard through Tune's logger callbacks (the study file's `tracking:`)
- trial_files.py       a trial's folder (the one reach into Tune's Trial for it) and the records its checkpoints hold
- searcher.py          Optuna as Tune's searcher, and the Optuna study rebuilt from the study's record
- pickle_guard.py      Tune's saved pickles checked before a restore hands them back to Tune

What Tune wrote in a stage folder is read without Ray by study/folder/tune_state.py. This room belongs to
running (study/running/): importing the package imports nothing of Ray.
"""
