"""Route the agent's per-task losses through a gradient combiner (DESIGN §1, §4).

A :class:`CombinedStep` is a reducer for :class:`agents.mtsac.TaskLoss`: it takes the K per-task gradients of the
shared parameters in one ``vmap`` pass, the Gram ``G Gᵀ``, asks the combiner for weights and writes
``d = Σ_k w_k g_k`` into ``.grad``. Loss-only combiners (FAMO) skip the per-task gradients: their direction is the
gradient of ``Σ_k w_k L_k``, one ordinary backward. Plain MTSAC keeps its single backward pass and computes the
per-task gradients only every ``diag_every`` updates, so its imbalance diagnostics cost next to nothing.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from agents.mtsac import TaskLoss
from rl_mtl.combiners import Combiner, make
from rl_mtl.combiners.diagnostics import pareto_stats
from rl_mtl.pertask import detached_params, gram, per_task_gradients, write_direction

#: combined losses by default; FAMO reweights only the critic, as in its reference (references.md)
DEFAULT_COMBINE = {"famo": ("critic",)}
PARTS = ("critic", "actor")


class CombinedStep:
    """Reducer that writes the combined direction of one loss (critic or actor) and aggregates diagnostics.

    combiner: the method (for plain MTSAC, ``mean`` with ``plain=True``: the gradient stays one backward of the
    mean loss); diag_every: per-task gradients for diagnostics every this many calls (0: never, when plain).
    """

    def __init__(self, combiner: Combiner, plain: bool = False, diag_every: int = 10) -> None:
        self.combiner = combiner
        self.plain = plain
        self.diag_every = diag_every
        self.calls = 0
        self.initial_losses: Tensor | None = None
        self._has_after_step = type(combiner).after_step is not Combiner.after_step
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._vectors: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ the reducer
    def __call__(self, task_loss: TaskLoss) -> tuple[Tensor, Tensor]:
        params = list(task_loss.params.values())
        diagnose = self.diag_every > 0 and self.calls % self.diag_every == 0 and task_loss.fn is not None
        self.calls += 1
        if self.plain or not self.combiner.needs_gram:
            losses, aux = task_loss.batched()
            weights = None
            if self.plain:
                losses.mean().backward(inputs=params)
            else:
                t0 = time.perf_counter()
                weights = self.combiner(None, losses.detach())
                self._add("solver_ms", 1e3 * (time.perf_counter() - t0))
                (weights.detach() * losses).sum().backward(inputs=params)
            losses, aux = losses.detach(), aux.detach()
            if diagnose:
                G = self._gradients(task_loss)[0]
                k = G.shape[0]
                used = weights if weights is not None else torch.full((k,), 1.0 / k)
                method_stats = self.combiner.stats() if weights is not None else {}
                self._add_stats({**method_stats, **pareto_stats(gram(G), used.detach().cpu())})
        else:
            # one vmapped pass gives the gradients, the losses and the aux outputs: no separate forward
            G, losses, aux = self._gradients(task_loss)
            t0 = time.perf_counter()
            weights = self.combiner(gram(G), losses)
            self._add("solver_ms", 1e3 * (time.perf_counter() - t0))
            write_direction(weights, G, params)
            if diagnose:
                self._add_stats(self.combiner.stats())
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        # per-task progress L_k(t) / L_k(0) (IMGrad paper Eqn 1)
        self._add_vector("progress", losses / self.initial_losses)
        return losses, aux

    def after_step(self, task_loss: TaskLoss) -> None:
        """Give a stateful combiner (FAMO) the losses re-measured on the same batch after the optimiser step."""
        if not self._has_after_step or self.plain or task_loss.fn is None:
            return
        in_dims = (None, *([0] * len(task_loss.inputs)))
        with torch.no_grad():
            after, _ = vmap(task_loss.fn, in_dims=in_dims)(detached_params(task_loss.params), *task_loss.inputs)
        self.combiner.after_step(after)

    @staticmethod
    def _gradients(task_loss: TaskLoss) -> tuple[Tensor, Tensor, Tensor]:
        """``G (K, m)``, losses (K,) and aux of one vmapped pass over the task axis."""
        return per_task_gradients(task_loss.fn, detached_params(task_loss.params), task_loss.inputs)

    # ------------------------------------------------------------------ diagnostics
    def _add(self, key: str, value: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _add_vector(self, key: str, value: Tensor) -> None:
        value = value.detach().float()
        self._vectors[key] = self._vectors[key] + value if key in self._vectors else value
        self._counts[key] = self._counts.get(key, 0) + 1

    def _add_stats(self, stats: dict[str, float]) -> None:
        """Scalars summed for the interval mean; ``grad_norm/<k>`` and ``weight/<k>`` gathered into vectors."""
        per_task: dict[str, dict[int, float]] = {}
        for key, value in stats.items():
            prefix, _, index = key.partition("/")
            if index.isdigit():
                per_task.setdefault(prefix, {})[int(index)] = value
            elif key == "pareto_failure":
                self._add("pareto_failure_rate", value)
            elif key != "fallbacks_total":
                self._add(key, value)
        for prefix, values in per_task.items():
            self._add_vector(prefix, torch.tensor([values[i] for i in sorted(values)]))
        self._sums["fallbacks_total"] = float(self.combiner.fallbacks)
        self._counts["fallbacks_total"] = 1

    def pop_stats(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Interval means: scalars (imbalance ratio, cos θ, min cos(d, g_k), Pareto-failure rate, ‖d‖, solver ms,
        fallbacks) and per-task vectors (progress, grad_norm, weight); then clears them."""
        scalars = {k: v / self._counts[k] for k, v in self._sums.items()}
        vectors = {k: (v / self._counts[k]).cpu() for k, v in self._vectors.items()}
        self._sums, self._vectors = {}, {}
        self._counts = {}
        return scalars, vectors

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Combiner state (FAMO logits, Nash warm start, PCGrad's RNG), call count and initial losses."""
        return {"combiner": self.combiner.state_dict(), "calls": self.calls,
                "initial_losses": None if self.initial_losses is None else self.initial_losses.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.combiner.load_state_dict(state["combiner"])
        self.calls = int(state["calls"])
        self.initial_losses = state["initial_losses"]  # already on the learner's device (torch.load's map_location)


def combined_parts(method: str, combine: str) -> tuple[str, ...]:
    """Which losses go through the combiner: ``combine`` as given, or the method's default for ``auto``."""
    if combine == "auto":
        return DEFAULT_COMBINE.get(method, PARTS)
    return tuple(part.strip() for part in combine.split(",") if part.strip())


def build_steps(method: str, hparams: dict[str, Any], combine: str, diag_every: int, seed: int
                ) -> dict[str, CombinedStep]:
    """One :class:`CombinedStep` per combined loss (its own combiner instance and state) and a plain,
    diagnosing one for every other loss; ``mtsac`` is plain everywhere."""
    parts = () if method == "mtsac" else combined_parts(method, combine)
    steps = {}
    for offset, part in enumerate(PARTS):
        if part in parts:
            steps[part] = CombinedStep(make(method, seed=seed + offset, **hparams), diag_every=diag_every)
        else:
            steps[part] = CombinedStep(make("mean"), plain=True, diag_every=diag_every)
    return steps
