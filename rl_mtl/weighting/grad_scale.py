"""Gradient-norm loss scaling (``grad_scale``; "Revisit the Imbalance Optimization in Multi-task Learning", 2025,
``docs/architecture.md`` §11: optimisation imbalance tracks the disparity of the task-gradient norms, and scaling
each task's loss by its gradient norm matches a grid search of the loss weights).

``λ_k ∝ 1/q̄_k``, summing to K, where ``q_k`` is the norm of the gradient of task k's loss *term* on the combined
parameters: ``‖g_k‖`` in linear space (default), ``‖∇log L_k‖ = ‖g_k‖/(L_k+eps)`` in log space, and ``q̄_k`` its
mean over the hold window.  The weighted gradients ``s_k g_k`` of the next window then all have the same norm
(exactly so while the norms hold still).  λ is detached, like every weighting, and has no floor (one would undo
the equalisation).  Where the route already has the Gram (every combiner but FAMO and plain MTSAC), the norms
are its diagonal, at every update, for free; on the plain path the router takes the per-task gradients once per
window, at its last update (``scripts/bench_weighting.py`` measures that cost).  The first window uses λ = 1,
and a window without a measurement keeps its λ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting

#: norms below this fraction of the largest are raised to it (a task with a zero gradient gets a finite weight)
MIN_RELATIVE_NORM = 1e-12


def inverse_norm_distribution(norms: Tensor) -> Tensor:
    """``p_k = (1/q_k) / Σ_j (1/q_j)``: the distribution with ``p_k q_k`` the same for every task."""
    q = norms.clamp_min(MIN_RELATIVE_NORM * float(norms.max()))
    inverse = 1.0 / q
    return inverse / inverse.sum()


class GradScale(Weighting):
    """``λ = K·(1/q̄)/Σ(1/q̄)`` from the last window's gradient norms; see the module docstring."""

    name = "grad_scale"

    def __init__(self, hold: int = 100, space: str = "linear", eps: float = 1e-8, seed: int = 0) -> None:
        super().__init__(hold=hold, floor=0.0, space=space, eps=eps, seed=seed)
        self._norm_sum: Tensor | None = None
        self._norm_count: Tensor | None = None

    def norms_wanted(self, free: bool) -> bool:
        """Every update where they are free; else once per window, at its last update."""
        return free or self.window_position == self.hold - 1

    def observe_norms(self, norms: Tensor, losses: Tensor) -> None:
        """Add this update's ``q_k`` to the window (non-finite ones left out)."""
        norms = norms.detach()
        q = norms if self.space == "linear" else norms / (losses.detach().clamp_min(0.0) + self.eps)
        if self._norm_sum is None:
            self._norm_sum = torch.zeros_like(q)
            self._norm_count = torch.zeros_like(q)
        finite = torch.isfinite(q)
        self._norm_sum += torch.where(finite, q, 0.0)
        self._norm_count += finite

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor | None:
        if self._norm_sum is None:
            return None
        count = self._norm_count.double().cpu().clone()  # a copy: the sums are zeroed below
        q = self._norm_sum.double().cpu() / count.clamp_min(1.0)
        self._norm_sum.zero_()
        self._norm_count.zero_()
        if not (count > 0).all() or not float(q.max()) > 0.0:
            return None
        self._add_vector("grad_norm_term", q)
        return inverse_norm_distribution(q)

    def state_dict(self) -> dict[str, Any]:
        """The base state plus the window's norm sums."""
        return {**super().state_dict(),
                "norm_sum": None if self._norm_sum is None else self._norm_sum.cpu().clone(),
                "norm_count": None if self._norm_count is None else self._norm_count.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state, device)
        target = device or (self._lambda.device if self._lambda is not None else "cpu")
        for key, attr in (("norm_sum", "_norm_sum"), ("norm_count", "_norm_count")):
            value = state[key]
            setattr(self, attr, None if value is None else value.clone().to(target))
