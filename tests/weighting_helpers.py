"""Test helpers shared by the weighting tests."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from rl_mtl.weighting.base import Weighting


class FixedWeighting(Weighting):
    """Always the same λ (for checking the composition with the combiners exactly)."""

    name = "fixed"

    def __init__(self, lam: Tensor, space: str) -> None:
        super().__init__(hold=1, floor=0.0, space=space)
        self.fixed = lam

    def weights(self, losses: Tensor, info: dict[str, Any] | None = None) -> Tensor:
        self.calls += 1
        self._lambda = self.fixed.to(losses)
        return self._lambda

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        return self.fixed / self.fixed.sum()
