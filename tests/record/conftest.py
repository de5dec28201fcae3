import pytest

from armt_viz.testing import tiny_model


@pytest.fixture
def model():
    return tiny_model()
