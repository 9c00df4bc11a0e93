"""Run the Triton kernels in the interpreter where there is no GPU.

TRITON_INTERPRET must be set before ``moebench.kernels`` is imported (a
kernel is bound to the interpreter when it is decorated); pytest loads this
file before it imports the test modules beside it. With a GPU the same tests
run the compiled kernels on it.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def poisoned(device):
    """Every ``torch.empty`` comes back NaN, so a row no kernel wrote shows up."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert torch.empty(4, device=device).isnan().all()
    yield
    torch.use_deterministic_algorithms(False)
