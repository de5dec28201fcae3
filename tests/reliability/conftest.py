"""Shared, session-scoped: the tiny model of the fault workload and its uninterrupted recording."""

import pytest

import record_worker as rw


@pytest.fixture(scope="session")
def model():
    return rw.make_model()


@pytest.fixture(scope="session")
def reference(tmp_path_factory, model):
    """The workload recorded without interruption (loaded; encoding['source'] is its store)."""
    return rw.run(tmp_path_factory.mktemp("ref") / "ref.zarr", model=model).load()
