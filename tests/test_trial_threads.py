"""Trials packed on one machine get torch threads for their own CPUs only.

That real trials apply it is checked in test_study.py (each smoke trial reports num_threads 1)."""

import pytest

from trainables.tune_adapter import threads_for


@pytest.mark.parametrize(
    ("assigned", "cores", "expected"),
    [
        ({"CPU": 2.0, "GPU": 0.25}, 16, 2),  # four trials share a GPU, two cores each
        ({"CPU": 1.0}, 16, 1),
        ({"CPU": 0.5, "GPU": 0.5}, 16, 1),  # a fractional CPU still gets one thread
        ({}, 16, 1),  # nothing assigned (e.g. a GPU-only request)
        ({"CPU": 8.0}, 2, 2),  # logical CPUs beyond the machine's cores: no more threads than cores
    ],
)
def test_threads_for_assigned_resources(assigned, cores, expected):
    assert threads_for(assigned, cores=cores) == expected
