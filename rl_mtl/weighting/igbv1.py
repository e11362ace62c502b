"""IGBv1 for RL (IGB paper §4.1; reference code YanqiDai/IGB4MTL, ``ImprovableGapBalancing_v1``).

The paper and its code weight the log-losses (``Σ_k λ_k log L_k``) by ``λ = K·softmax(L/b)``: ``L`` the current
batch's task losses, ``b`` their mean over the second epoch (``--base_epoch 1``), and ``λ = 1`` until ``b`` is
known.  The weights are a softmax of the loss *ratio* itself, not proportional to it: a task whose loss is still
high relative to its early level — a large improvable gap — gets more weight, and ratios that differ by less
than ~1 barely move λ.  Adapted to SAC (``docs/architecture.md`` §11, "IGB for RL"):

* ``L`` is the mean over the last hold window (``hold = 1`` is the paper's per-batch choice);
* ``b`` is the running baseline by default, or, with ``baseline_updates = N``, the reference's frozen one: the
  mean of the first N updates (``rl_mtl/weighting/base.py`` says why the running one is the default);
* warm-up: ``λ = 1`` until the baseline exists — the reference's λ = 1 before its baseline epoch ends: with a
  frozen baseline until it is frozen, with the running one for the first window (whose ratio to itself is 0, so
  the second window is uniform too) — and for at least ``warmup`` updates (0 by default);
* ``form``: ``reference`` (default) is ``K·softmax(L̄/b)``; ``log`` is ``K·softmax(log(L̄/b)) = K·(L̄/b)/Σ(L̄/b)``,
  the normalised ratio this suite used before (stronger for ratios near 1, weaker for large ones);
* ``floor`` ε (0 by default, the paper's formula).

With negative losses (linear space) the ratio is the sign-safe ``ρ = 1 + (L̄ − b)/|b|`` of
:func:`~rl_mtl.weighting.base.loss_ratio`; ``L̄/b`` is capped at ``e^50`` before the softmax (it has long
saturated by then), so the weights stay finite.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting

FORMS = ("reference", "log")
#: ``log(L̄/b)`` is capped here before ``exp`` in the reference form (softmax differences of e^50 are saturated)
MAX_LOG_RATIO = 50.0


def igbv1_distribution(ratio: Tensor, form: str) -> Tensor:
    """``p`` from ``ratio = log(L̄/b)``: ``softmax(L̄/b)`` (``reference``, IGB §4.1) or ``softmax(log(L̄/b))``."""
    if form == "reference":
        return torch.softmax(torch.exp(ratio.clamp(max=MAX_LOG_RATIO)), dim=0)
    return torch.softmax(ratio, dim=0)


class IGBv1(Weighting):
    """``p = softmax(L̄_k / b_k)`` (or of its log), held for ``hold`` updates, after a warm-up with λ = 1."""

    name = "igbv1"

    def __init__(self, hold: int = 100, floor: float = 0.0, form: str = "reference", warmup: int = 0,
                 space: str = "log", baseline_rate: float = 1e-3, baseline_updates: int = 0, eps: float = 1e-8,
                 seed: int = 0) -> None:
        super().__init__(hold=hold, floor=floor, space=space, baseline_rate=baseline_rate,
                         baseline_updates=baseline_updates, eps=eps, seed=seed)
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        if int(warmup) != warmup or warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0 (updates with λ = 1), got {warmup}")
        self.form, self.warmup = form, int(warmup)

    def in_warmup(self) -> bool:
        """Whether the next window still uses λ = 1 (``warmup`` updates not over, or a frozen baseline not yet
        frozen); the first window always does (no baseline yet)."""
        return self.calls < self.warmup or (self.baseline_updates > 0 and not self.baseline_frozen)

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        if self.in_warmup():
            return torch.full_like(ratio, 1.0 / ratio.numel())  # λ = 1 whatever the floor
        return igbv1_distribution(ratio, self.form)
