"""The Ray layer: the only part of study/ that knows Ray Tune.

- stage.py             Ray start-up, one Tune experiment per stage (build, restore, watch), schedulers
- callback.py          the driver's Tune callback: progress (live line or plain lines, k/N, ETA) and the event log
- tracking.py          MLflow, W&B and TensorBoard through Tune's logger callbacks (the study file's `tracking:`)
- trial_files.py       a trial's folder (the one reach into Tune's Trial for it) and the records its checkpoints hold
- searcher.py          Optuna as Tune's searcher, and the Optuna study rebuilt from the study's record
- experiment_state.py  what Tune wrote in a stage folder (its experiment state, error.txt), read as
                       plain JSON and text without importing Ray or unpickling anything

Importing this package imports nothing of Ray; `study status` reads experiment_state.py only.
"""
