"""Fixtures shared by all tests (helper functions are in ``helpers.py``)."""
import os

import pytest
import torch
from helpers import tiny_config

from drmm.data import generate_synthetic

from drmm.config import Config


# Under pytest-xdist (`make test` runs two workers on the two cores) each worker computes with one thread.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()


@pytest.fixture(scope="module")
def synth16(tmp_path_factory):
    """The built-in data at 64 px: 16 training and 4 validation images (one per test module)."""
    root = tmp_path_factory.mktemp("synth16")
    generate_synthetic(root, 16, 4, seed=0, image_size=64, progress=False)
    return root
