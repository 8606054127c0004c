"""segstudy's service: a study file in, trials run on Ray Tune, a study's record, reports and models out.

Rooms, each a package with one job; a room imports only from the rooms listed after it
(tests/test_layout.py holds the tree to this, and to no import circles):

- cli.py, api.py   the public front: the `study` commands and the Python API (`load_study`, `load_model`)
- analysis/        `study report`: tables and their statistics, protocol text, figures, Markdown/HTML/terminal
- models/          models out: choosing the best trial, loading its model, `predict`, `export-model`
- running/, tune/  running a plan: the runner and its data preparation; tune/ is the Ray layer it drives
                   (tune/ keeps its name: Tune pickles its classes by these names into every study's state)
- reading/         a study's record read back: the results loader, `status`, `export`, the plan audit
- folder/          the study folder's own files: plan/spec/study.json, events.jsonl, the driver lock, Tune's state
- planning/        the contract: the study file (spec/), the plan, the record's schema, the report's tables
- errors.py, names.py, signals.py, storage.py   the ground floor every room may use

`trainables/` (what runs inside a trial) never imports `study/`.
"""
