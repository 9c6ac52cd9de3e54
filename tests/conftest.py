import pytest
import torch

from drmm.config import Config


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


def tiny_config(num_classes: int = 3, **model) -> Config:
    """A model small enough for unit tests on a CPU (about 0.1 s a step)."""
    cfg = Config()
    m = cfg.model
    m.backbone, m.tiny_widths = "tiny", [8, 16, 16, 32]
    m.neck_channels = m.hidden_dim = 32
    m.num_heads, m.dim_feedforward, m.dynamic_dim = 4, 64, 8
    m.num_proposals, m.num_stages, m.num_classes = 12, 2, num_classes
    m.min_size, m.max_size = 96, 160
    m.sampling_ratio = 1
    for k, v in model.items():
        setattr(m, k, v)
    return cfg


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()


def tiny_batch(sizes=((3, 100, 120), (3, 90, 70))):
    """Two random images; the first with two boxes (labels 1, 2), the second without ground truth."""
    images = [torch.rand(*s) for s in sizes]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [30.0, 5.0, 90.0, 40.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets
