"""Scale-invariant loss (SI; the IGB reference's ``si``, ``ScaleInvariantLinearScalarization``): ``Σ_k log L_k``.

λ = 1 in log space, so task k's gradient is ``g_k / (L_k + eps)``: every task's loss counts by its relative
change, whatever its scale.  It is the control that separates "the log" from "the weights" — IGBv1, IGBv2 and the
default RLW all weight in log space, so each of them should be compared against ``si`` as well as ``none``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting


class SI(Weighting):
    """``λ = 1`` in log space, never changed (no window work: no host synchronisation at all)."""

    name = "si"

    def __init__(self, eps: float = 1e-8, seed: int = 0) -> None:
        super().__init__(hold=1, floor=1.0, space="log", eps=eps, seed=seed)

    def weights(self, losses: Tensor, info: dict[str, Any] | None = None) -> Tensor:
        """Ones (K,)."""
        if self._lambda is None:
            self._init_state(losses.detach())
        self.calls += 1
        return self._lambda

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        return torch.full_like(ratio, 1.0 / ratio.numel())
