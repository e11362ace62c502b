"""FAMO: Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023, Eqn 9-10 / Algorithm 1).

Loss-only (``needs_gram = False``): per-task gradients are never formed.  Logits ξ (start 0), ``z = softmax(ξ)``.
The paper's step descends ``Σ_i z_i log(ℓ_i + ε) / c`` with ``c = Σ_j z_j / (ℓ_j + ε)`` held constant, whose gradient
is ``Σ_i [z_i / (ℓ_i + ε)] / c · g_i``, so the weights returned are

    w_i = (z_i / (ℓ_i + ε)) / Σ_j (z_j / (ℓ_j + ε))                  (they sum to 1: the mean convention).

After the optimiser step the trainer calls :meth:`after_step` with the losses re-measured on the same batch:
``δ_i = log(ℓ_i^before + ε) − log(ℓ_i^after + ε)``, the logit gradient is ``J_softmax(ξ)ᵀ δ = z ⊙ (δ − zᵀδ)``
(Cranial-XIX/FAMO ``famo.py`` back-propagates δ through the softmax) and ξ takes one Adam *descent* step on it
(lr 0.025, L2 weight decay γ = 0.01 as ``torch.optim.Adam(weight_decay=γ)``; Adam is written out in numpy so the
state is three small arrays).  Descent means a task whose log-loss fell least gains weight.

Differences from the reference: the RL file multiplies the weighted loss by ``c`` where the paper divides; we
follow the paper (and its toy/supervised code), so the weights are a convex combination.  The reference subtracts a
known lower bound ``min_losses`` (0 by default); we assume ``ℓ ≥ 0`` (SAC critic losses are) and clamp negative
losses to 0 — callers with another floor (the toy problem) subtract it first.  Non-finite losses fall back to the
mean in the base class, and an ``after_step`` with non-finite losses is skipped (counted).

With a loss weighting (architecture §6) FAMO runs *on the weighted losses*: FAMO already descends log-losses, so a
log-space weighting's terms ``λ_k log L_k`` become FAMO's log-loss terms (:meth:`FAMO.weigh_log_losses`):

    w_i = z_i λ_i / (ℓ_i + ε) / Σ_j z_j λ_j / (ℓ_j + ε),     δ_i = λ_i (log(ℓ_i^before + ε) − log(ℓ_i^after + ε)),

i.e. exactly FAMO on the losses ``ℓ_k^{λ_k}`` (whose logs are ``λ_k log ℓ_k``), up to the positive scalar FAMO's
``c`` normalises away — and the weights already hold the weighting (the router applies them to the unweighted
losses; multiplying by the weighting's factor ``λ_k/ℓ_k`` as well would take the log twice).  A linear-space
weighting ``λ_k ℓ_k`` cancels in FAMO's ``log`` (FAMO is invariant to loss scaling, like Nash-MTL), so it has no
effect, and neither has ``si`` (λ = 1 in log space is FAMO itself): ``train`` and ``sweep`` warn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from rl_mtl.combiners.base import Combiner

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults, as in the reference


class FAMO(Combiner):
    """Softmax-logit task weighting updated from the decrease of log-losses; see the module docstring."""

    name = "famo"
    needs_gram = False

    def __init__(self, lr: float = 0.025, weight_decay: float = 0.01, eps: float = 1e-8, seed: int = 0) -> None:
        if not lr > 0.0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        super().__init__(seed)
        self.lr, self.weight_decay, self.eps = float(lr), float(weight_decay), float(eps)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.logits: np.ndarray | None = None  # ξ (K,), created at the first call when K is known
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._t = 0
        self._before: np.ndarray | None = None  # clamped losses of the last call, for after_step
        self._log_weights: np.ndarray | None = None  # λ of a log-space loss weighting (None: λ = 1)
        self._step_weights: np.ndarray | None = None  # ... as used by the last call, for its after_step
        self.skipped_updates = 0

    def weigh_log_losses(self, lam: Tensor | None) -> None:
        """Make the next call FAMO on the weighted log-losses ``λ_k log ℓ_k`` (see the module docstring); None:
        unweighted (also the call for a linear-space weighting, which FAMO's log cancels)."""
        self._log_weights = None if lam is None else lam.detach().to("cpu", torch.float64).numpy().reshape(-1)

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        ell = np.maximum(losses, 0.0)
        k = ell.shape[0]
        if self.logits is None or self.logits.shape[0] != k:
            self.logits, self._m, self._v, self._t = np.zeros(k), np.zeros(k), np.zeros(k), 0
        z = _softmax(self.logits)
        lam = self._log_weights if self._log_weights is not None and self._log_weights.shape == (k,) else None
        inv = (z if lam is None else z * lam) / (ell + self.eps)
        self._before, self._step_weights = ell, lam
        self._extra.update({f"z_{i}": float(z[i]) for i in range(k)})
        return inv / inv.sum()

    def after_step(self, losses_after: Tensor) -> None:
        """One Adam step on ξ from the log-loss decrease since the last call; losses_after: (K,)."""
        after = losses_after.detach().to("cpu", torch.float64).numpy().reshape(-1)
        if self._before is None or after.shape != self._before.shape:
            return
        if not np.all(np.isfinite(after)):
            self.skipped_updates += 1
            return
        delta = np.log(self._before + self.eps) - np.log(np.maximum(after, 0.0) + self.eps)
        if self._step_weights is not None:  # the decline of the weighted log-losses λ_k log ℓ_k
            delta = self._step_weights * delta
        z = _softmax(self.logits)
        grad = z * (delta - float(z @ delta)) + self.weight_decay * self.logits
        self._t += 1
        self._m = _BETA1 * self._m + (1 - _BETA1) * grad
        self._v = _BETA2 * self._v + (1 - _BETA2) * grad**2
        m_hat = self._m / (1 - _BETA1**self._t)
        v_hat = self._v / (1 - _BETA2**self._t)
        self.logits = self.logits - self.lr * m_hat / (np.sqrt(v_hat) + _ADAM_EPS)
        self._before = None  # one update per measured step

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            {name: _as_list(getattr(self, attr)) for name, attr in _ARRAYS.items()},
            adam_t=self._t,
            skipped_updates=self.skipped_updates,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name, attr in _ARRAYS.items():
            value = state.get(name)  # checkpoints from before the weighting composition lack the last two
            setattr(self, attr, None if value is None else np.asarray(value, dtype=np.float64))
        self._t = int(state["adam_t"])
        self.skipped_updates = int(state["skipped_updates"])


_ARRAYS = {"logits": "logits", "adam_m": "_m", "adam_v": "_v", "losses_before": "_before",
           "log_weights": "_log_weights", "step_weights": "_step_weights"}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _as_list(x: np.ndarray | None) -> list[float] | None:
    return None if x is None else [float(v) for v in x]
