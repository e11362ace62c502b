"""Per-task replay for the multi-task SAC (architecture §1, §5).

One ring buffer per task, stored as preallocated tensors with a leading task axis ``[K, capacity, ...]`` on the
learner's device, so a stratified batch ``[K, n, ...]`` (n = B/K samples of every task) is one gather per field.
All K tasks step together (one vector-env step adds one transition per task), so a single write pointer serves
every task.  Time-limit truncations are stored as *not* terminated: the critic bootstraps through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor


@dataclass(frozen=True)
class Batch:
    """A stratified batch laid out ``[K, n, ...]`` (or ``[K·n, ...]`` after :meth:`flatten`).

    obs: (K, n, D) float32; action: (K, n, A) float32; reward: (K, n) float32; next_obs: (K, n, D) float32;
    terminated: (K, n) float32, 1 only for true terminations; task: (K, n) long, ``task[k] == k``.
    """

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor
    task: Tensor

    @property
    def num_tasks(self) -> int:
        """K, the leading axis."""
        return self.reward.shape[0]

    def flatten(self) -> Batch:
        """The same transitions as ``[K·n, ...]`` (views of the stratified tensors)."""
        return Batch(
            obs=self.obs.flatten(0, 1),
            action=self.action.flatten(0, 1),
            reward=self.reward.flatten(0, 1),
            next_obs=self.next_obs.flatten(0, 1),
            terminated=self.terminated.flatten(0, 1),
            task=self.task.flatten(0, 1),
        )


class MultiTaskReplay:
    """K ring buffers of ``capacity_per_task`` transitions each, sampled with an owned, seeded generator."""

    _FIELDS = ("obs", "action", "reward", "next_obs", "terminated")

    def __init__(
        self,
        num_tasks: int,
        obs_dim: int,
        action_dim: int,
        capacity_per_task: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        for name, value in (
            ("num_tasks", num_tasks),
            ("obs_dim", obs_dim),
            ("action_dim", action_dim),
            ("capacity_per_task", capacity_per_task),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_tasks = int(num_tasks)
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.capacity = int(capacity_per_task)
        self.device = torch.device(device)
        k, c = self.num_tasks, self.capacity
        self.obs = torch.zeros(k, c, obs_dim, dtype=torch.float32, device=self.device)
        self.action = torch.zeros(k, c, action_dim, dtype=torch.float32, device=self.device)
        self.reward = torch.zeros(k, c, dtype=torch.float32, device=self.device)
        self.next_obs = torch.zeros(k, c, obs_dim, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(k, c, dtype=torch.bool, device=self.device)
        # row index for the stratified gather: (K, 1) broadcasts against (K, n) sample indices
        self._rows = torch.arange(k, device=self.device)[:, None]
        self._ptr = 0
        self._size = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def __len__(self) -> int:
        """Transitions stored per task."""
        return self._size

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the preallocated storage."""
        return sum(getattr(self, f).numel() * getattr(self, f).element_size() for f in self._FIELDS)

    def _to_device(self, name: str, value: ArrayLike, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """One host→device transfer of a field, checked against its expected shape."""
        tensor = torch.as_tensor(value, dtype=dtype, device=self.device)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        return tensor

    def add(
        self,
        obs: ArrayLike,
        action: ArrayLike,
        reward: ArrayLike,
        next_obs: ArrayLike,
        terminated: ArrayLike,
    ) -> None:
        """Add one transition per task (row k belongs to task k).

        obs, next_obs: (K, D); action: (K, A); reward: (K,); terminated: (K,) bool, True only for true
        terminations — pass False for time-limit truncations so the critic bootstraps through them.
        """
        k, d, a = self.num_tasks, self.obs_dim, self.action_dim
        i = self._ptr
        self.obs[:, i] = self._to_device("obs", obs, (k, d), torch.float32)
        self.action[:, i] = self._to_device("action", action, (k, a), torch.float32)
        self.reward[:, i] = self._to_device("reward", reward, (k,), torch.float32)
        self.next_obs[:, i] = self._to_device("next_obs", next_obs, (k, d), torch.float32)
        self.terminated[:, i] = self._to_device("terminated", terminated, (k,), torch.bool)
        self._ptr = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        """Stratified sample: ``batch_size // K`` transitions of every task, uniform with replacement.

        Returns a :class:`Batch` laid out ``[K, n, ...]``.  Raises ``ValueError`` when ``batch_size`` is not a
        positive multiple of K or the buffer is empty.
        """
        k = self.num_tasks
        if batch_size <= 0 or batch_size % k != 0:
            raise ValueError(f"batch_size must be a positive multiple of K={k} (num_tasks), got {batch_size}")
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        n = batch_size // k
        idx = torch.randint(
            0, self._size, (k, n), generator=self.generator, device=self.device
        )
        return Batch(
            obs=self.obs[self._rows, idx],
            action=self.action[self._rows, idx],
            reward=self.reward[self._rows, idx],
            next_obs=self.next_obs[self._rows, idx],
            terminated=self.terminated[self._rows, idx].float(),
            task=self._rows.expand(k, n).contiguous(),
        )

    def state_dict(self, include_data: bool = False) -> dict[str, Any]:
        """Pointer, size, generator state and shape; the stored transitions only when ``include_data``."""
        state: dict[str, Any] = {
            "num_tasks": self.num_tasks,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "capacity": self.capacity,
            "ptr": self._ptr,
            "size": self._size,
            "generator": self.generator.get_state(),
        }
        if include_data:
            # only the filled prefix: slots past `size` have never been written
            state["data"] = {f: getattr(self, f)[:, : self._size].cpu().clone() for f in self._FIELDS}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Without data (``include_data=False``) only the sampling generator is restored and the buffer starts
        empty: adopting the saved counters over contents that were not saved would sample zeros.
        """
        for name, mine in (
            ("num_tasks", self.num_tasks),
            ("obs_dim", self.obs_dim),
            ("action_dim", self.action_dim),
            ("capacity", self.capacity),
        ):
            if state[name] != mine:
                raise ValueError(f"replay state has {name}={state[name]}, this buffer has {mine}")
        self.generator.set_state(state["generator"].cpu())  # an RNG state is a CPU tensor; map_location moves it
        if "data" not in state:
            self._ptr = 0
            self._size = 0
            return
        self._ptr = int(state["ptr"])
        self._size = int(state["size"])
        for f in self._FIELDS:
            getattr(self, f)[:, : self._size] = state["data"][f].to(self.device)
