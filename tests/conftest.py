import pytest
import torch

# Tiny models on a 2-core machine: one thread avoids oversubscription when other work shares the cores.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
