"""Shared fixtures: small generated datasets in the real on-disk layouts, made once per session."""

import os

import pytest

# Keep torch from oversubscribing the 2-core CI machine when Ray runs trials beside pytest.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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
