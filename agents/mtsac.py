"""Multi-task SAC with per-task loss vectors (architecture §4, §5).

Every loss is a K-vector: entry k is the mean over task k's rows of a batch laid out ``[K, n, ...]``, so the
mean over K equals the plain single-task SAC loss on the flattened batch.  The vectors are reduced to
gradients in exactly one place, :meth:`MTSAC._step`, through ``self.reducers[name]`` (``"critic"``,
``"actor"``); the default reducer is ``losses.mean().backward()``.  Each reducer receives a :class:`TaskLoss`:
a thunk computing the loss vector with its graph, plus one task's loss as a function of a parameter dict and
the batch tensors with their task axis, so a gradient combiner can take all K per-task gradients (and the
losses) in one ``vmap`` pass (``rl_mtl/pertask.py``) by replacing a reducer — the agent never names one.
The temperature step always uses the plain mean, never a combiner (architecture §4), with one temperature per task and
with a shared one (``shared_alpha``) alike — see :meth:`MTSAC.alpha_losses` for why this departs from mtrl/CAGrad.

The per-task loss functions (:meth:`MTSAC.critic_loss_fn`, :meth:`MTSAC.actor_loss_fn`) take an optional
parameter dict for ``torch.func.functional_call`` and reduce over the sample axis only, so
``vmap(grad(...))`` over the task axis yields all K per-task gradients in one pass.

One SAC step reads like CleanRL's: critic, actor (every ``actor_update_every``, with the temperature right after
it on the same log-probabilities, as mtrl does), Polyak target update (every ``target_update_every``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from rl_mtl.agents.networks import ARCHS, Actor, TwinCritic, head_parameter_names
from rl_mtl.agents.replay import Batch

if TYPE_CHECKING:
    from rl_mtl.compiled import CompiledUpdate

@dataclass(frozen=True)
class TaskLoss:
    """A per-task loss as handed to a reducer.

    params: name → the parameters the step updates;
    batched: ``() -> (losses (K,), aux)`` — every task's loss at once, with its autograd graph (the plain path);
    fn: ONE task's ``fn(params_dict, *inputs_k) -> (loss (), aux)`` for ``torch.func`` (None where the loss is
    never combined); inputs: tensors with a leading task axis K (that task's rows, targets, noise, temperature).
    ``aux`` is what the agent needs back besides the losses (Q values, log-probabilities).
    heads: the names in ``params`` of task heads (``arch="multihead"``): a leading task axis K whose slice k enters
    task k's loss only, so a reducer may give them each task's own gradient (``combine_params=shared``).
    """

    params: dict[str, nn.Parameter]
    batched: Callable[[], tuple[Tensor, Tensor]]
    fn: Callable[..., tuple[Tensor, Tensor]] | None = None
    inputs: tuple[Tensor, ...] = ()
    heads: frozenset[str] = frozenset()


#: writes the gradient of a reduction of the task losses into ``TaskLoss.params``' ``.grad`` and returns the
#: detached ``(losses (K,), aux)`` it computed on the way (a combiner takes them from its vmapped pass, so the
#: forward pass is never run twice)
Reducer = Callable[[TaskLoss], tuple[Tensor, Tensor]]


def keep_capturable(optimizer: torch.optim.Optimizer, capturable: list[bool]) -> None:
    """Give each param group back the ``capturable`` flag it had before a ``load_state_dict``, with its step counts
    where that flag wants them (on the parameters' device, or on the CPU).

    The flag says where the optimiser runs (a CUDA-graph-captured compiled step needs it), not what it learnt: a
    checkpoint of a compiled CUDA run holds ``capturable=True``, which an eager CPU step refuses.
    """
    for group, flag in zip(optimizer.param_groups, capturable):
        group["capturable"] = flag
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(p.device if flag else "cpu")


def mean_reducer(task_loss: TaskLoss) -> tuple[Tensor, Tensor]:
    """Plain multi-task SAC: the gradient of the mean over tasks, accumulated into its parameters only."""
    losses, aux = task_loss.batched()
    losses.mean().backward(inputs=list(task_loss.params.values()))
    return losses.detach(), aux.detach()


@dataclass(frozen=True)
class SACConfig:
    """Multi-task SAC hyperparameters; defaults follow the mtrl/CAGrad MT10 setup (references.md)."""

    hidden_sizes: tuple[int, ...] = (400, 400, 400)
    """Widths of the hidden layers of actor and both critics."""
    arch: str = "shared"
    """``shared`` (one MLP, task from the one-hot in obs) or ``multihead`` (shared trunk, one head per task)."""
    gamma: float = 0.99
    """Discount factor, in [0, 1)."""
    tau: float = 0.005
    """Polyak rate of the target critic, in (0, 1]."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor, > 0."""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critic, > 0."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the temperatures log α, > 0."""
    init_alpha: float = 1.0
    """Initial temperature α, > 0."""
    shared_alpha: bool = False
    """One temperature for all tasks (CAGrad/FAMO runs) instead of one per task (mtrl MTSAC)."""
    target_entropy: float | None = None
    """Target policy entropy; None means −action_dim."""
    log_std_min: float = -20.0
    """Lower bound of the policy log-std."""
    log_std_max: float = 2.0
    """Upper bound of the policy log-std, > log_std_min."""
    actor_update_every: int = 1
    """Update actor and temperature every this many critic updates, >= 1."""
    target_update_every: int = 1
    """Polyak-update the target critic every this many updates, >= 1."""
    grad_clip: float = 0.0
    """Max global gradient norm per optimiser (0 = no clipping), >= 0."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        checks: list[tuple[str, bool, str]] = [
            ("hidden_sizes", len(self.hidden_sizes) > 0 and min(self.hidden_sizes, default=0) > 0,
             "a non-empty tuple of positive ints"),
            ("arch", self.arch in ARCHS, f"one of {ARCHS}"),
            ("gamma", 0.0 <= self.gamma < 1.0, "in [0, 1)"),
            ("tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("actor_lr", self.actor_lr > 0.0, "> 0"),
            ("critic_lr", self.critic_lr > 0.0, "> 0"),
            ("alpha_lr", self.alpha_lr > 0.0, "> 0"),
            ("init_alpha", self.init_alpha > 0.0 and math.isfinite(self.init_alpha), "finite and > 0"),
            ("target_entropy", self.target_entropy is None or math.isfinite(self.target_entropy),
             "None or finite"),
            ("log_std_max", self.log_std_min < self.log_std_max, f"> log_std_min ({self.log_std_min})"),
            ("actor_update_every", self.actor_update_every >= 1, ">= 1"),
            ("target_update_every", self.target_update_every >= 1, ">= 1"),
            ("grad_clip", self.grad_clip >= 0.0, ">= 0 (0 = off)"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"SACConfig.{name} must be {allowed}, got {getattr(self, name)!r}")


class MTSAC(nn.Module):
    """Multi-task SAC: actor, twin critic, target critic, temperatures (K,) or (1,), three Adam optimisers.

    Counters: ``num_updates`` (calls of :meth:`update`) and ``skipped_steps`` (optimiser steps skipped because a
    loss or gradient was non-finite).  ``state_dict()`` holds the networks and ``log_alpha`` only;
    :meth:`full_state_dict` adds the optimisers and counters for checkpoints.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_tasks: int,
        cfg: SACConfig,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_tasks = int(num_tasks)
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self.target_entropy = float(-action_dim if cfg.target_entropy is None else cfg.target_entropy)
        self.actor = Actor(obs_dim, action_dim, num_tasks, cfg.hidden_sizes, cfg.arch,
                           cfg.log_std_min, cfg.log_std_max)
        self.critic = TwinCritic(obs_dim, action_dim, num_tasks, cfg.hidden_sizes, cfg.arch)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_heads = head_parameter_names(self.critic)  # empty unless arch="multihead"
        self.actor_heads = head_parameter_names(self.actor)
        num_alphas = 1 if cfg.shared_alpha else self.num_tasks
        self.log_alpha = nn.Parameter(torch.full((num_alphas,), math.log(cfg.init_alpha)))
        self.to(self.device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.reducers: dict[str, Reducer] = {"critic": mean_reducer, "actor": mean_reducer}
        self.num_updates = 0
        self.skipped_steps = 0
        #: the update's tensor work through torch.compile (``--compile``, ``rl_mtl.compiled.compile_update``)
        self.compiled: CompiledUpdate | None = None

    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        """The critic's, the actor's and the temperatures' Adam optimisers."""
        return self.critic_optimizer, self.actor_optimizer, self.alpha_optimizer

    # ------------------------------------------------------------------ acting
    @property
    def alpha(self) -> Tensor:
        """Temperatures α (K,) — a shared one is broadcast to every task; carries gradient to ``log_alpha``."""
        return self.log_alpha.exp().expand(self.num_tasks)

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor, task_ids: np.ndarray | Tensor, deterministic: bool = False) -> np.ndarray:
        """Actions (N, A) in [−1, 1] for obs (N, D) and task_ids (N,); the squashed mean when deterministic."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        task_t = torch.as_tensor(task_ids, dtype=torch.long, device=self.device)
        action, _, mean_action = self.actor(obs_t, task_t)
        return (mean_action if deterministic else action).cpu().numpy()

    # ------------------------------------------------------------------ per-task losses
    @torch.no_grad()
    def critic_targets(self, batch: Batch, noise: Tensor | None = None) -> Tensor:
        """Soft TD targets (K, n): ``r + γ(1−terminated)(min Q'(s',a') − α_k log π(a'|s'))``, a' ~ π(·|s').

        noise: (K, n, A) policy noise for a' (drawn when None).
        """
        next_action, next_log_prob, _ = self.actor(batch.next_obs, batch.task, noise)
        q1, q2 = self.critic_target(batch.next_obs, next_action, batch.task)
        alpha = self.alpha.detach()[:, None]
        soft_value = torch.minimum(q1, q2) - alpha * next_log_prob
        return batch.reward + self.cfg.gamma * (1.0 - batch.terminated) * soft_value

    def critic_loss_fn(
        self,
        obs: Tensor,
        action: Tensor,
        task: Tensor,
        target: Tensor,
        params: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-task critic loss: MSE of Q1 plus MSE of Q2 to ``target``, mean over the sample axis.

        obs (..., n, D), action (..., n, A), task (..., n), target (..., n); ``params`` replaces the critic's
        parameters (``functional_call``).  Returns ``(loss (...), q1 (..., n))``.
        """
        if params is None:
            q1, q2 = self.critic(obs, action, task)
        else:
            q1, q2 = functional_call(self.critic, params, (obs, action, task))
        loss = (q1 - target).pow(2).mean(-1) + (q2 - target).pow(2).mean(-1)
        return loss, q1

    def critic_losses(self, batch: Batch, target: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """Critic loss of each task (K,); the targets are computed (with ``noise``) when not given."""
        if target is None:
            target = self.critic_targets(batch, noise)
        return self.critic_loss_fn(batch.obs, batch.action, batch.task, target)[0]

    def actor_loss_fn(
        self,
        obs: Tensor,
        task: Tensor,
        alpha: Tensor,
        noise: Tensor,
        params: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-task actor loss ``mean_n(α log π(a|s) − min Q(s, a))``, a = reparameterised sample.

        obs (..., n, D), task (..., n), alpha (...) detached, noise (..., n, A); ``params`` replaces the actor's
        parameters.  The critic enters with detached parameters, so no gradient ever reaches it.
        Returns ``(loss (...), log_prob (..., n))``.
        """
        if params is None:
            action, log_prob, _ = self.actor(obs, task, noise)
        else:
            action, log_prob, _ = functional_call(self.actor, params, (obs, task, noise))
        frozen_critic = {k: v.detach() for k, v in self.critic.named_parameters()}
        q1, q2 = functional_call(self.critic, frozen_critic, (obs, action, task))
        loss = (alpha[..., None] * log_prob - torch.minimum(q1, q2)).mean(-1)
        return loss, log_prob

    def actor_losses(self, batch: Batch, noise: Tensor | None = None) -> Tensor:
        """Actor loss of each task (K,) with each task's own (detached) α_k; noise (K, n, A) or drawn."""
        if noise is None:
            noise = torch.randn_like(batch.action)
        return self.actor_loss_fn(batch.obs, batch.task, self.alpha.detach(), noise)[0]

    def alpha_losses(self, log_prob: Tensor) -> Tensor:
        """Temperature loss of each task (K,): ``mean_n α_k (−log π − target_entropy)``; log_prob (K, n).

        Only ``log_alpha`` receives gradient (the log-probabilities are detached here), and entry k only
        through ``log_alpha[k]`` (or the shared value).

        These losses never go through a gradient combiner, with ``shared_alpha`` too.  mtrl's PCGrad and CAGrad's
        MT10 code (one shared temperature) route the temperature loss through the same ``_compute_gradient``
        hook as the networks (FAMO's RL code does not); no paper motivates it, it follows from the generic hook.
        With one temperature the K task gradients are scalars ``g_k = α(H_k − H̄)`` (entropy minus target), the
        Gram is rank one, and "conflict" is just a sign disagreement — the normal state of a temperature that
        balances tasks above and below the entropy target.  There PCGrad and MGDA return d = 0, CAGrad/IMGrad
        (c = 0.9) about 5 % of the mean step, Nash-MTL has no positive solution (it falls back), and FAMO takes
        the log of losses that are negative half the time.  Routing would freeze the shared temperature exactly
        when tasks disagree, i.e. stop enforcing the mean-entropy constraint; with one temperature per task the
        gradients are orthogonal and a combiner would only rescale each task's step.  So the plain mean step
        (the SAC dual step on the mean entropy) is used whatever the method.
        """
        return (self.alpha[:, None] * (-log_prob.detach() - self.target_entropy)).mean(-1)

    # ------------------------------------------------------------------ the update
    def _step(self, name: str, task_loss: TaskLoss, optimizer: torch.optim.Optimizer) -> tuple[Tensor, Tensor]:
        """The one place a loss vector (K,) becomes an optimiser step; returns the detached ``(losses, aux)``.

        Gradients come from ``self.reducers[name]`` (``mean_reducer`` by default; always for ``"alpha"``).
        A non-finite loss or gradient skips the step and counts it, leaving weights and optimiser state intact.
        Deciding to skip is this step's single host synchronisation. A reducer with an ``after_step`` method is
        told once the parameters have moved (FAMO measures the loss decrease on the same batch).
        """
        params = list(task_loss.params.values())
        optimizer.zero_grad(set_to_none=True)
        reducer = mean_reducer if name == "alpha" else self.reducers[name]
        losses, aux = reducer(task_loss)
        grads = [p.grad for p in params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)
        if not bool(torch.isfinite(losses).all() & torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return losses, aux
        if self.cfg.grad_clip > 0.0:  # eager under --compile too: see rl_mtl.compiled.CompiledUpdate.step
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.grad_clip, grad_norm)
        if self.compiled is not None:
            self.compiled.step(optimizer)
        else:
            optimizer.step()
        after_step = getattr(reducer, "after_step", None)
        if after_step is not None:
            after_step(task_loss)
        return losses, aux

    def _critic_task_loss(self, params: dict[str, Tensor], obs: Tensor, action: Tensor, task: Tensor,
                          target: Tensor) -> tuple[Tensor, Tensor]:
        """One task's critic loss and Q1 values as a function of the critic's parameters (for ``torch.func``)."""
        return self.critic_loss_fn(obs, action, task, target, params)

    def _actor_task_loss(self, params: dict[str, Tensor], obs: Tensor, task: Tensor, alpha: Tensor,
                         noise: Tensor) -> tuple[Tensor, Tensor]:
        """One task's actor loss and log-probabilities as a function of the actor's parameters."""
        return self.actor_loss_fn(obs, task, alpha, noise, params)

    @torch.no_grad()
    def _update_target(self) -> None:
        """Polyak: ``θ' ← θ' + τ(θ − θ')``."""
        target = list(self.critic_target.parameters())
        torch._foreach_lerp_(target, list(self.critic.parameters()), self.cfg.tau)

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One SAC step on a batch laid out ``[K, n, ...]``; returns detached metrics (no host sync for them).

        Keys: ``loss/critic``, ``q_mean`` (K,) every step; ``loss/actor``, ``loss/alpha``, ``entropy`` (K,) on
        actor steps; ``alpha`` (K,) and ``skipped_steps`` () always.
        """
        metrics: dict[str, Tensor] = {}
        if self.compiled is None:
            target = self.critic_targets(batch)
        else:  # the target policy's noise is drawn here, eagerly: the same random numbers as the eager update
            self.compiled.begin_update()
            target = self.compiled.targets(batch, torch.randn_like(batch.action))
        critic_inputs = (batch.obs, batch.action, batch.task, target)
        critic_loss, q1 = self._step("critic", TaskLoss(
            dict(self.critic.named_parameters()), lambda: self.critic_loss_fn(*critic_inputs),
            self._critic_task_loss, critic_inputs, self.critic_heads), self.critic_optimizer)
        metrics["loss/critic"] = critic_loss
        metrics["q_mean"] = q1.mean(-1)

        if self.num_updates % self.cfg.actor_update_every == 0:
            actor_inputs = (batch.obs, batch.task, self.alpha.detach(), torch.randn_like(batch.action))
            actor_loss, log_prob = self._step("actor", TaskLoss(
                dict(self.actor.named_parameters()), lambda: self.actor_loss_fn(*actor_inputs),
                self._actor_task_loss, actor_inputs, self.actor_heads), self.actor_optimizer)
            # the temperatures: always the plain step, never a combiner (architecture §4; alpha_losses says why)
            alpha_loss, _ = self._step("alpha", TaskLoss(
                {"log_alpha": self.log_alpha}, lambda: (self.alpha_losses(log_prob), log_prob)), self.alpha_optimizer)
            metrics["loss/actor"] = actor_loss
            metrics["loss/alpha"] = alpha_loss
            metrics["entropy"] = -log_prob.mean(-1)

        if self.num_updates % self.cfg.target_update_every == 0:
            self._update_target()
        self.num_updates += 1
        metrics["alpha"] = self.alpha.detach().clone()
        metrics["skipped_steps"] = torch.tensor(float(self.skipped_steps))
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def full_state_dict(self) -> dict[str, object]:
        """Networks, ``log_alpha``, the three optimisers and the counters — everything to resume training."""
        return {
            "modules": self.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "num_updates": self.num_updates,
            "skipped_steps": self.skipped_steps,
        }

    def load_full_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`full_state_dict` (same architecture and task count required).

        Optimiser states are deep-copied: ``Optimizer.load_state_dict`` keeps the given tensors, which would
        otherwise be shared with (and mutated by) the agent that produced ``state``.
        """
        self.load_state_dict(state["modules"])
        for key in ("actor_optimizer", "critic_optimizer", "alpha_optimizer"):
            optimizer = getattr(self, key)
            capturable = [group.get("capturable", False) for group in optimizer.param_groups]
            optimizer.load_state_dict(copy.deepcopy(state[key]))
            keep_capturable(optimizer, capturable)
        self.num_updates = int(state["num_updates"])
        self.skipped_steps = int(state["skipped_steps"])
