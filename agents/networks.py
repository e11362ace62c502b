"""Actor and twin critic of the multi-task SAC (architecture §5).

Two architectures, chosen by ``arch``:

* ``"shared"``: one plain MLP; the task identity reaches the network only through the one-hot in the
  observation, so ``task_ids`` is ignored.
* ``"multihead"``: a shared ReLU trunk and one output layer per task.  The K heads are one batched weight
  ``(K, hidden, out)``; every sample goes through all K heads (cheap: the heads are tiny next to the trunk) and
  its own task's output is gathered, so there is no Python loop over tasks and task k's output depends only on
  head k.

Every forward accepts any leading shape — ``[N, D]`` with ``task_ids [N]`` or ``[K, n, D]`` with
``task_ids [K, n]`` — and contains no in-place ops or data-dependent control flow, so ``torch.func.vmap`` can map
it over the task axis (pass the policy noise explicitly under ``vmap``: random ops are not vmappable by default).

Initialisation follows mtrl/CAGrad (``docs/architecture.md`` §11): Xavier-uniform weights, zero biases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCHS = ("shared", "multihead")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def init_linear(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` in ``module`` (use with ``apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


class MLP(nn.Module):
    """ReLU MLP ``in_dim → hidden_sizes… → out_dim`` acting on the last axis of any leading shape.

    ``activate_output`` adds a ReLU after the last layer (used for the multi-head trunk).
    """

    def __init__(
        self, in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, activate_output: bool = False
    ) -> None:
        super().__init__()
        sizes = (in_dim, *hidden_sizes, out_dim)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2 or activate_output:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.apply(init_linear)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim) → (..., out_dim)."""
        return self.net(x)


class MultiHeadLinear(nn.Module):
    """K linear heads stored as one weight ``(K, in_dim, out_dim)`` and bias ``(K, out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, num_tasks: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tasks, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num_tasks, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform per head (fan-in ``in_dim``, fan-out ``out_dim``), zero biases."""
        num_tasks, in_dim, out_dim = self.weight.shape
        bound = math.sqrt(6.0 / (in_dim + out_dim))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """x: (..., in_dim), task_ids: (...) long → (..., out_dim) from each sample's own head."""
        all_heads = torch.einsum("...i,kio->...ko", x, self.weight) + self.bias  # (..., K, out)
        out_dim = all_heads.shape[-1]
        index = task_ids[..., None, None].expand(*task_ids.shape, 1, out_dim)
        return torch.gather(all_heads, -2, index).squeeze(-2)


class TaskMLP(nn.Module):
    """An MLP whose output layer is shared (``arch="shared"``) or one per task (``arch="multihead"``)."""

    def __init__(
        self, in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, num_tasks: int, arch: str
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if not hidden_sizes:
            raise ValueError("hidden_sizes must hold at least one layer width")
        self.arch = arch
        if arch == "shared":
            self.trunk = MLP(in_dim, hidden_sizes, out_dim)
            self.head = None
        else:
            self.trunk = MLP(in_dim, hidden_sizes[:-1], hidden_sizes[-1], activate_output=True)
            self.head = MultiHeadLinear(hidden_sizes[-1], out_dim, num_tasks)

    def forward(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """x: (..., in_dim), task_ids: (...) long → (..., out_dim)."""
        features = self.trunk(x)
        if self.head is None:
            return features
        return self.head(features, task_ids)


def head_parameter_names(module: nn.Module) -> frozenset[str]:
    """Names (as in ``module.named_parameters()``) of the parameters of its :class:`MultiHeadLinear` task heads.

    Each has a leading task axis K and slice k enters task k's output only; empty for ``arch="shared"``.
    """
    return frozenset(
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules() if isinstance(sub, MultiHeadLinear)
        for name, _ in sub.named_parameters(recurse=False)
    )


def gaussian_log_prob(noise: Tensor, log_std: Tensor) -> Tensor:
    """Log-density of ``mean + exp(log_std)·noise`` under N(mean, std²), summed over the last axis.

    noise, log_std: (..., A) → (...).
    """
    return (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)


def tanh_log_det(pre_tanh: Tensor) -> Tensor:
    """``Σ log(1 − tanh(u)²)`` over the last axis, computed without cancellation.

    Uses ``log(1 − tanh(u)²) = 2·(log 2 − u − softplus(−2u))``, exact for every u; the ``+ 1e-6`` of mtrl and
    CleanRL biases the density near saturation, which is why it is not used here.  pre_tanh: (..., A) → (...).
    """
    return (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)


class Actor(nn.Module):
    """Tanh-squashed diagonal Gaussian policy.

    ``log_std`` is bounded to ``[log_std_min, log_std_max]`` by mtrl's tanh rescale
    ``log_std_min + ½(log_std_max − log_std_min)(tanh(raw) + 1)`` — smooth, so its gradient never dies at a
    clamp boundary.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_tasks: int,
        hidden_sizes: tuple[int, ...],
        arch: str = "shared",
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        if not log_std_min < log_std_max:
            raise ValueError(f"log_std_min ({log_std_min}) must be < log_std_max ({log_std_max})")
        self.action_dim = action_dim
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)
        self.body = TaskMLP(obs_dim, hidden_sizes, 2 * action_dim, num_tasks, arch)

    def gaussian(self, obs: Tensor, task_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-squash mean and bounded log-std, each (..., A), for obs (..., D) and task_ids (...)."""
        mean, raw_log_std = self.body(obs, task_ids).chunk(2, dim=-1)
        span = self.log_std_max - self.log_std_min
        log_std = self.log_std_min + 0.5 * span * (torch.tanh(raw_log_std) + 1.0)
        return mean, log_std

    def forward(
        self, obs: Tensor, task_ids: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Reparameterised sample.

        obs: (..., D); task_ids: (...) long; noise: (..., A) standard normal, drawn here when None.
        Returns ``(action (..., A) in (−1, 1), log_prob (...), mean_action (..., A) = tanh(mean))``.
        """
        mean, log_std = self.gaussian(obs, task_ids)
        if noise is None:
            noise = torch.randn_like(mean)
        pre_tanh = mean + noise * log_std.exp()
        log_prob = gaussian_log_prob(noise, log_std) - tanh_log_det(pre_tanh)
        return torch.tanh(pre_tanh), log_prob, torch.tanh(mean)


class TwinCritic(nn.Module):
    """Two independent Q networks on ``obs ⊕ action``, one module so that its parameters are one set."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_tasks: int,
        hidden_sizes: tuple[int, ...],
        arch: str = "shared",
    ) -> None:
        super().__init__()
        self.q1 = TaskMLP(obs_dim + action_dim, hidden_sizes, 1, num_tasks, arch)
        self.q2 = TaskMLP(obs_dim + action_dim, hidden_sizes, 1, num_tasks, arch)

    def forward(self, obs: Tensor, action: Tensor, task_ids: Tensor) -> tuple[Tensor, Tensor]:
        """obs: (..., D), action: (..., A), task_ids: (...) → (q1 (...), q2 (...))."""
        x = torch.cat((obs, action), dim=-1)
        return self.q1(x, task_ids).squeeze(-1), self.q2(x, task_ids).squeeze(-1)
