"""The Ray layer: the only part of study/ that knows Ray Tune.

- stage.py             Ray start-up, one Tune experiment per stage (build, restore, watch), schedulers
- callback.py          the driver's Tune callback: progress lines and the study's event log
- searcher.py          Optuna as Tune's searcher, and the Optuna study rebuilt from Tune's trials
- experiment_state.py  what Tune wrote in a stage folder (its experiment state, error.txt), read as
                       plain JSON and text without importing Ray or unpickling anything

Importing this package imports nothing of Ray; `study status` reads experiment_state.py only.
"""
