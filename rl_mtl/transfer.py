"""One host→device transfer per loop step (architecture §7).

A loop step hands the learner K transitions (obs, action, reward, next obs, terminated) and the K observations to
act on next.  On CUDA they are packed into one pinned host buffer, row k = task k:

    [ obs (D) | action (A) | reward | next_obs (D) | terminated | act_obs (D) ]

and cross in one non-blocking copy; the fields are views of the device copy, so the replay's writes and the next
forward pass read them without another transfer or a host synchronisation.  Two pinned buffers alternate, and a
buffer is refilled only once its previous copy has completed (an event, normally long done).  On the CPU the
arrays are wrapped as they are.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class StepTensors(NamedTuple):
    """A step on the learner's device: obs, next_obs, act_obs (K, D); action (K, A); reward, terminated (K,)."""

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor
    act_obs: Tensor


class StepTransfer:
    """Moves one loop step to ``device``: one pinned, batched copy on CUDA; zero-copy wrapping on the CPU."""

    def __init__(self, num_tasks: int, obs_dim: int, action_dim: int, device: torch.device) -> None:
        self.device = torch.device(device)
        self.num_tasks, self.obs_dim, self.action_dim = int(num_tasks), int(obs_dim), int(action_dim)
        d, a = self.obs_dim, self.action_dim
        # column ranges of the packed row
        self._cols = {"obs": (0, d), "action": (d, d + a), "reward": (d + a, d + a + 1),
                      "next_obs": (d + a + 1, 2 * d + a + 1), "terminated": (2 * d + a + 1, 2 * d + a + 2),
                      "act_obs": (2 * d + a + 2, 3 * d + a + 2)}
        self._packed = self.device.type == "cuda"
        if self._packed:
            width = 3 * d + a + 2
            self._host = [torch.empty(num_tasks, width, pin_memory=True) for _ in range(2)]
            self._events = [torch.cuda.Event() for _ in range(2)]
            self._dev = torch.empty(num_tasks, width, device=self.device)
            self._turn = 0

    def __call__(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
                 terminated: np.ndarray, act_obs: np.ndarray) -> StepTensors:
        """The step's arrays (obs, next_obs, act_obs (K, D); action (K, A); reward, terminated (K,)) on the device."""
        fields = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "terminated": terminated,
                  "act_obs": act_obs}
        if not self._packed:
            return StepTensors(**{k: torch.as_tensor(np.asarray(v)) for k, v in fields.items()})
        turn = self._turn
        self._turn = 1 - turn
        self._events[turn].synchronize()  # the copy that last read this buffer is done
        host = self._host[turn].numpy()
        for name, value in fields.items():
            lo, hi = self._cols[name]
            host[:, lo:hi] = np.asarray(value, dtype=np.float32).reshape(self.num_tasks, hi - lo)
        self._dev.copy_(self._host[turn], non_blocking=True)
        self._events[turn].record()
        view = {name: self._dev[:, lo:hi] for name, (lo, hi) in self._cols.items()}
        return StepTensors(obs=view["obs"], action=view["action"], reward=view["reward"][:, 0],
                           next_obs=view["next_obs"], terminated=view["terminated"][:, 0] > 0.5,
                           act_obs=view["act_obs"])
