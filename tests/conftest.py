"""Put the repository root on sys.path so the tests run without installing the package."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _grad_mode_is_not_leaked():
    """A test (or the library code it calls) must not leave autograd switched off for the tests after it."""
    yield
    leaked = not torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    assert not leaked, "autograd was left disabled (torch.set_grad_enabled(False) leaked out of the code under test)"
