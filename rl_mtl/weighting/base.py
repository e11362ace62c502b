"""Loss weighting interface: task weights ``λ`` (detached, summing to K) that scale the per-task losses.

A weighting multiplies task k's loss by ``λ_k`` before the per-task gradients are taken, so a gradient combiner
sees ``diag(s) G`` (architecture §6).  In ``log`` space the weighted loss is ``λ_k log(L_k + eps)`` (the IGB papers' and
their code's scale-invariant form), whose gradient is ``λ_k g_k / (L_k + eps)``; in ``linear`` space it is
``λ_k L_k``.  Either way task k's gradient is scaled by :func:`gradient_scale`, ``s_k``, which is all the router
needs.

The RL adaptation (``docs/architecture.md`` §11, "IGB for RL") is shared by every held method here:

* λ is **held** for ``hold`` updates; a new λ is chosen at each hold boundary from the window that just ended,
  so between boundaries no host synchronisation happens (the running sums stay on the learner's device);
* the reference loss ``b_k``: by default (``baseline_updates = 0``) a **running baseline**, a bias-corrected EMA of
  the loss with rate ``baseline_rate`` per update, advanced once per window by the window's mean (weight
  ``1 − (1−r)^n`` for its n updates).  ``baseline_updates = N > 0`` gives the IGB reference's semantics instead: the
  mean loss of the first N updates (whole windows), then **frozen** (the reference freezes the mean of its second
  epoch).  The running one is the default because SAC's critic losses are not anchored to where they start: they
  grow with the value targets as tasks begin to succeed, so against a frozen early baseline every ratio grows
  with the returns rather than with a gap still to close, and IGBv1's softmax saturates on one task;
* the state of a task is the **loss ratio** ``log(L̄_k / b_k)`` (:func:`loss_ratio`, sign-safe for the negative
  losses of linear space), ``L̄_k`` the window's mean loss;
* every task keeps a **floor** weight: ``λ = K·((1−ε)·p + ε/K)`` for a distribution ``p`` over tasks;
* non-finite losses are left out of the window (per task); a window in which some task has no finite loss keeps
  the previous λ and counts a fallback (``stats()["fallbacks"]``) — the weights never become non-finite.

Everything logged is an **interval mean** over the updates (λ, the gradient factor ``s``) or windows (loss ratio,
meta figures) since the last :meth:`Weighting.pop_stats`, not the last window's value.  Per update this costs a
handful of elementwise ops on K-vectors on the learner's device (the window sums and the sum of ``s``), no host
synchronisation; everything else happens once per window.
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


def loss_ratio(mean: Tensor, baseline: Tensor, eps: float) -> Tensor:
    """``log(L̄/b)``, sign-safe: ``log((L̄+eps)/(b+eps))`` where both are ≥ 0, else ``log max(ρ, eps)`` with
    ``ρ = 1 + (L̄ − b)/|b|`` — equal to ``L̄/b`` for a positive baseline, and for a negative one (SAC's actor loss in
    linear space) still 0 at ``L̄ = b`` and rising as the loss rises, so "above its baseline" keeps its meaning."""
    plain = torch.log((mean.clamp_min(0.0) + eps) / (baseline.clamp_min(0.0) + eps))
    rho = 1.0 + (mean - baseline) / (baseline.abs() + eps)
    safe = torch.log(rho.clamp_min(eps))
    return torch.where((mean >= 0.0) & (baseline >= 0.0), plain, safe)


def entropy(p: Tensor) -> Tensor:
    """Shannon entropy ``−Σ p log p`` (nats) of a distribution over the last axis (0·log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


def softmin(x: Tensor, temperature: float) -> Tensor:
    """Soft minimum ``−τ log mean_k exp(−x_k/τ)``: → min as τ → 0, → mean as τ → ∞."""
    return -temperature * (torch.logsumexp(-x / temperature, dim=-1) - math.log(x.shape[-1]))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two vectors; NaN when either is constant."""
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 1e-12 else float("nan")


class Weighting(abc.ABC):
    """Base class: window sums, baseline, hold schedule, floor, fallbacks, interval statistics and checkpoints.

    Subclasses implement :meth:`_choose` (the distribution ``p`` for the next window, from the window's state, or
    None to keep λ).  ``weights(losses, info)`` is called once per update with that update's detached task losses
    (K,), before its gradients are taken (the router calls :meth:`factors`, which also records ``s``);
    ``observe(before, after)`` after the optimiser step, with the same-batch losses re-measured when
    :meth:`needs_after` said so (IGBv2's reward), otherwise ``after=None``; ``observe_norms(norms, losses)`` with
    the per-task gradient norms when :meth:`norms_wanted` said so (``grad_scale``).
    ``info``: ``{"success": (K,) recent training success per task, "progress": t/T in [0, 1]}`` (both optional).
    """

    name: ClassVar[str] = ""

    def __init__(self, hold: int = 100, floor: float = 0.3, space: str = "log", baseline_rate: float = 1e-3,
                 baseline_updates: int = 0, eps: float = 1e-8, seed: int = 0) -> None:
        if int(hold) != hold or hold < 1:
            raise ValueError(f"hold must be an integer >= 1 (updates per weight choice), got {hold}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1] (share of the weight spread uniformly), got {floor}")
        if space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
        if not 0.0 < baseline_rate <= 1.0:
            raise ValueError(f"baseline_rate must be in (0, 1], got {baseline_rate}")
        if int(baseline_updates) != baseline_updates or baseline_updates < 0:
            raise ValueError("baseline_updates must be an integer >= 0 (0: running baseline; N: the mean of the "
                             f"first N updates, then frozen), got {baseline_updates}")
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.hold, self.floor, self.space = int(hold), float(floor), space
        self.baseline_rate, self.baseline_updates = float(baseline_rate), int(baseline_updates)
        self.eps, self.seed = float(eps), int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.calls = 0  # weights() calls = updates seen
        self.boundaries = 0  # weight choices made
        self.fallbacks = 0
        self._lambda: Tensor | None = None
        self._sum: Tensor | None = None  # window sum of finite losses (K,), on the learner's device
        self._count: Tensor | None = None  # window count of finite losses per task (K,)
        self._ema: Tensor | None = None  # baseline sum (K,) float64 on the CPU, normalised by
        self._ema_norm: Tensor | None = None  # ... this (K,)
        self._baseline_calls = 0  # updates folded into the baseline (frozen once it reaches baseline_updates)
        self._corr_running = float("nan")
        self._latest: dict[str, float] = {}  # point values kept between intervals (corr_lambda_failure_now)
        self._reset_interval()

    # ------------------------------------------------------------------ public API
    @property
    def num_tasks(self) -> int | None:
        """K once the first losses were seen."""
        return None if self._lambda is None else self._lambda.numel()

    @property
    def lam(self) -> Tensor | None:
        """The λ (K,) of the current window (None before the first update)."""
        return self._lambda

    @property
    def baseline_frozen(self) -> bool:
        """Whether the baseline has stopped advancing (``baseline_updates`` reached)."""
        return self.baseline_updates > 0 and self._baseline_calls >= self.baseline_updates

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

    def factors(self, losses: Tensor, info: dict[str, Any] | None = None) -> Tensor:
        """The per-task gradient factors ``s`` (K,) of this update (:meth:`weights` then :func:`gradient_scale`);
        their interval mean is logged as ``grad_factor``."""
        losses = losses.detach()
        scale = gradient_scale(self.weights(losses, info), losses, self.space, self.eps)
        finite = torch.isfinite(scale)
        if self._factor_sum is None:
            self._factor_sum = torch.zeros_like(scale)
            self._factor_count = torch.zeros_like(scale)
        self._factor_sum += torch.where(finite, scale, 0.0)
        self._factor_count += finite
        return scale

    @property
    def window_position(self) -> int:
        """Index of the current update inside its hold window (0 … hold−1), valid after :meth:`weights`."""
        return (self.calls - 1) % self.hold

    def needs_after(self) -> bool:
        """Whether :meth:`observe` wants this update's losses re-measured on the same batch after the step."""
        return False

    def observe(self, before: Tensor, after: Tensor | None = None) -> None:
        """Called after each optimiser step of the weighted loss (``before``: the losses :meth:`weights` saw)."""

    def norms_wanted(self, free: bool) -> bool:
        """Whether this update's per-task gradient norms should be passed to :meth:`observe_norms`; ``free``: the
        route already has the Gram (its diagonal costs nothing), else the router must take the gradients."""
        return False

    def observe_norms(self, norms: Tensor, losses: Tensor) -> None:
        """Per-task gradient norms ``‖g_k‖`` (K,) of this update's unweighted losses (``grad_scale``)."""

    # ------------------------------------------------------------------ interval statistics
    def stats(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Interval means since the last :meth:`pop_stats`: scalars (``fallbacks`` and ``meta_updates`` so far,
        ``corr_lambda_failure``, ``lambda_min``/``lambda_max`` over the interval, ``p_entropy`` of ``p = λ/K``,
        the method's figures per window) and vectors (``lambda``, ``grad_factor``, ``loss_ratio``, …)."""
        self._account()
        scalars = {"fallbacks": float(self.fallbacks), **self._counters(), **self._latest}
        if not math.isnan(self._corr_running):
            scalars["corr_lambda_failure"] = self._corr_running
        scalars.update({key: total / n for key, (total, n) in self._int_scalars.items() if n})
        vectors = {key: (total / n).float() for key, (total, n) in self._int_vectors.items() if n}
        lam = self._lambda_interval()
        if lam is not None:
            vectors["lambda"], scalars["lambda_min"], scalars["lambda_max"], scalars["p_entropy"] = lam
        if self._factor_sum is not None:
            count = self._factor_count.cpu()
            if (count > 0).all():
                vectors["grad_factor"] = (self._factor_sum.cpu() / count).float()
        return scalars, vectors

    def pop_stats(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        """:meth:`stats`, then a new interval."""
        out = self.stats()
        self._reset_interval()
        return out

    def _counters(self) -> dict[str, float]:
        """Cumulative counters logged with the interval means (IGBv2: ``meta_updates``)."""
        return {}

    def _reset_interval(self) -> None:
        self._int_scalars: dict[str, list[float]] = {}
        self._int_vectors: dict[str, list[Any]] = {}
        self._int_lam_sum: Tensor | None = None  # Σ over the interval's updates of λ (K,), CPU float64
        self._int_lam_n = 0
        self._int_entropy = 0.0
        self._int_min, self._int_max = math.inf, -math.inf
        self._mark = self.calls  # updates accounted for so far
        self._factor_sum: Tensor | None = None
        self._factor_count: Tensor | None = None

    def _add_scalar(self, key: str, value: float) -> None:
        if math.isfinite(value):
            entry = self._int_scalars.setdefault(key, [0.0, 0])
            entry[0] += value
            entry[1] += 1

    def _add_vector(self, key: str, value: Tensor) -> None:
        value = value.detach().cpu().double()
        if torch.isfinite(value).all():
            entry = self._int_vectors.setdefault(key, [torch.zeros_like(value), 0])
            entry[0] = entry[0] + value
            entry[1] += 1

    def _account(self) -> None:
        """Fold the updates since the last call, all made with the current λ, into the interval's λ figures."""
        n = self.calls - self._mark
        self._mark = self.calls
        if n <= 0 or self._lambda is None:
            return
        lam = self._lambda.detach().cpu().double()
        self._int_lam_sum = n * lam if self._int_lam_sum is None else self._int_lam_sum + n * lam
        self._int_lam_n += n
        self._int_entropy += n * float(entropy(lam / lam.numel()))
        self._int_min = min(self._int_min, float(lam.min()))
        self._int_max = max(self._int_max, float(lam.max()))

    def _lambda_interval(self) -> tuple[Tensor, float, float, float] | None:
        """(mean λ, min λ, max λ, mean entropy of λ/K) over the interval's updates; the current λ without any."""
        if self._int_lam_n == 0:
            if self._lambda is None:
                return None
            lam = self._lambda.detach().cpu().double()
            return lam.float(), float(lam.min()), float(lam.max()), float(entropy(lam / lam.numel()))
        n = self._int_lam_n
        return (self._int_lam_sum / n).float(), self._int_min, self._int_max, self._int_entropy / n

    # ------------------------------------------------------------------ hold boundaries
    def _boundary(self, info: dict[str, Any]) -> None:
        """End of a window: the window's state → the next λ (one host sync per ``hold`` updates)."""
        self._account()  # the window's updates were made with the λ about to be replaced
        count = self._count.double().cpu()
        if not (count > 0.0).all():
            self.fallbacks += 1  # a task without a finite loss in the window: λ kept
        else:
            mean = self._sum.double().cpu() / count
            self._advance_baseline(mean, count)
            baseline = self._ema / self._ema_norm
            ratio = loss_ratio(mean, baseline, self.eps)
            p = self._choose(ratio, mean, info)
            if p is not None:
                new = floored_weights(p.double(), self.floor)
                if torch.isfinite(new).all():
                    self._lambda = new.to(self._lambda)
                else:
                    self.fallbacks += 1
            self._add_vector("loss_ratio", ratio)
            self._record_correlation(info)
        self.boundaries += 1
        self._sum.zero_()
        self._count.zero_()

    def _advance_baseline(self, mean: Tensor, count: Tensor) -> None:
        """Running: the EMA advances by the window (n updates of rate r, each seeing ≈ the mean); frozen: the
        plain mean of the windows until ``baseline_updates`` updates are in, then no change."""
        if self.baseline_updates > 0:
            if self.baseline_frozen:
                return
            self._ema = self._ema + count * mean
            self._ema_norm = self._ema_norm + count
        else:
            weight = 1.0 - (1.0 - self.baseline_rate) ** count
            self._ema = (1.0 - weight) * self._ema + weight * mean
            self._ema_norm = (1.0 - weight) * self._ema_norm + weight
        self._baseline_calls += int(count.max())

    @abc.abstractmethod
    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor | None:
        """The distribution ``p`` (K,) over tasks for the next window, or None to keep λ; ``ratio = log(L̄/b)``
        (:func:`loss_ratio`), ``mean = L̄``, float64 on the CPU."""

    def _record_correlation(self, info: dict[str, Any]) -> None:
        """Correlation across tasks of λ with the failure rate ``1 − success`` (does λ favour the hard tasks?)."""
        success = info.get("success")
        if success is None:
            return
        corr = pearson(self._lambda.cpu().double().numpy(), 1.0 - np.asarray(success, dtype=np.float64))
        if math.isnan(corr):
            return
        self._latest["corr_lambda_failure_now"] = corr
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
        """Counters, λ, window sums, baseline, RNG and the interval's not yet logged statistics."""
        tensors = {k: (None if v is None else v.detach().cpu().clone())
                   for k, v in (("lambda", self._lambda), ("sum", self._sum), ("count", self._count),
                                ("ema", self._ema), ("ema_norm", self._ema_norm))}
        interval = {"scalars": {k: list(v) for k, v in self._int_scalars.items()},
                    "vectors": {k: [v[0].clone(), v[1]] for k, v in self._int_vectors.items()},
                    "lam_sum": None if self._int_lam_sum is None else self._int_lam_sum.clone(),
                    "lam_n": self._int_lam_n, "entropy": self._int_entropy, "min": self._int_min,
                    "max": self._int_max, "mark": self._mark,
                    "factor_sum": None if self._factor_sum is None else self._factor_sum.cpu().clone(),
                    "factor_count": None if self._factor_count is None else self._factor_count.cpu().clone()}
        return {"name": self.name, "calls": self.calls, "boundaries": self.boundaries, "fallbacks": self.fallbacks,
                "rng": self.rng.bit_generator.state, "corr_running": self._corr_running,
                "baseline_calls": self._baseline_calls, "latest": dict(self._latest), "interval": interval,
                **tensors}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict` (tensors moved to ``device`` when given)."""
        if state.get("name", self.name) != self.name:
            raise ValueError(f"weighting state is for '{state.get('name')}', not '{self.name}'")
        self.calls, self.boundaries, self.fallbacks = int(state["calls"]), int(state["boundaries"]), int(
            state["fallbacks"])
        self.rng.bit_generator.state = state["rng"]
        self._corr_running = float(state["corr_running"])
        self._baseline_calls = int(state.get("baseline_calls", 0))
        self._latest = dict(state.get("latest", {}))
        for key, attr in (("lambda", "_lambda"), ("sum", "_sum"), ("count", "_count")):
            value = state[key]
            setattr(self, attr, None if value is None else value.clone().to(device or value.device))
        for key, attr in (("ema", "_ema"), ("ema_norm", "_ema_norm")):  # CPU float64, updated once per window
            setattr(self, attr, None if state[key] is None else state[key].clone().cpu())
        self._reset_interval()
        interval = state.get("interval")
        if interval is not None:
            self._int_scalars = {k: list(v) for k, v in interval["scalars"].items()}
            # CPU float64 like the live sums (torch.load's map_location may have moved them to the learner's device)
            self._int_vectors = {k: [v[0].clone().cpu(), v[1]] for k, v in interval["vectors"].items()}
            self._int_lam_sum = None if interval["lam_sum"] is None else interval["lam_sum"].cpu()
            self._int_lam_n, self._int_entropy = int(interval["lam_n"]), float(interval["entropy"])
            self._int_min, self._int_max = float(interval["min"]), float(interval["max"])
            self._mark = int(interval["mark"])
            target = device or (self._lambda.device if self._lambda is not None else "cpu")
            for key, attr in (("factor_sum", "_factor_sum"), ("factor_count", "_factor_count")):
                value = interval[key]
                setattr(self, attr, None if value is None else value.clone().to(target))
