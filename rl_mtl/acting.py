"""The policy the rollouts act with: the learner's actor, or a CPU copy of it refreshed after every update (architecture §7).

On a CPU learner the learner's actor is used as it is (a copy would only cost time).  On CUDA, ``mode="auto"``
times both ways once — the GPU actor (its observations already on the device, the actions back to the host) and a
CPU copy (one pinned, flat copy of the actor's parameters per update, then a CPU forward) — and keeps the faster.

Staleness.  The trainer acts on step t+1 only after update t has finished and :meth:`ActingPolicy.refresh` has
been called, so the acting policy is always the learner's latest actor, as in the serial loop; what is one step
behind with overlapped rollouts is the *data*: the update that runs while step t is being simulated samples a
replay that does not hold transition t yet (``tests/test_rollout.py`` checks both).  A CPU copy that is not
refreshed lags exactly as many updates as were made since.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import Tensor, nn

MODES = ("auto", "learner", "cpu_copy")
#: forwards timed per way when ``mode="auto"`` picks on CUDA
_TIMED_ACTS = 20


class ActingPolicy:
    """Stochastic actions (K, A) for one observation per task, from ``actor`` or from its CPU copy.

    actor: the learner's :class:`~agents.networks.Actor` (any device); the task of row k is k.
    """

    def __init__(self, actor: nn.Module, num_tasks: int, obs_dim: int, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.actor = actor
        self.device = next(actor.parameters()).device
        self.obs_dim = int(obs_dim)
        self._tasks = torch.arange(num_tasks, device=self.device)
        self._cpu_tasks = self._tasks.cpu()
        # the CPU copy: its parameters are views of one flat host buffer filled from one flat device buffer
        self._copy: nn.Module | None = None
        self._flat_device = torch.empty(0)
        self._flat_host = torch.empty(0)
        self._copied: torch.cuda.Event | None = None
        if mode == "auto":
            mode = "learner" if self.device.type == "cpu" else self._fastest()
        self.mode = mode
        if mode == "cpu_copy":
            self._make_copy()

    def act(self, obs: np.ndarray, device_obs: Tensor | None = None) -> np.ndarray:
        """Sampled actions (K, A) for ``obs`` (K, obs_dim); ``device_obs`` is the same obs already on the learner's
        device (saves the learner a transfer; ignored by a CPU copy)."""
        if self._copy is not None:
            self._synchronize_copy()
            return self._forward(self._copy, torch.as_tensor(obs, dtype=torch.float32), self._cpu_tasks)
        obs_t = device_obs if device_obs is not None else torch.as_tensor(obs, dtype=torch.float32,
                                                                         device=self.device)
        return self._forward(self.actor, obs_t, self._tasks)

    def refresh(self) -> None:
        """Called after every update: start copying the actor's parameters into the CPU copy (no-op otherwise)."""
        if self._copy is None:
            return
        with torch.no_grad():
            torch.cat([p.detach().reshape(-1) for p in self.actor.parameters()], out=self._flat_device)
            self._flat_host.copy_(self._flat_device, non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    # ------------------------------------------------------------------ internals
    @staticmethod
    @torch.no_grad()
    def _forward(actor: nn.Module, obs: Tensor, tasks: Tensor, noise: Tensor | None = None) -> np.ndarray:
        action, _, _ = actor(obs, tasks[: len(obs)], noise)
        return action.cpu().numpy()

    def _make_copy(self) -> None:
        """A CPU actor whose parameters are views of one (pinned) flat buffer, filled by :meth:`refresh`."""
        params = list(self.actor.parameters())
        total = sum(p.numel() for p in params)
        pinned = self.device.type == "cuda"
        self._flat_device = torch.empty(total, device=self.device)
        self._flat_host = torch.empty(total, pin_memory=pinned)
        self._copied = torch.cuda.Event() if pinned else None
        self._copy = copy.deepcopy(self.actor).to("cpu").requires_grad_(False)
        offset = 0
        for p in self._copy.parameters():
            p.data = self._flat_host[offset: offset + p.numel()].view_as(p)
            offset += p.numel()
        self.refresh()

    def _synchronize_copy(self) -> None:
        """Wait for the last refresh's device→host copy (usually finished long before)."""
        if self._copied is not None:
            self._copied.synchronize()
        elif self.device.type != "cpu":
            torch.cuda.synchronize(self.device)

    def _fastest(self) -> str:
        """Time acting with the learner's actor and with a refreshed CPU copy; the faster mode.  Fixed (zero)
        noise, so timing draws nothing from the run's random streams."""
        obs = np.zeros((len(self._tasks), self.obs_dim), dtype=np.float32)
        noise = torch.zeros(len(self._tasks), self._action_dim())
        self._make_copy()
        assert self._copy is not None
        timings = {}
        for mode in ("learner", "cpu_copy", "learner", "cpu_copy"):
            t0 = time.perf_counter()
            for _ in range(_TIMED_ACTS):
                if mode == "learner":
                    obs_t = torch.as_tensor(obs, device=self.device)
                    self._forward(self.actor, obs_t, self._tasks, noise.to(self.device))
                else:
                    self.refresh()
                    self._synchronize_copy()
                    self._forward(self._copy, torch.as_tensor(obs), self._cpu_tasks, noise)
            timings[mode] = time.perf_counter() - t0  # the second round, after warm-up
        self._copy = None
        return min(timings, key=lambda m: timings[m])

    def _action_dim(self) -> int:
        return int(getattr(self.actor, "action_dim"))
