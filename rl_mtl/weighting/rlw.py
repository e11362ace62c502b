"""Random loss weighting (RLW, Lin et al. 2022, "Reasonable effectiveness of random weighting"): the control any
IGB claim must beat.

Each window draws ``z ~ N(0, I)`` and uses ``p = softmax(z)`` (the RLW paper's distribution; its reference draws
fresh weights every batch, ``hold=1``), floored like IGBv2.  ``space``: ``log`` (default; the IGB reference's
``rlw_log``, "RLW + SI", in the log space every IGB method here uses) or ``linear`` (the RLW paper's own form,
``Σ λ_k L_k``).  It is *not* IGBv2 without its learning: IGBv2's untrained λ are ``softmax(logit_scale·a)`` with
``a`` its meta-policy's (tanh-squashed) samples, a different distribution; what RLW shares with IGBv2 is the hold,
the floor and the space, so a difference between them is the difference between learnt and random weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting


class RLW(Weighting):
    """``λ = K·((1−ε)·softmax(z) + ε/K)``, ``z ~ N(0, I)`` per window."""

    name = "rlw"

    def __init__(self, hold: int = 100, floor: float = 0.3, space: str = "log", eps: float = 1e-8,
                 seed: int = 0) -> None:
        super().__init__(hold=hold, floor=floor, space=space, eps=eps, seed=seed)

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        z = torch.from_numpy(self.rng.standard_normal(ratio.numel()))
        return torch.softmax(z, dim=0)
