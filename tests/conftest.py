"""Fixtures shared by all tests (helper functions are in ``helpers.py``)."""
import pytest
import torch
from helpers import tiny_config

from drmm.config import Config


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()
