"""Shared test fixtures. The tests need the project installed (``pip install -e '.[test]'``): ``agents/`` and
``envs/`` are importable only as ``rl_mtl.agents`` and ``rl_mtl.envs``, which the install maps (setup.cfg)."""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("rl_mtl") is None or importlib.util.find_spec("rl_mtl.agents") is None:
    raise pytest.UsageError("rl_mtl is not installed: run pip install -e '.[test]' first (README, set-up)")


@pytest.fixture(autouse=True)
def _grad_mode_is_not_leaked():
    """A test (or the library code it calls) must not leave autograd switched off for the tests after it."""
    yield
    leaked = not torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    assert not leaked, "autograd was left disabled (torch.set_grad_enabled(False) leaked out of the code under test)"
