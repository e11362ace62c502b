"""Route the agent's per-task losses through a gradient combiner (architecture §1, §4).

A :class:`CombinedStep` is a reducer for :class:`agents.mtsac.TaskLoss`: it takes the K per-task gradients of the
shared parameters in one ``vmap`` pass, the Gram ``G Gᵀ``, asks the combiner for weights and writes
``d = Σ_k w_k g_k`` into ``.grad``. Loss-only combiners (FAMO) skip the per-task gradients: their direction is the
gradient of ``Σ_k w_k L_k``, one ordinary backward. Plain MTSAC keeps its single backward pass and computes the
per-task gradients only every ``diag_every`` updates, so its imbalance diagnostics cost next to nothing.

A loss weighting (``rl_mtl/weighting``, architecture §6) composes with every path: its weights ``λ`` scale task k's
gradient by ``s_k`` (``λ_k`` or ``λ_k / L_k`` in log space), so a combiner is handed the Gram of ``diag(s) G`` and
the direction is ``Σ_k w_k s_k g_k`` — exactly the combiner applied to the weighted task gradients.  FAMO, which
works on log-losses, takes the weighting into its own terms instead ("FAMO on the weighted losses",
``combiners/famo.py``).  ``grad_scale`` reads the task-gradient norms from the Gram's diagonal where the route has
it, and on the plain path has the per-task gradients taken once per hold window.

Which parameters the combiner acts on (``combine_params``; only ``arch=multihead`` has task heads):

* ``all`` (default; mtrl/CAGrad's reference, which combine the gradient of every actor/critic parameter): the
  heads are part of ``g_k``, so head k moves by ``w_k s_k ∂L_k/∂head_k`` — a zero weight freezes that head for the
  step, and the heads' (mutually orthogonal) gradients add to the Gram's diagonal;
* ``shared``: the Gram, the weights and ``d = Σ_k w_k s_k g_k`` cover the trunk only, and head k gets its own task's
  gradient ``s_k ∂L_k/∂head_k`` (weight 1, whatever the method: for plain MTSAC that is K times its mean weight
  1/K, which Adam absorbs but a ``grad_clip`` norm sees).  It applies to every loss, combined or plain.

The temperature losses never reach a CombinedStep (``agents.mtsac.MTSAC.alpha_losses`` says why).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rl_mtl.agents.mtsac import TaskLoss
from rl_mtl.combiners import Combiner, make
from rl_mtl.combiners.diagnostics import pareto_stats
from rl_mtl.config import split_parts
from rl_mtl.pertask import detached_params, gradients_and_gram, task_losses, write_direction
from rl_mtl.weighting import Weighting, gradient_scale
from rl_mtl.weighting import hparams as weighting_hparams
from rl_mtl.weighting import make as make_weighting

#: combined losses by default; FAMO reweights only the critic, as in its reference (references.md)
DEFAULT_COMBINE = {"famo": ("critic",)}
PARTS = ("critic", "actor")
#: values of ``combine_params``: the parameters the combiner acts on (see the module docstring)
COMBINE_PARAMS = ("all", "shared")


class CombinedStep:
    """Reducer that writes the combined direction of one loss (critic or actor) and aggregates diagnostics.

    combiner: the method (for plain MTSAC, ``mean`` with ``plain=True``: the gradient stays one backward of the
    mean loss); diag_every: per-task gradients for diagnostics every this many calls (0: never, when plain);
    weighting: task weights applied before the combiner (None: unweighted); ``info`` is what the trainer tells
    the weighting about the run (recent success per task, progress); combine_params: ``all`` or ``shared`` (the
    task heads get their own task's gradient; see the module docstring).
    """

    def __init__(self, combiner: Combiner, plain: bool = False, diag_every: int = 10,
                 weighting: Weighting | None = None, combine_params: str = "all") -> None:
        if combine_params not in COMBINE_PARAMS:
            raise ValueError(f"combine_params must be one of {COMBINE_PARAMS}, got {combine_params!r}")
        self.combine_params = combine_params
        self.combiner = combiner
        self.weighting = weighting
        self.info: dict[str, Any] = {}
        self._before: Tensor | None = None  # the losses the weighting saw this call, for its observe()
        self.plain = plain
        self.diag_every = diag_every
        self.calls = 0
        self.initial_losses: Tensor | None = None
        self._has_after_step = type(combiner).after_step is not Combiner.after_step
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._vectors: dict[str, Tensor] = {}
        # the step's tensor work; --compile swaps in torch.compile'd versions (rl_mtl/compiled.py) and sets
        # weighted_gradients, which replaces the plain path's autograd backward by one functional pass
        self.gradients_and_gram = gradients_and_gram
        self.task_losses = task_losses
        self.weighted_gradients: Callable[..., tuple[dict[str, Tensor], Tensor, Tensor]] | None = None

    # ------------------------------------------------------------------ the reducer
    def __call__(self, task_loss: TaskLoss) -> tuple[Tensor, Tensor]:
        ordered, num_trunk, trunk_size = self._layout(task_loss)
        params = list(ordered.values())
        split = trunk_size > 0  # combine_params=shared with task heads: they take their own task's gradient
        diagnose = self.diag_every > 0 and self.calls % self.diag_every == 0 and task_loss.fn is not None
        self.calls += 1
        if self.plain or not self.combiner.needs_gram:
            functional = self.weighted_gradients is not None and task_loss.fn is not None
            if functional:  # --compile: the reduction below only gives the coefficients of one functional pass
                losses, aux = self._functional_losses(task_loss, ordered), None
            else:
                losses, aux = task_loss.batched()
            scale = self._scale(losses.detach())
            scaled = losses if scale is None else scale * losses
            weights = None
            if self.plain:
                combined = scaled.mean()
            else:
                folded = self._fold_weighting()  # FAMO takes the weighting into its own log-loss terms
                t0 = time.perf_counter()
                weights = self.combiner(None, losses.detach())
                self._add("solver_ms", 1e3 * (time.perf_counter() - t0))
                combined = (weights.detach() * (losses if folded else scaled)).sum()
            if functional:
                losses, aux = self._functional_backward(task_loss, ordered, num_trunk, losses, combined,
                                                        scaled.sum() if split else None)
            elif split:
                combined.backward(inputs=params[:num_trunk], retain_graph=True)
                scaled.sum().backward(inputs=params[num_trunk:])
            else:
                combined.backward(inputs=params)
            losses, aux = losses.detach(), aux.detach()
            # grad_scale's norms: on this path the per-task gradients are taken once per window (or with diagnostics)
            measure = self._wants_norms(False)
            if diagnose or measure:
                G, _, _, task_gram = self._gradients(task_loss, ordered, trunk_size)
            if measure:
                self.weighting.observe_norms(task_gram.diagonal().clamp_min(0.0).sqrt().to(losses), losses)
            if diagnose:
                k = G.shape[0]
                used = weights.detach() if weights is not None else torch.full((k,), 1.0 / k, device=G.device)
                if scale is not None and not (weights is not None and self._folds()):
                    used = used * scale.to(used)
                method_stats = self.combiner.stats() if weights is not None else {}
                self._add_stats({**method_stats, **pareto_stats(task_gram, used.cpu())})
        else:
            # one vmapped pass gives the gradients, their Gram, the losses and the aux outputs: no separate forward
            G, losses, aux, task_gram = self._gradients(task_loss, ordered, trunk_size)
            scale = self._scale(losses)
            if self._wants_norms(True):  # grad_scale: the Gram's diagonal, free
                self.weighting.observe_norms(task_gram.diagonal().clamp_min(0.0).sqrt().to(losses), losses)
            if scale is not None:  # the Gram of diag(s) G
                s64 = scale.to(task_gram)
                task_gram = task_gram * torch.outer(s64, s64)
            t0 = time.perf_counter()
            weights = self.combiner(task_gram, losses)
            self._add("solver_ms", 1e3 * (time.perf_counter() - t0))
            used = weights if scale is None else weights * scale.to(weights)
            if split:
                heads = torch.ones_like(losses) if scale is None else scale
                write_direction(used, G, params, heads, trunk_size)
            else:
                write_direction(used, G, params)
            if diagnose:
                self._add_stats(self.combiner.stats())
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        # per-task progress L_k(t) / L_k(0) (IMGrad paper Eqn 1)
        self._add_vector("progress", losses / self.initial_losses)
        return losses, aux

    def _scale(self, losses: Tensor) -> Tensor | None:
        """Per-task gradient factors ``s`` (K,) of the weighting for these losses; None when unweighted."""
        if self.weighting is None:
            return None
        self._before = losses.detach()
        factors = getattr(self.weighting, "factors", None)  # a Weighting records s for its logs
        if factors is not None:
            return factors(self._before, self.info)
        weights = self.weighting.weights(self._before, self.info)  # a stand-in with weights/space/eps only
        return gradient_scale(weights, self._before, self.weighting.space, self.weighting.eps)

    def _wants_norms(self, free: bool) -> bool:
        """Whether the weighting asks for this update's per-task gradient norms (``grad_scale``)."""
        wanted = getattr(self.weighting, "norms_wanted", None)
        return wanted is not None and wanted(free)

    def _folds(self) -> bool:
        """Whether the combiner takes a loss weighting into its own loss terms (FAMO, ``combiners/famo.py``)."""
        return self.weighting is not None and hasattr(self.combiner, "weigh_log_losses") and hasattr(
            self.weighting, "lam")

    def _fold_weighting(self) -> bool:
        """Hand FAMO this update's λ (log space; None in linear space, which FAMO's log cancels), so that its
        weights are "FAMO on the weighted losses" and apply to the unweighted ones; False for other combiners."""
        if not self._folds():
            return False
        self.combiner.weigh_log_losses(self.weighting.lam if self.weighting.space == "log" else None)
        return True

    def _functional_losses(self, task_loss: TaskLoss, params: dict[str, Tensor]) -> Tensor:
        """The task losses (K,) the plain path's reduction is built on, as a leaf that requires grad: measured by a
        forward pass without gradients when a weighting or the combiner reads them, else placeholders (the plain mean
        has fixed coefficients 1/K, so the forward is left to :meth:`_functional_backward`'s pass alone)."""
        if self.plain and self.weighting is None:
            first = task_loss.inputs[0]
            return torch.zeros(first.shape[0], device=first.device, requires_grad=True)
        return self.task_losses(task_loss.fn, detached_params(params), task_loss.inputs).requires_grad_()

    def _functional_backward(self, task_loss: TaskLoss, params: dict[str, Tensor], num_trunk: int, losses: Tensor,
                             combined: Tensor, heads: Tensor | None) -> tuple[Tensor, Tensor]:
        """Write the gradient the eager backward of ``combined`` (and of ``heads`` for the task heads) would write, by
        one functional pass (``weighted_gradients``); returns that pass's losses and aux.

        Both reductions are linear in ``losses`` with detached coefficients, so their gradients with respect to the
        losses are exactly those coefficients: the eager reduction code decides them, whatever it is.
        """
        coeffs = torch.autograd.grad(combined, losses, retain_graph=heads is not None)[0]
        head_coeffs = None if heads is None else torch.autograd.grad(heads, losses)[0]
        grads, losses, aux = self.weighted_gradients(task_loss.fn, detached_params(params), task_loss.inputs,
                                                     coeffs, head_coeffs, num_trunk)
        for name, p in params.items():
            p.grad = grads[name]
        return losses, aux

    def after_step(self, task_loss: TaskLoss) -> None:
        """After the optimiser step: give a stateful combiner (FAMO) and the weighting (IGBv2's reward) the losses
        re-measured on the same batch, each only when it asks for them."""
        for_combiner = self._has_after_step and not self.plain and task_loss.fn is not None
        for_weighting = self.weighting is not None and self.weighting.needs_after()
        after = None
        if for_combiner:
            after = self.task_losses(task_loss.fn, detached_params(task_loss.params), task_loss.inputs)
            self.combiner.after_step(after)
        if self.weighting is not None and self._before is not None:
            if for_weighting and after is None and self.weighted_gradients is not None and task_loss.fn is not None:
                after = self.task_losses(task_loss.fn, detached_params(task_loss.params), task_loss.inputs)
            elif for_weighting and after is None:
                with torch.no_grad():
                    after = task_loss.batched()[0]
            self.weighting.observe(self._before, after if for_weighting else None)

    def _layout(self, task_loss: TaskLoss) -> tuple[dict[str, Tensor], int, int]:
        """The parameters in the order the step uses — with ``combine_params=shared`` and task heads, the trunk
        first and the heads last — with the number of trunk parameters and their total size (0, 0: no split)."""
        if self.combine_params == "all" or not task_loss.heads:
            return task_loss.params, 0, 0
        trunk = {n: p for n, p in task_loss.params.items() if n not in task_loss.heads}
        heads = {n: p for n, p in task_loss.params.items() if n in task_loss.heads}
        return {**trunk, **heads}, len(trunk), sum(p.numel() for p in trunk.values())

    def _gradients(self, task_loss: TaskLoss, params: dict[str, Tensor],
                   trunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``G (K, m)`` (columns in ``params`` order), losses (K,), aux and the Gram of G's first ``trunk_size``
        columns (all when 0) of one vmapped pass over the task axis."""
        return self.gradients_and_gram(task_loss.fn, detached_params(params), task_loss.inputs, trunk_size)

    # ------------------------------------------------------------------ diagnostics
    def _add(self, key: str, value: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _add_vector(self, key: str, value: Tensor) -> None:
        value = value.detach().float()
        if key in self._vectors:  # a resumed interval's sum is where the checkpoint's map_location put it
            value = self._vectors[key] + value.to(self._vectors[key].device)
        self._vectors[key] = value
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
        if "grad_norm" in per_task and "weight" in per_task:  # task k's share Σ-normalised |w_k|·‖g_k‖ of d
            parts = torch.tensor([abs(per_task["weight"][i]) * per_task["grad_norm"][i]
                                  for i in sorted(per_task["weight"])], dtype=torch.float64)
            if float(parts.sum()) > 0.0:
                self._add_vector("direction_share", parts / parts.sum())
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
        """Combiner state (FAMO logits, Nash warm start, PCGrad's RNG), call count, initial losses and the
        weighting's state (its networks and replay for IGBv2)."""
        return {"combiner": self.combiner.state_dict(), "calls": self.calls,
                "initial_losses": None if self.initial_losses is None else self.initial_losses.cpu(),
                "weighting": None if self.weighting is None else self.weighting.state_dict(),
                # the interval's diagnostics not yet logged, so a resumed run logs the same means
                "pending": {"sums": dict(self._sums), "counts": dict(self._counts), "vectors": dict(self._vectors)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.combiner.load_state_dict(state["combiner"])
        self.calls = int(state["calls"])
        self.initial_losses = state["initial_losses"]  # already on the learner's device (torch.load's map_location)
        pending = state.get("pending") or {"sums": {}, "counts": {}, "vectors": {}}
        self._sums, self._counts, self._vectors = (dict(pending["sums"]), dict(pending["counts"]),
                                                   dict(pending["vectors"]))
        if self.weighting is not None:
            if state.get("weighting") is None:
                raise ValueError("the checkpoint holds no loss-weighting state for this run's weighting")
            device = None if self.initial_losses is None else self.initial_losses.device
            self.weighting.load_state_dict(state["weighting"], device)


def combined_parts(method: str, combine: str) -> tuple[str, ...]:
    """Which losses go through the combiner: ``combine`` as given, or the method's default for ``auto``."""
    if combine == "auto":
        return DEFAULT_COMBINE.get(method, PARTS)
    return split_parts(combine)


def build_steps(method: str, hparams: dict[str, Any], combine: str, diag_every: int, seed: int,
                weighting: str = "none", weighting_hparams: dict[str, Any] | None = None,
                weighted: str = "critic", *, combine_params: str = "all") -> dict[str, CombinedStep]:
    """One :class:`CombinedStep` per combined loss (its own combiner instance and state) and a plain,
    diagnosing one for every other loss; ``mtsac`` is plain everywhere.  The losses named in ``weighted`` get
    their own instance of the loss weighting ``weighting`` (none: unweighted); ``combine_params`` applies to every
    step (``all`` or ``shared``: the task heads get their own task's gradient)."""
    parts = () if method == "mtsac" else combined_parts(method, combine)
    weighted_parts = () if weighting == "none" else split_parts(weighted)
    steps = {}
    for offset, part in enumerate(PARTS):
        weighter = (make_weighting(weighting, seed=seed + 100 + offset, **(weighting_hparams or {}))
                    if part in weighted_parts else None)
        if part in parts:
            steps[part] = CombinedStep(make(method, seed=seed + offset, **hparams), diag_every=diag_every,
                                       weighting=weighter, combine_params=combine_params)
        else:
            steps[part] = CombinedStep(make("mean"), plain=True, diag_every=diag_every, weighting=weighter,
                                       combine_params=combine_params)
    return steps


def weighting_warning(cfg: Any) -> str | None:
    """One line when the loss weighting of ``cfg`` (a :class:`~rl_mtl.config.TrainConfig`) cannot change any update:
    every loss it weights goes through Nash-MTL (invariant to loss scaling, references.md) or through FAMO with a
    linear-space weighting or ``si`` (FAMO's log cancels a scale, and λ = 1 in log space is FAMO itself)."""
    if cfg.weighting == "none":
        return None
    combined = set(() if cfg.method == "mtsac" else combined_parts(cfg.method, cfg.combine))
    if not set(split_parts(cfg.weighted)) <= combined:
        return None  # some weighted loss takes the plain mean, where the weights act
    space = cfg.weighting_opts.get("space", weighting_hparams(cfg.weighting).get("space", "log"))
    if cfg.method == "nashmtl":
        why = "Nash-MTL is invariant to loss scaling"
    elif cfg.method == "famo" and (space == "linear" or cfg.weighting == "si"):
        why = ("FAMO runs on log-losses, which cancel a linear-space weight" if space == "linear"
               else "FAMO already weights log-losses, so si (lambda = 1 in log space) is FAMO itself")
    else:
        return None
    return (f"warning: --weighting {cfg.weighting} has no effect under --method {cfg.method} ({why}); "
            "it only costs time")
