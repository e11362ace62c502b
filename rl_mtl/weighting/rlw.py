"""Random loss weighting (RLW, Lin et al. 2022): the control every IGB claim must beat.

Each window draws ``z ~ N(0, I)`` and uses ``p = softmax(z)`` (the RLW paper's distribution), with the same hold
and floor as IGBv2 so that the only difference to it is that the weights are not learnt.  ``hold=1`` gives the
paper's fresh weights every update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting


class RLW(Weighting):
    """``λ = K·((1−ε)·softmax(z) + ε/K)``, ``z ~ N(0, I)`` per window."""

    name = "rlw"

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        z = torch.from_numpy(self.rng.standard_normal(ratio.numel()))
        return torch.softmax(z, dim=0)
