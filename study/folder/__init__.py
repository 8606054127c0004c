"""The study folder's own files, each with its format and how damage to it is named: plan.json, spec.yaml and
study.json (files.py), the driver's event log (events.py), the one-driver lock (lock.py), the search's ledger of
every ask, tell and ASHA decision (ledger.py), and what Ray Tune wrote in a stage folder, read as plain JSON and
text without importing Ray (tune_state.py)."""
