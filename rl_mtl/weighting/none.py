"""No loss weighting: ``λ = 1`` for every task (the router skips the scaling altogether)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting


class NoWeighting(Weighting):
    """Uniform weights, never changed; in linear space so that the losses pass through unscaled."""

    name = "none"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(hold=1, floor=1.0, space="linear", seed=seed)

    def weights(self, losses: Tensor, info: dict[str, Any] | None = None) -> Tensor:
        """Ones (K,)."""
        self.calls += 1
        if self._lambda is None:
            self._init_state(losses)
        return self._lambda

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        return torch.full_like(ratio, 1.0 / ratio.numel())
