import pytest
import torch

# The CI machine has 2 cores; keep intra-op threads bounded so tests do not oversubscribe them.
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
