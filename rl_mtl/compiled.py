"""The compiled SAC update (``--compile``): the update's tensor work through ``torch.compile``.

The update's Python orchestration is the eager one, line for line (``MTSAC.update``, ``MTSAC._step``,
``routing.CombinedStep``): the non-finite skip and its counting, gradient clipping, the target update, the per-task
temperatures and every host-side decision are unchanged.  Only the functions that do the tensor work are swapped
for compiled versions:

* the target critic's forward pass (``MTSAC.critic_targets``; its policy noise is drawn eagerly and passed in, so
  the random numbers are the eager update's);
* the vmapped per-task gradients with their Gram (``pertask.gradients_and_gram``), for the combiners and the
  diagnostics;
* the plain path's gradient (plain MTSAC, loss-only combiners like FAMO, the non-combined loss): one functional
  forward-and-backward pass (``pertask.weighted_gradients``) instead of the eager autograd backward.  Its
  coefficients are read off the eager reduction (``CombinedStep._functional_backward``); where they depend on the
  losses (a weighting, FAMO) a compiled forward without gradients measures them first (``pertask.task_losses``,
  also FAMO's re-measure after the step).  One graph rather than AOTAutograd's forward/backward pair: on the CPU
  its saved boolean ReLU masks are stored by a vectorised kernel about 30 times slower than eager (torch 2.13);
* each optimiser's Adam step (the gradient clipping before it stays eager: a foreach scale, and on CUDA it would
  cost the step its CUDA graph).

The host-side combiner solve (numba, cvxpy) sits between the per-task gradients and the optimiser step and stays
outside the graphs on purpose: every compiled function is one graph (``fullgraph=True``), so the update is captured
as two parts per loss around that solve.  On CUDA the parts are also captured as CUDA graphs
(``mode="reduce-overhead"``): each update then marks a new graph step, and the compiled functions' outputs are
cloned out of the graphs' memory pool (a later replay would overwrite them while the logger still holds them).

Compiling costs tens of seconds once per process (``compile_seconds``); the numbers equal the eager update's within
float tolerance (``tests/test_compile.py``). Checkpoints do not change: nothing compiled is part of any state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map_only

from rl_mtl import pertask

if TYPE_CHECKING:
    from rl_mtl.agents.mtsac import MTSAC
    from rl_mtl.routing import CombinedStep


def compile_mode(device: torch.device) -> str:
    """``reduce-overhead`` (inductor kernels captured as CUDA graphs) on CUDA, inductor's ``default`` elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """One step of ``optimizer`` (compiled once per optimiser by :meth:`CompiledUpdate.step`)."""
    optimizer.step()


class CompiledUpdate:
    """The compiled tensor work of one agent's update; :func:`compile_update` installs it.

    ``targets(batch, noise)``: the agent's target computation; ``gradients_and_gram``, ``weighted_gradients``,
    ``task_losses``: :mod:`rl_mtl.pertask`'s, for the combined steps;
    ``step(optimizer)``: the optimiser's step, compiled once per optimiser;
    ``begin_update()``: called at the start of every update (a new CUDA-graph step).
    """

    def __init__(self, agent: MTSAC, mode: str) -> None:
        self.mode = mode
        self.cudagraphs = mode == "reduce-overhead"
        self.targets = self.compile(agent.critic_targets)
        self.gradients_and_gram = self.compile(pertask.gradients_and_gram)
        self.weighted_gradients = self.compile(pertask.weighted_gradients)
        self.task_losses = self.compile(pertask.task_losses)
        self._steps: dict[int, Callable[..., None]] = {}
        self._noted = False

    def compile(self, fn: Callable[..., Any], fullgraph: bool = True) -> Callable[..., Any]:
        """``fn`` through ``torch.compile`` in this update's mode; its tensor outputs cloned under CUDA graphs."""
        compiled = torch.compile(fn, mode=self.mode, dynamic=False, fullgraph=fullgraph)
        if not self.cudagraphs:
            return compiled

        def call(*args: Any, **kwargs: Any) -> Any:
            return tree_map_only(Tensor, Tensor.clone, compiled(*args, **kwargs))

        return call

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """:func:`optimizer_step`, compiled for this optimiser (its parameters and state are the graph's). Gradient
        clipping stays eager (``MTSAC._step``): compiled, it mutates the gradients, which are not static graph
        inputs, and cudagraph trees would skip CUDA graphs for it."""
        fn = self._steps.get(id(optimizer))
        if fn is None:
            fn = self._steps[id(optimizer)] = self.compile(optimizer_step, fullgraph=False)
        fn(optimizer)

    def note(self, num_updates: int, actor_update_every: int) -> str | None:
        """One console line, once, when the updates that compile are done (every optimiser's second step, when its
        state exists, compiles once more): the seconds spent compiling."""
        if self._noted or num_updates < 1 + actor_update_every:
            return None
        self._noted = True
        graphs = " and CUDA graphs" if self.cudagraphs else ""
        return f"--compile: the update was compiled (torch.compile{graphs}) in {compile_seconds():.1f} s"

    def begin_update(self) -> None:
        """Start of an update: under CUDA graphs the previous update's graph outputs may be overwritten now."""
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()


def _drop_profiler_notice(record: logging.LogRecord) -> bool:
    """False for dynamo's "Profiler record function ... will be ignored": every optimiser step carries a profiler
    annotation (``Optimizer.profile_hook_step``) that a compiled step leaves out, which is harmless and not the
    user's to act on; everything else passes."""
    return not str(record.msg).startswith("Profiler record function")


def quiet_profiler_notice() -> None:
    """Keep that one dynamo warning off the console (once per process; other dynamo warnings still show)."""
    log = logging.getLogger("torch._dynamo.variables.ctx_manager")
    if _drop_profiler_notice not in log.filters:
        log.addFilter(_drop_profiler_notice)


def compile_update(agent: MTSAC, steps: dict[str, CombinedStep]) -> CompiledUpdate:
    """Install the compiled update on ``agent`` and its combined steps (the reducers of its losses); returns it.

    Compilation itself happens lazily, in the first updates. On CUDA the optimisers become ``capturable`` (their
    step counts on the GPU, as a CUDA graph needs); ``MTSAC.load_full_state_dict`` keeps that flag the agent's.
    """
    # each optimiser step is compiled for its own optimiser (its parameters are static graph inputs, guarded by
    # identity): a process with a few agents (a benchmark, the tests) needs more than dynamo's 8 entries per function
    dynamo = torch._dynamo.config
    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # its name before 2.7
    setattr(dynamo, limit, max(getattr(dynamo, limit), 64))
    quiet_profiler_notice()
    compiled = CompiledUpdate(agent, compile_mode(agent.device))
    if compiled.cudagraphs:
        for optimizer in agent.optimizers():
            for group in optimizer.param_groups:
                group["capturable"] = True
    agent.compiled = compiled
    for step in steps.values():
        step.gradients_and_gram = compiled.gradients_and_gram
        step.weighted_gradients = compiled.weighted_gradients
        step.task_losses = compiled.task_losses
    return compiled


def compile_seconds() -> float:
    """Seconds this process has spent compiling with ``torch.compile`` so far (dynamo's own timers: tracing,
    inductor's code generation and C++/Triton builds, forward and backward graphs)."""
    from torch._dynamo.utils import calculate_time_spent  # not public API: read defensively

    try:
        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except Exception:  # noqa: BLE001 - a changed private API must not break training
        return float("nan")
