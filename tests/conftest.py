"""Shared fixtures: small generated datasets in the real on-disk layouts, made once per session."""

import os
import time

import pytest

from tests.study_helpers import SESSION_MARK

# Keep torch from oversubscribing the 2-core CI machine when Ray runs trials beside pytest.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ[SESSION_MARK[0]] = SESSION_MARK[1]  # inherited by everything the tests start


@pytest.fixture(scope="session")
def pets_root(tmp_path_factory):
    from trainables.data import synth_dataset

    root = tmp_path_factory.mktemp("pets")
    synth_dataset("pets", root, train=48, val=24, seed=0)
    return root


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory):
    from trainables.data import synth_dataset

    root = tmp_path_factory.mktemp("cityscapes")
    synth_dataset("cityscapes", root, train=16, val=8, seed=0)
    return root


@pytest.fixture(scope="session")
def finished_tiny_study(tmp_path_factory):
    """tests/specs/tiny.yaml run to the end once, as study "t": the storage folder holding it.

    Ray studies cost most of the suite's time; tests that start from a finished study copy
    this folder (a moved study, which must work anyway) instead of running their own.
    """
    from tests.study_helpers import TEST_SPECS, run_study_cli

    home = tmp_path_factory.mktemp("tiny-study")
    run_study_cli(["run", str(TEST_SPECS / "tiny.yaml"), "--name", "t"], home, home / "studies")
    return home / "studies"


@pytest.fixture(scope="session", autouse=True)
def no_ray_processes_left_behind():
    """The suite fails if Ray processes it started outlive it (ended here, then reported)."""
    from tests.study_helpers import ray_processes

    before = ray_processes()
    yield
    deadline = time.time() + 30  # ray.shutdown() and killed drivers' helpers take a few seconds to go
    left = ray_processes() - before
    while left and time.time() < deadline:
        time.sleep(1)
        left = ray_processes() - before
    for entry in left:
        try:
            os.kill(int(entry.split()[0]), 9)
        except ProcessLookupError:
            pass
    assert not left, "Ray processes left behind by the tests:\n" + "\n".join(sorted(left))
