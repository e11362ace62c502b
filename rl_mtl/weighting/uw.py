"""Uncertainty weighting (UW; Kendall, Gal & Cipolla 2018, "Multi-task learning using uncertainty to weigh losses
for scene geometry and semantics", Eqn 7 with the log-variance ``s = log σ²`` of its §3.2).

Each task has a learnt log-variance ``s_k`` (start 0) and the objective ``Σ_k L_k/(2σ_k²) + log σ_k =
Σ_k ½(L_k e^{−s_k} + s_k)``; its gradient in ``s_k`` is ``½(1 − L_k e^{−s_k})`` (:func:`uw_grad`), zero at
``σ_k² = L_k``, so at equilibrium a task's weight is ``1/(2L_k)``: UW equalises the tasks' *relative* changes, like
the log.  ``s`` takes one Adam step per update on the detached losses (lr 0.025, the reference code's
``--method-params-lr``; Adam's defaults otherwise, as there), after this update's weights were taken from it —
the reference steps σ and the network with one optimiser.  λ holds the relative weights ``e^{−s_k}``, normalised
to sum to K like every weighting here: ``λ = K·softmax(−s)``.  The common factor ``Σ_k e^{−s_k}/(2K)`` that the
paper's objective also carries is dropped — Adam absorbs a common scale of the gradient (a ``grad_clip`` norm
would not).  Linear space only, on losses ≥ 0 (critic losses): the log-variance has no equilibrium for a negative
loss.  Everything stays on the learner's device (no host synchronisation per update).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting, entropy

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults, as in the reference


def uw_grad(losses: Tensor, log_var: Tensor) -> Tensor:
    """``∂/∂s_k Σ_i ½(L_i e^{−s_i} + s_i) = ½(1 − L_k e^{−s_k})`` (Kendall et al. 2018, Eqn 7 in ``s = log σ²``)."""
    return 0.5 * (1.0 - losses * torch.exp(-log_var))


class UW(Weighting):
    """Learnt log-variances ``s``; ``λ = K·softmax(−s)``, a new one every update."""

    name = "uw"

    def __init__(self, lr: float = 0.025, eps: float = 1e-8, seed: int = 0) -> None:
        if not lr > 0.0:
            raise ValueError(f"lr must be > 0 (Adam's step on the log-variances), got {lr}")
        super().__init__(hold=1, floor=0.0, space="linear", eps=eps, seed=seed)
        self.lr = float(lr)
        self.log_var: Tensor | None = None
        self._m: Tensor | None = None
        self._v: Tensor | None = None
        self._t = 0

    def weights(self, losses: Tensor, info: dict[str, Any] | None = None) -> Tensor:
        """λ from the current ``s``; then one Adam step on ``s`` from these losses (non-finite ones: no step)."""
        losses = losses.detach()
        if self._lambda is None:
            self._init_state(losses)
            self.log_var = torch.zeros_like(losses)
            self._m, self._v = torch.zeros_like(losses), torch.zeros_like(losses)
        k = losses.numel()
        self._lambda = k * torch.softmax(-self.log_var, dim=0)
        finite = torch.isfinite(losses)
        grad = torch.where(finite, uw_grad(torch.where(finite, losses, 0.0), self.log_var), 0.0)
        self._t += 1
        self._m = _BETA1 * self._m + (1 - _BETA1) * grad
        self._v = _BETA2 * self._v + (1 - _BETA2) * grad * grad
        m_hat = self._m / (1 - _BETA1 ** self._t)
        v_hat = self._v / (1 - _BETA2 ** self._t)
        self.log_var = self.log_var - self.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)
        self._track(self._lambda)
        self.calls += 1
        return self._lambda

    # λ changes every update: its interval figures are summed on the device, not once per window
    def _dev_reset(self) -> None:
        self._dev_sum: Tensor | None = None
        self._dev_entropy: Tensor | None = None
        self._dev_min: Tensor | None = None
        self._dev_max: Tensor | None = None
        self._dev_n = 0

    def _track(self, lam: Tensor) -> None:
        if self._dev_sum is None:
            self._dev_sum, self._dev_entropy = torch.zeros_like(lam), torch.zeros((), dtype=lam.dtype,
                                                                                  device=lam.device)
            self._dev_min, self._dev_max = lam.min(), lam.max()
        self._dev_sum += lam
        self._dev_entropy += entropy(lam / lam.numel())
        self._dev_min = torch.minimum(self._dev_min, lam.min())
        self._dev_max = torch.maximum(self._dev_max, lam.max())
        self._dev_n += 1

    def _account(self) -> None:
        self._mark = self.calls

    def _lambda_interval(self) -> tuple[Tensor, float, float, float] | None:
        if self._dev_n == 0:
            return super()._lambda_interval()
        n = self._dev_n
        return ((self._dev_sum / n).cpu().float(), float(self._dev_min), float(self._dev_max),
                float(self._dev_entropy) / n)

    def _reset_interval(self) -> None:
        super()._reset_interval()
        self._dev_reset()

    def stats(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        """The base figures plus the interval's last ``σ² = e^s`` per task (``sigma2``)."""
        scalars, vectors = super().stats()
        if self.log_var is not None:
            vectors["sigma2"] = torch.exp(self.log_var).cpu().float()
        return scalars, vectors

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        return torch.softmax(-self.log_var.cpu().double(), dim=0)

    def state_dict(self) -> dict[str, Any]:
        """The base state plus ``s``, its Adam moments and the interval's device-side λ sums."""
        state = super().state_dict()
        state.update({name: None if value is None else value.cpu().clone()
                      for name, value in (("log_var", self.log_var), ("adam_m", self._m), ("adam_v", self._v),
                                          ("dev_sum", self._dev_sum), ("dev_entropy", self._dev_entropy),
                                          ("dev_min", self._dev_min), ("dev_max", self._dev_max))})
        state["adam_t"], state["dev_n"] = self._t, self._dev_n
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state, device)
        target = device or (self._lambda.device if self._lambda is not None else "cpu")
        for name, attr in (("log_var", "log_var"), ("adam_m", "_m"), ("adam_v", "_v"), ("dev_sum", "_dev_sum"),
                           ("dev_entropy", "_dev_entropy"), ("dev_min", "_dev_min"), ("dev_max", "_dev_max")):
            setattr(self, attr, None if state[name] is None else state[name].clone().to(target))
        self._t, self._dev_n = int(state["adam_t"]), int(state["dev_n"])

