"""Running a plan: the stages in order, resume, and the check against the plan (runner.py); the data a plan needs,
made ready on the driver before Ray starts (datasets.py). The Ray layer it drives is study/tune/."""
