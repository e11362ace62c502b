"""IGBv2's weight learner: a small SAC over task-weight logits, built from the agent's own SAC.

It is :class:`agents.mtsac.MTSAC` with a single "task" (no one-hot), a K-dimensional tanh-squashed action and a
:class:`agents.replay.MultiTaskReplay` of the most recent meta-transitions, so the losses, the temperature, the
target critic and the non-finite guard are the agent's, not a copy of them.  It always lives on the CPU: its
networks are tiny (2×128 by default) and it acts once per hold window.

Two choices make it learn from its first windows (a run at the ``mt10_cpu`` budget has only ~190 of them):

* the meta-batch **grows with the replay**: it learns once the replay holds ``learn_after`` transitions, on
  batches of ``min(batch_size, len(replay))`` — so it learns from the random warm-up windows while they still
  explore, instead of waiting for ``batch_size`` transitions;
* its policy **starts with a real spread**: the agent's actor bounds ``log σ`` to ``[−20, 2]`` by a tanh, so a
  fresh network's σ is ``e^{−9} ≈ 1e-4`` — a deterministic policy; the log-σ outputs start at ``log init_std``
  (1.0: pre-squash samples spread like the logits the random warm-up draws), the same at every state.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from rl_mtl.agents.mtsac import MTSAC, SACConfig
from rl_mtl.agents.replay import MultiTaskReplay


def set_initial_std(actor: nn.Module, init_std: float) -> None:
    """Make a fresh actor's pre-squash σ equal ``init_std`` at every state: the log-σ rows of its output layer get
    zero weights and the bias whose bounded value is ``log init_std``."""
    last = [m for m in actor.modules() if isinstance(m, nn.Linear)][-1]
    action_dim = last.out_features // 2
    low, high = actor.log_std_min, actor.log_std_max
    target = min(max(math.log(init_std), low + 1e-6), high - 1e-6)
    raw = math.atanh(2.0 * (target - low) / (high - low) - 1.0)
    with torch.no_grad():
        last.weight[action_dim:].zero_()
        last.bias[action_dim:].fill_(raw)


class MetaSAC:
    """Contextual controller ``state (S,) → action (A,) ∈ [−1, 1]^A`` trained by SAC on ``(s, a, r, s')``.

    warmup: meta-steps of uniformly random actions before the policy acts; updates: SAC updates per observed
    transition once the replay holds ``learn_after`` of them, on batches of ``min(batch_size, len(replay))``;
    init_std: the policy's initial pre-squash σ.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden_sizes: tuple[int, ...] = (128, 128),
                 gamma: float = 0.5, lr: float = 3e-3, init_alpha: float = 0.1, batch_size: int = 64,
                 updates: int = 4, capacity: int = 2000, warmup: int = 10, learn_after: int = 4,
                 init_std: float = 1.0, seed: int = 0) -> None:
        cfg = SACConfig(hidden_sizes=tuple(hidden_sizes), gamma=gamma, actor_lr=lr, critic_lr=lr, alpha_lr=lr,
                        init_alpha=init_alpha)
        self.action_dim = int(action_dim)
        self.batch_size, self.updates, self.warmup = int(batch_size), int(updates), int(warmup)
        self.learn_after = int(learn_after)
        with torch.random.fork_rng(devices=[]):  # the meta networks must not shift the agent's RNG stream
            torch.manual_seed(seed)
            self.sac = MTSAC(state_dim, action_dim, 1, cfg, device="cpu")
        set_initial_std(self.sac.actor, init_std)
        self.replay = MultiTaskReplay(1, state_dim, action_dim, capacity, "cpu", seed=seed)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0  # exploring actions taken
        self.updates_done = 0  # SAC updates made
        self.metrics: dict[str, float] = {}
        self.last_std = float("nan")  # mean pre-squash σ of the policy at the last state acted on

    def policy(self, state: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's pre-squash mean and σ (A,) at ``state``."""
        obs = torch.as_tensor(state, dtype=torch.float32)[None]
        with torch.no_grad():
            mean, log_std = self.sac.actor.gaussian(obs, torch.zeros(1, dtype=torch.long))
        return mean[0], log_std[0].exp()

    def act(self, state: np.ndarray, explore: bool = True) -> np.ndarray:
        """An action for ``state``: random during the warm-up, then sampled from the policy; without ``explore``
        the policy's mean ``tanh(μ)`` (the greedy action: no step counted, no random number drawn)."""
        mean, std = self.policy(state)
        if not explore:
            return torch.tanh(mean).numpy()
        self.steps += 1
        self.last_std = float(std.mean())
        if self.steps <= self.warmup:
            return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
        noise = torch.randn(self.action_dim, generator=self.generator)
        return torch.tanh(mean + std * noise).numpy()

    def observe(self, state: np.ndarray, action: np.ndarray, reward: float, next_state: np.ndarray) -> None:
        """Store one transition (never terminal: the weighting problem runs as long as training) and learn."""
        self.replay.add(state[None], action[None], [reward], next_state[None], [False])
        size = len(self.replay)
        if size < self.learn_after:
            return
        batch = min(self.batch_size, size)
        sums: dict[str, float] = {}
        for _ in range(self.updates):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.rng.integers(2**62)))
                metrics = self.sac.update(self.replay.sample(batch))
            self.updates_done += 1
            for key in ("loss/critic", "loss/actor", "alpha"):
                if key in metrics:
                    sums[key] = sums.get(key, 0.0) + float(metrics[key].mean())
        self.metrics = {
            "meta_critic_loss": sums.get("loss/critic", float("nan")) / self.updates,
            "meta_actor_loss": sums.get("loss/actor", float("nan")) / self.updates,
            "meta_alpha": sums.get("alpha", float("nan")) / self.updates,
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers, replay with its data, RNGs and counters."""
        return {"sac": self.sac.full_state_dict(), "replay": self.replay.state_dict(include_data=True),
                "rng": self.rng.bit_generator.state, "generator": self.generator.get_state(), "steps": self.steps,
                "updates_done": self.updates_done, "last_std": self.last_std, "metrics": dict(self.metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.sac.load_full_state_dict(state["sac"])
        self.replay.load_state_dict(state["replay"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"].cpu())  # torch.load(map_location="cuda") moved it
        self.steps = int(state["steps"])
        self.updates_done = int(state.get("updates_done", 0))
        self.last_std = float(state.get("last_std", float("nan")))
        self.metrics = dict(state["metrics"])
