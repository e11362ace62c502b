"""IGBv1 for RL (IGB paper §4.1, adapted in ``../shared/references.md``, "IGB for RL").

The paper weights ``λ_k ∝ L_k / L_k(epoch 2)``: tasks whose loss is still high relative to where they started
have the larger improvable gap.  SAC has no epochs, so the reference loss is a slow running baseline ``b_k`` and
the current loss is the mean over the last hold window: ``λ = K·softmax(log(L̄/b))`` (with the floor ε, 0 by
default as in the paper's formula).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting


class IGBv1(Weighting):
    """``p = softmax(log(L̄_k / b_k))``, held for ``hold`` updates."""

    name = "igbv1"

    def __init__(self, hold: int = 100, floor: float = 0.0, space: str = "log", baseline_rate: float = 1e-3,
                 eps: float = 1e-8, seed: int = 0) -> None:
        super().__init__(hold=hold, floor=floor, space=space, baseline_rate=baseline_rate, eps=eps, seed=seed)

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        return torch.softmax(ratio, dim=0)
