"""Planning: the study file validated into a typed spec (spec/), expanded into the plan that every later step
runs (plan.py), the record's schema that every trial and epoch is written and read in (record.py), and the
tables a report shows (tables.py)."""
