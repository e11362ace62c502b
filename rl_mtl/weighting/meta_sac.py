"""IGBv2's weight learner: a small SAC over task-weight logits, built from the agent's own SAC.

It is :class:`agents.mtsac.MTSAC` with a single "task" (no one-hot), a K-dimensional tanh-squashed action and a
:class:`agents.replay.MultiTaskReplay` of the most recent meta-transitions, so the losses, the temperature, the
target critic and the non-finite guard are the agent's, not a copy of them.  It always lives on the CPU: its
networks are tiny (2×128 by default) and it acts once per hold window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rl_mtl.agents.mtsac import MTSAC, SACConfig
from rl_mtl.agents.replay import MultiTaskReplay


class MetaSAC:
    """Contextual controller ``state (S,) → action (A,) ∈ [−1, 1]^A`` trained by SAC on ``(s, a, r, s')``.

    warmup: meta-steps of uniformly random actions before the policy acts; updates: SAC updates per observed
    transition (once the replay holds ``batch_size`` of them).
    """

    def __init__(self, state_dim: int, action_dim: int, hidden_sizes: tuple[int, ...] = (128, 128),
                 gamma: float = 0.5, lr: float = 3e-3, init_alpha: float = 0.1, batch_size: int = 64,
                 updates: int = 4, capacity: int = 2000, warmup: int = 10, seed: int = 0) -> None:
        cfg = SACConfig(hidden_sizes=tuple(hidden_sizes), gamma=gamma, actor_lr=lr, critic_lr=lr, alpha_lr=lr,
                        init_alpha=init_alpha)
        self.action_dim = int(action_dim)
        self.batch_size, self.updates, self.warmup = int(batch_size), int(updates), int(warmup)
        with torch.random.fork_rng(devices=[]):  # the meta networks must not shift the agent's RNG stream
            torch.manual_seed(seed)
            self.sac = MTSAC(state_dim, action_dim, 1, cfg, device="cpu")
        self.replay = MultiTaskReplay(1, state_dim, action_dim, capacity, "cpu", seed=seed)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0  # actions taken
        self.metrics: dict[str, float] = {}

    def act(self, state: np.ndarray, explore: bool = True) -> np.ndarray:
        """An action for ``state``: random during the warm-up, then sampled from (or, without ``explore``, the
        mean of) the policy."""
        self.steps += 1
        if explore and self.steps <= self.warmup:
            return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
        obs = torch.as_tensor(state, dtype=torch.float32)[None]
        with torch.no_grad():
            noise = torch.randn(1, self.action_dim, generator=self.generator)
            action, _, mean = self.sac.actor(obs, torch.zeros(1, dtype=torch.long), noise)
        return (action if explore else mean)[0].numpy()

    def observe(self, state: np.ndarray, action: np.ndarray, reward: float, next_state: np.ndarray) -> None:
        """Store one transition (never terminal: the weighting problem runs as long as training) and learn."""
        self.replay.add(state[None], action[None], [reward], next_state[None], [False])
        if len(self.replay) < self.batch_size:
            return
        sums: dict[str, float] = {}
        for _ in range(self.updates):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.rng.integers(2**62)))
                metrics = self.sac.update(self.replay.sample(self.batch_size))
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
                "metrics": dict(self.metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.sac.load_full_state_dict(state["sac"])
        self.replay.load_state_dict(state["replay"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])
        self.metrics = dict(state["metrics"])
