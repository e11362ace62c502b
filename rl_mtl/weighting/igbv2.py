"""IGBv2 for RL: task weights chosen by a small SAC rewarded by the decline of the task losses.

The paper (IGB §4.2) treats the choice of weights as a sequential decision: state = the task losses, action = the
weights, reward = the loss decline.  Its reference code (YanqiDai/IGB4MTL, ``ImprovableGapBalancing_v2``) acts at
every batch on the raw batch losses, with actions ``K·softmax(u)`` (no floor), reward ``min_k (L_k(t−1) −
L_k(t))/b_k`` (the decline between consecutive batches, over the epoch-2 baseline), random weights for the first 5
epochs, and its SAC (2×128) trained every 50 batches from the 3rd epoch on with ``γ = 0.99`` and ``lr = 3e-4``
(``SAC_Agent`` defaults, ``--sac_lr``).  That literal form fails on SAC (``docs/architecture.md`` §11, "IGB for
RL"), so, per hold window of ``hold`` updates:

* state ``s = [clip(log(L̄_k/b_k), ±5) (K), success_k (K), t/T]`` — loss ratio to the baseline (running by
  default, frozen with ``baseline_updates``), recent training success per task, training progress;
* action ``a ∈ [−1, 1]^K`` from :class:`~rl_mtl.weighting.meta_sac.MetaSAC`;
  ``λ = K·((1−ε)·softmax(logit_scale·a) + ε/K)``;
* reward: the same-batch decline of each task's log loss, ``d_k = log L_k(before step) − log L_k(after step)``
  (the loss re-evaluated on the batch it was just trained on, so it measures the step, not the data), averaged
  over ``reward_samples`` updates of the window — the *last* update of each of ``reward_samples`` equal
  sub-blocks, so that Adam's momentum, which still carries the previous window's weights at the window's first
  updates, has mostly turned over —, divided by its running RMS over windows, and aggregated with a soft-min over
  tasks (``softmin_temp``): the controller is paid for the task that improves least, not the mean;
* the first ``warmup`` windows use uniformly random actions; the meta-SAC learns from its ``learn_after``-th
  transition on (window ``learn_after + 1``, whatever ``hold`` is), on a batch that grows with its replay up to
  ``batch_size``, and its policy starts with a pre-squash σ of ``init_std`` (``meta_sac.py``).

Defaults that differ from the reference, and why: ``gamma = 0.5`` and ``lr = 3e-3`` (reference 0.99 and 3e-4) —
the reference makes one decision per batch, tens of thousands per run, while a window here is 100 updates and a
CPU run has a few hundred windows to learn from, and a window's weights mostly affect that window's own losses;
``softmin_temp = 0.1`` on declines in units of their RMS (close to the reference's min: at τ ≈ 1 the soft-min is
nearly the mean, which rewards pouring weight on the fastest tasks — measured on the hand-made problem in the
tests).  Logged: ``meta_reward``, ``meta_critic_loss``, ``meta_actor_loss``, ``meta_alpha``, ``meta_policy_std``,
``greedy_lambda`` (the λ of the policy's mean action) as interval means, and ``meta_updates`` so far.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rl_mtl.weighting.base import Weighting, floored_weights, softmin
from rl_mtl.weighting.meta_sac import MetaSAC

#: the loss-ratio features are clipped to ±this (a task whose loss is e^5 × its baseline is simply "very high")
RATIO_CLIP = 5.0


class IGBv2(Weighting):
    """Weights from a meta-SAC; see the module docstring for the state, action and reward."""

    name = "igbv2"

    def __init__(self, hold: int = 100, floor: float = 0.3, space: str = "log", baseline_rate: float = 1e-3,
                 eps: float = 1e-8, logit_scale: float = 2.0, softmin_temp: float = 0.1, reward_samples: int = 10,
                 warmup: int = 10, learn_after: int = 4, hidden_sizes: tuple[int, ...] = (128, 128),
                 batch_size: int = 64, updates: int = 4, buffer: int = 2000, gamma: float = 0.5, lr: float = 3e-3,
                 init_alpha: float = 0.1, init_std: float = 1.0, baseline_updates: int = 0,
                 seed: int = 0) -> None:
        super().__init__(hold=hold, floor=floor, space=space, baseline_rate=baseline_rate,
                         baseline_updates=baseline_updates, eps=eps, seed=seed)
        values = {"logit_scale": logit_scale, "softmin_temp": softmin_temp, "reward_samples": reward_samples,
                  "warmup": warmup, "learn_after": learn_after, "hidden_sizes": hidden_sizes,
                  "batch_size": batch_size, "updates": updates, "buffer": buffer, "gamma": gamma, "lr": lr,
                  "init_alpha": init_alpha, "init_std": init_std}
        checks = [
            ("logit_scale", logit_scale > 0.0 and math.isfinite(logit_scale), "finite and > 0"),
            ("softmin_temp", softmin_temp > 0.0 and math.isfinite(softmin_temp), "finite and > 0"),
            ("reward_samples", int(reward_samples) == reward_samples and 1 <= reward_samples,
             "an integer >= 1 (updates per window whose loss decline is measured)"),
            ("warmup", int(warmup) == warmup and warmup >= 0, "an integer >= 0 (windows of random weights)"),
            ("learn_after", int(learn_after) == learn_after and learn_after >= 1,
             "an integer >= 1 (meta-transitions before the meta-SAC first learns)"),
            ("hidden_sizes", len(tuple(hidden_sizes)) > 0 and all(int(h) >= 1 for h in hidden_sizes),
             "a non-empty list of positive widths"),
            ("batch_size", int(batch_size) == batch_size and batch_size >= 1, "an integer >= 1"),
            ("updates", int(updates) == updates and updates >= 1, "an integer >= 1 (meta updates per window)"),
            ("buffer", int(buffer) == buffer and buffer >= 1, "an integer >= 1 (meta-transitions kept)"),
            ("gamma", 0.0 <= gamma < 1.0, "in [0, 1)"),
            ("lr", lr > 0.0, "> 0"),
            ("init_alpha", init_alpha > 0.0, "> 0"),
            ("init_std", init_std > 0.0 and math.isfinite(init_std), "finite and > 0 (initial policy σ)"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {values[name]!r}")
        self.logit_scale, self.softmin_temp = float(logit_scale), float(softmin_temp)
        self.reward_samples = int(reward_samples)
        self._meta_kwargs = dict(hidden_sizes=tuple(int(h) for h in hidden_sizes), gamma=float(gamma), lr=float(lr),
                                 init_alpha=float(init_alpha), batch_size=int(batch_size), updates=int(updates),
                                 capacity=int(buffer), warmup=int(warmup), learn_after=int(learn_after),
                                 init_std=float(init_std), seed=self.seed)
        self.meta: MetaSAC | None = None
        self._decline_sum: Tensor | None = None
        self._decline_count: Tensor | None = None
        self._decline_ms = 0.0  # running mean of d² over windows (for the reward's scale)
        self._decline_ms_norm = 0.0
        self._prev: tuple[np.ndarray, np.ndarray] | None = None  # the last window's (state, action)

    def meta_warmup_windows(self) -> int:
        """Windows before the meta-SAC has learnt: the first window has no meta-action, each boundary after the
        second stores one transition, and it learns once it holds ``learn_after`` of them."""
        return self._meta_kwargs["learn_after"] + 2

    # ------------------------------------------------------------------ the reward signal
    def needs_after(self) -> bool:
        """Measure the decline at the last update of each of ``reward_samples`` equal sub-blocks of the window
        (every update when the window is shorter)."""
        stride = max(1, self.hold // self.reward_samples)
        return self.window_position % stride == stride - 1

    def observe(self, before: Tensor, after: Tensor | None = None) -> None:
        """Accumulate the same-batch decline of the (log) losses; skipped for non-finite values."""
        if after is None or self._decline_sum is None:
            return
        before, after = before.detach(), after.detach()
        if self.space == "log":
            decline = torch.log(before.clamp_min(0.0) + self.eps) - torch.log(after.clamp_min(0.0) + self.eps)
        else:
            decline = (before - after) / (before.abs() + self.eps)
        finite = torch.isfinite(decline)
        self._decline_sum += torch.where(finite, decline, 0.0)
        self._decline_count += finite

    def _reward(self) -> float | None:
        """Soft-min over tasks of the window's mean declines in units of their running RMS; None without data."""
        count = self._decline_count.double().cpu()
        if not (count > 0.0).all():
            return None
        decline = self._decline_sum.double().cpu() / count
        self._decline_ms = 0.99 * self._decline_ms + 0.01 * float(decline.pow(2).mean())
        self._decline_ms_norm = 0.99 * self._decline_ms_norm + 0.01
        rms = math.sqrt(self._decline_ms / self._decline_ms_norm)
        self._add_vector("loss_decline", decline)
        return float(softmin(decline / (rms + 1e-12), self.softmin_temp))

    # ------------------------------------------------------------------ choosing λ
    def _state(self, ratio: Tensor, info: dict[str, Any]) -> np.ndarray:
        k = ratio.numel()
        success = info.get("success")
        success = np.zeros(k) if success is None else np.asarray(success, dtype=np.float64).reshape(k)
        progress = float(info.get("progress", 0.0))
        features = np.concatenate([ratio.clamp(-RATIO_CLIP, RATIO_CLIP).numpy(), success, [progress]])
        return features.astype(np.float32)

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        state = self._state(ratio, info)
        reward = self._reward()
        if self._prev is not None and reward is not None:
            learnt = self.meta.updates_done
            self.meta.observe(self._prev[0], self._prev[1], reward, state)
            self._add_scalar("meta_reward", reward)
            if self.meta.updates_done > learnt:
                for key, value in self.meta.metrics.items():
                    self._add_scalar(key, value)
        self._decline_sum.zero_()
        self._decline_count.zero_()
        action = self.meta.act(state)
        self._add_scalar("meta_policy_std", self.meta.last_std)
        greedy = self.distribution(self.meta.act(state, explore=False))
        self._add_vector("greedy_lambda", floored_weights(greedy, self.floor))
        self._prev = (state, action)
        return self.distribution(action)

    def distribution(self, action: np.ndarray) -> Tensor:
        """``p = softmax(logit_scale·a)`` (K,) float64 for a meta-action ``a``."""
        return torch.softmax(self.logit_scale * torch.as_tensor(action, dtype=torch.float64), dim=0)

    def greedy_lambda(self, state: np.ndarray | None = None) -> Tensor:
        """The λ of the policy's mean action at ``state`` (default: the state of the last window acted on)."""
        if state is None:
            state = self._prev[0] if self._prev is not None else np.zeros(2 * self.num_tasks + 1, np.float32)
        return floored_weights(self.distribution(self.meta.act(state, explore=False)), self.floor)

    def _counters(self) -> dict[str, float]:
        return {} if self.meta is None else {"meta_updates": float(self.meta.updates_done)}

    def _init_state(self, losses: Tensor) -> None:
        super()._init_state(losses)
        k = losses.numel()
        self._decline_sum = torch.zeros_like(self._sum)
        self._decline_count = torch.zeros_like(self._count)
        if self.meta is None:
            self.meta = MetaSAC(2 * k + 1, k, **self._meta_kwargs)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The base state plus the meta-SAC (networks, optimisers, replay), decline sums and the last (s, a)."""
        state = super().state_dict()
        state.update({
            "meta": None if self.meta is None else self.meta.state_dict(),
            "decline_sum": None if self._decline_sum is None else self._decline_sum.cpu().clone(),
            "decline_count": None if self._decline_count is None else self._decline_count.cpu().clone(),
            "decline_ms": (self._decline_ms, self._decline_ms_norm),
            "prev": self._prev,
        })
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict` (the meta-SAC is rebuilt for the saved task count first)."""
        super().load_state_dict(state, device)
        if state["meta"] is not None:
            k = self._lambda.numel()
            self.meta = MetaSAC(2 * k + 1, k, **self._meta_kwargs)
            self.meta.load_state_dict(state["meta"])
        for key, attr in (("decline_sum", "_decline_sum"), ("decline_count", "_decline_count")):
            value = state[key]
            setattr(self, attr, None if value is None else value.clone().to(device or value.device))
        self._decline_ms, self._decline_ms_norm = state["decline_ms"]
        self._prev = state["prev"]
