"""Dynamic weight average (DWA; Liu, Johns & Davison 2019, "End-to-end multi-task learning with attention", Eqn 7).

``λ_k = K·exp(r_k/T) / Σ_i exp(r_i/T)`` with ``r_k = L̄_k(t−1) / L̄_k(t−2)`` the ratio of a task's mean loss over
the last two windows (the paper's epochs; its code uses the epoch-average losses) and ``λ = 1`` for the first two
windows.  A task whose loss fell least recently gets more weight.  Defaults follow the reference code: ``T = 2``
(the paper's), windows of ``hold = 25`` updates (the IGB/Nash-MTL code's ``iteration_window = 25``; that code slides
the window every update, the paper holds λ for an epoch as here).  ``space``: ``linear`` (the paper) or ``log``
(the IGB code's ``dwa_log``).  With negative losses the ratio is the sign-safe ρ of
:func:`~rl_mtl.weighting.base.loss_ratio`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting, loss_ratio


def dwa_distribution(current: Tensor, previous: Tensor, temp: float, eps: float) -> Tensor:
    """``softmax(r / T)`` with ``r = L̄(t−1)/L̄(t−2)`` (sign-safe), DWA Eqn 7 divided by K."""
    r = torch.exp(loss_ratio(current, previous, eps).clamp(max=50.0))
    return torch.softmax(r / temp, dim=0)


class DWA(Weighting):
    """DWA over hold windows; see the module docstring."""

    name = "dwa"

    def __init__(self, hold: int = 25, temp: float = 2.0, space: str = "linear", eps: float = 1e-8,
                 seed: int = 0) -> None:
        super().__init__(hold=hold, floor=0.0, space=space, eps=eps, seed=seed)
        if not temp > 0.0:
            raise ValueError(f"temp must be > 0 (the softmax temperature T), got {temp}")
        self.temp = float(temp)
        self._previous: Tensor | None = None  # the mean losses of the window before the last

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor | None:
        previous, self._previous = self._previous, mean.clone()
        if previous is None:
            return None  # the second window keeps λ = 1 too
        return dwa_distribution(mean, previous, self.temp, self.eps)

    def state_dict(self) -> dict[str, Any]:
        """The base state plus the previous window's mean losses."""
        return {**super().state_dict(), "previous": None if self._previous is None else self._previous.clone()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state, device)
        self._previous = None if state["previous"] is None else state["previous"].clone()
