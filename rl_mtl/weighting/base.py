"""Loss weighting interface: task weights ``λ`` (detached, summing to K) that scale the per-task losses.

A weighting multiplies task k's loss by ``λ_k`` before the per-task gradients are taken, so a gradient combiner
sees ``diag(λ) G`` (DESIGN §6).  In ``log`` space the weighted loss is ``λ_k log(L_k + eps)`` (the IGB papers), whose
gradient is ``λ_k g_k / (L_k + eps)``; in ``linear`` space it is ``λ_k L_k``.  Either way task k's gradient is
scaled by :func:`gradient_scale`, which is all the router needs.

The RL adaptation (``../shared/references.md``, "IGB for RL") is shared by every method here:

* λ is **held** for ``hold`` updates; a new λ is chosen at each hold boundary from the window that just ended,
  so between boundaries no host synchronisation happens (the running sums stay on the learner's device);
* a **slow running baseline** ``b_k`` replaces the paper's epoch-2 loss: a bias-corrected EMA of the loss with rate
  ``baseline_rate`` per update, advanced once per window by the window's mean (weight ``1 − (1−r)^n`` for its n
  updates), and the state of a task is ``log(L̄_k / b_k)`` with ``L̄_k`` the window's mean loss;
* every task keeps a **floor** weight: ``λ = K·((1−ε)·p + ε/K)`` for a distribution ``p`` over tasks;
* non-finite losses are left out of the window (per task); a window in which some task has no finite loss keeps
  the previous λ and counts a fallback (``stats()["fallbacks"]``) — the weights never become non-finite.

Per update this costs four small tensor ops on the learner's device (the window sums); everything else happens
once per window.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

SPACES = ("log", "linear")


def floored_weights(p: Tensor, floor: float) -> Tensor:
    """``λ = K·((1−ε)·p + ε/K)`` for a distribution ``p`` (K,) over tasks: sums to K, every entry ≥ ε."""
    k = p.numel()
    return k * ((1.0 - floor) * p + floor / k)


def gradient_scale(weights: Tensor, losses: Tensor, space: str, eps: float) -> Tensor:
    """Factor ``s_k`` with ``∇(weighted loss_k) = s_k g_k``: ``λ_k/(L_k+eps)`` in log space, ``λ_k`` in linear."""
    if space == "log":
        return weights / (losses.clamp_min(0.0) + eps)
    return weights


def softmin(x: Tensor, temperature: float) -> Tensor:
    """Soft minimum ``−τ log mean_k exp(−x_k/τ)``: → min as τ → 0, → mean as τ → ∞."""
    return -temperature * (torch.logsumexp(-x / temperature, dim=-1) - math.log(x.shape[-1]))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two vectors; NaN when either is constant."""
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 1e-12 else float("nan")


class Weighting(abc.ABC):
    """Base class: window sums, slow baseline, hold schedule, floor, fallbacks, stats and checkpoints.

    Subclasses implement :meth:`_choose` (the distribution ``p`` for the next window, from the window's state).
    ``weights(losses, info)`` is called once per update with that update's detached task losses (K,), before its
    gradients are taken; ``observe(before, after)`` after the optimiser step, with the same-batch losses re-measured
    when :meth:`needs_after` said so (IGBv2's reward), otherwise ``after=None``.
    ``info``: ``{"success": (K,) recent training success per task, "progress": t/T in [0, 1]}`` (both optional).
    """

    name: ClassVar[str] = ""

    def __init__(self, hold: int = 100, floor: float = 0.3, space: str = "log", baseline_rate: float = 1e-3,
                 eps: float = 1e-8, seed: int = 0) -> None:
        if int(hold) != hold or hold < 1:
            raise ValueError(f"hold must be an integer >= 1 (updates per weight choice), got {hold}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1] (share of the weight spread uniformly), got {floor}")
        if space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
        if not 0.0 < baseline_rate <= 1.0:
            raise ValueError(f"baseline_rate must be in (0, 1], got {baseline_rate}")
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.hold, self.floor, self.space = int(hold), float(floor), space
        self.baseline_rate, self.eps, self.seed = float(baseline_rate), float(eps), int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.calls = 0  # weights() calls = updates seen
        self.boundaries = 0  # weight choices made
        self.fallbacks = 0
        self._lambda: Tensor | None = None
        self._sum: Tensor | None = None  # window sum of finite losses (K,), on the learner's device
        self._count: Tensor | None = None  # window count of finite losses per task (K,)
        self._ema: Tensor | None = None  # baseline EMA of the loss (K,) float64 on the CPU, bias-corrected by
        self._ema_norm: Tensor | None = None  # ... this (K,)
        self._stats: dict[str, float] = {}
        self._vectors: dict[str, Tensor] = {}
        self._corr_running = float("nan")

    # ------------------------------------------------------------------ public API
    @property
    def num_tasks(self) -> int | None:
        """K once the first losses were seen."""
        return None if self._lambda is None else self._lambda.numel()

    def weights(self, losses: Tensor, info: dict[str, Any] | None = None) -> Tensor:
        """λ (K,) for this update: detached, ≥ floor, summing to K; a new choice every ``hold`` updates.

        The choice is made at the first update of a window, from the window before it (its losses and whatever
        :meth:`observe` recorded), so every update of a window uses the same λ.
        """
        losses = losses.detach()
        if self._lambda is None:
            self._init_state(losses)
        elif self.calls % self.hold == 0:
            self._boundary(info or {})
        finite = torch.isfinite(losses)
        self._sum += torch.where(finite, losses, 0.0)
        self._count += finite
        self.calls += 1
        return self._lambda

    @property
    def window_position(self) -> int:
        """Index of the current update inside its hold window (0 … hold−1), valid after :meth:`weights`."""
        return (self.calls - 1) % self.hold

    def needs_after(self) -> bool:
        """Whether :meth:`observe` wants this update's losses re-measured on the same batch after the step."""
        return False

    def observe(self, before: Tensor, after: Tensor | None = None) -> None:
        """Called after each optimiser step of the weighted loss (``before``: the losses :meth:`weights` saw)."""

    def stats(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Latest scalars (``fallbacks``, ``corr_lambda_failure``, method figures) and vectors (``lambda``, …)."""
        scalars = {"fallbacks": float(self.fallbacks), **self._stats}
        if not math.isnan(self._corr_running):
            scalars["corr_lambda_failure"] = self._corr_running
        vectors = dict(self._vectors)
        if self._lambda is not None:
            vectors["lambda"] = self._lambda.detach().cpu().float()
        return scalars, vectors

    # ------------------------------------------------------------------ hold boundaries
    def _boundary(self, info: dict[str, Any]) -> None:
        """End of a window: the window's state → the next λ (one host sync per ``hold`` updates)."""
        count = self._count.double().cpu()
        if not (count > 0.0).all():
            self.fallbacks += 1  # a task without a finite loss in the window: λ kept
        else:
            mean = self._sum.double().cpu() / count
            # the slow baseline advances by the window: n updates of an EMA with rate r, each seeing ≈ the mean
            weight = 1.0 - (1.0 - self.baseline_rate) ** count
            self._ema = (1.0 - weight) * self._ema + weight * mean
            self._ema_norm = (1.0 - weight) * self._ema_norm + weight
            baseline = self._ema / self._ema_norm
            ratio = torch.log((mean.clamp_min(0.0) + self.eps) / (baseline.clamp_min(0.0) + self.eps))
            p = self._choose(ratio, mean, info)
            new = floored_weights(p.double(), self.floor)
            if torch.isfinite(new).all():
                self._lambda = new.to(self._lambda)
                self._vectors["loss_ratio"] = ratio.float()
            else:
                self.fallbacks += 1
            self._record_correlation(info)
        self.boundaries += 1
        self._sum.zero_()
        self._count.zero_()

    @abc.abstractmethod
    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        """The distribution ``p`` (K,) over tasks for the next window; ``ratio = log(L̄/b)``, float64 on the CPU."""

    def _record_correlation(self, info: dict[str, Any]) -> None:
        """Correlation across tasks of λ with the failure rate ``1 − success`` (does λ favour the hard tasks?)."""
        success = info.get("success")
        if success is None:
            return
        corr = pearson(self._lambda.cpu().double().numpy(), 1.0 - np.asarray(success, dtype=np.float64))
        if math.isnan(corr):
            return
        self._stats["corr_lambda_failure_now"] = corr
        self._corr_running = corr if math.isnan(self._corr_running) else 0.9 * self._corr_running + 0.1 * corr

    def _init_state(self, losses: Tensor) -> None:
        k = losses.numel()
        self._lambda = torch.ones(k, device=losses.device, dtype=losses.dtype)
        self._sum = torch.zeros(k, device=losses.device, dtype=losses.dtype)
        self._count = torch.zeros(k, device=losses.device, dtype=losses.dtype)
        self._ema = torch.zeros(k, dtype=torch.float64)
        self._ema_norm = torch.zeros(k, dtype=torch.float64)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Counters, λ, window sums, baseline and RNG."""
        tensors = {k: (None if v is None else v.detach().cpu().clone())
                   for k, v in (("lambda", self._lambda), ("sum", self._sum), ("count", self._count),
                                ("ema", self._ema), ("ema_norm", self._ema_norm))}
        return {"name": self.name, "calls": self.calls, "boundaries": self.boundaries, "fallbacks": self.fallbacks,
                "rng": self.rng.bit_generator.state, "corr_running": self._corr_running, **tensors}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict` (tensors moved to ``device`` when given)."""
        if state.get("name", self.name) != self.name:
            raise ValueError(f"weighting state is for '{state.get('name')}', not '{self.name}'")
        self.calls, self.boundaries, self.fallbacks = int(state["calls"]), int(state["boundaries"]), int(
            state["fallbacks"])
        self.rng.bit_generator.state = state["rng"]
        self._corr_running = float(state["corr_running"])
        for key, attr in (("lambda", "_lambda"), ("sum", "_sum"), ("count", "_count")):
            value = state[key]
            setattr(self, attr, None if value is None else value.clone().to(device or value.device))
        for key, attr in (("ema", "_ema"), ("ema_norm", "_ema_norm")):  # CPU float64, updated once per window
            setattr(self, attr, None if state[key] is None else state[key].clone().cpu())
