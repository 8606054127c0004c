"""Reading a study's record back: one loader of trials and epochs (results.py) that `status`, `export`, the report
and the models read through, and the study's check against its own plan (audit.py)."""
