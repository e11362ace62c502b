"""Combiner interface: a K×K task Gram matrix and K losses in, K weights out.

Every method maps ``gram = G Gᵀ`` (K×K, PSD) and the task losses (K) to weights ``w`` such that the update
direction is ``d = Σ_k w_k g_k`` (architecture §3; mean convention: plain averaging is ``w = 1/K``).  The shared
machinery lives here so that each method file holds only its maths:

* input validation: a non-finite or all-zero Gram (or non-finite losses, for loss-based methods) falls back to
  the mean, is counted and reported in ``stats()`` instead of corrupting the weights;
* scale invariance: methods solve on the trace-normalised Gram ``gram / (tr(gram)/K)`` and are told the scale;
* diagnostics: ``stats()`` returns :func:`rl_mtl.combiners.diagnostics.pareto_stats` of the last call plus the
  method's own solver figures.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import numpy as np
import torch
from numba import njit
from torch import Tensor


class Combiner(abc.ABC):
    """Base class of every gradient combiner.

    Subclasses implement :meth:`_solve` on a clean, trace-normalised float64 Gram and may override
    :meth:`after_step`, :meth:`reset`, :meth:`state_dict` / :meth:`load_state_dict` when they carry state.
    Hyperparameters are keyword arguments of ``__init__`` (validated there, raising ``ValueError`` that names the
    hyperparameter and its allowed range); :func:`rl_mtl.combiners.make` checks names against that signature.
    """

    #: registry name, set by each subclass
    name: ClassVar[str] = ""
    #: False for loss-only methods (FAMO): they accept ``gram=None`` and need no per-task gradients
    needs_gram: ClassVar[bool] = True
    #: simplex-solver warm starts the method keeps: attribute name → its key in :meth:`state_dict`
    warm_starts: ClassVar[dict[str, str]] = {}

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.calls = 0
        self.fallbacks = 0
        self._stats: dict[str, float] = {}
        self._last_call: tuple[np.ndarray | None, float, np.ndarray, bool] | None = None
        #: method-specific figures of the last call (solver iterations, μ, ...), merged into ``stats()``
        self._extra: dict[str, float] = {}
        self._new_warm_starts()

    # ------------------------------------------------------------------ public API
    def __call__(self, gram: Tensor | None, losses: Tensor) -> Tensor:
        """Weights ``w`` (K,) for ``d = Σ w_k g_k``; same device and dtype as ``losses``.

        gram: (K, K) PSD Gram matrix of the task gradients (``None`` allowed when ``needs_gram`` is False).
        losses: (K,) task losses (used by loss-based methods, ignored by the others).
        """
        self.calls += 1
        self._extra = {}
        k = int(losses.numel())
        # numpy throughout: a handful of torch calls on a 10×10 matrix cost more than the solve itself
        losses_np = _as_float64(losses).reshape(k)
        normalised: np.ndarray | None = None
        scale = 1.0
        reason = ""
        if gram is not None:
            raw = _as_float64(gram)
            if raw.shape != (k, k):
                raise ValueError(f"gram must be ({k}, {k}) to match {k} losses, got {tuple(raw.shape)}")
            normalised, scale, status = _normalise(raw)
            reason = ("", "non-finite gram", "zero gram")[status]
            if reason:
                normalised = None
        if not reason and self.needs_gram and gram is None:
            raise ValueError(f"combiner '{self.name}' needs the task Gram matrix, got gram=None")
        if not reason and not self.needs_gram and not math.isfinite(float(losses_np.sum())):
            reason = "non-finite losses"

        weights: np.ndarray | None = None
        if not reason:
            weights = self._solve(normalised, losses_np, scale)
            if not math.isfinite(float(weights.sum())):
                reason = "non-finite weights"
        if reason:
            self.fallbacks += 1
            weights = np.full(k, 1.0 / k)
            self._on_fallback(reason)

        # diagnostics are computed lazily in stats(): the hot path pays only for the solve
        self._last_call = (normalised, scale, weights, bool(reason))
        self._stats = {}
        dtype = losses.dtype if losses.is_floating_point() else torch.float32
        if losses.device.type == "cpu":
            if dtype == torch.float64:
                return torch.from_numpy(weights)
            if dtype == torch.float32:
                return torch.from_numpy(weights.astype(np.float32))
        return torch.from_numpy(weights).to(device=losses.device, dtype=dtype)

    def after_step(self, losses_after: Tensor) -> None:
        """Hook called with the task losses re-measured after the optimiser step (FAMO); no-op by default."""

    def stats(self) -> dict[str, float]:
        """Diagnostics of the last call: imbalance ratio, cos θ, min cos(d, g_k), Pareto failure, ‖d‖/‖g_0‖, ...

        Computed on demand (the trainer asks once per diagnostics interval), then cached until the next call.
        """
        from rl_mtl.combiners.diagnostics import pareto_stats  # local: diagnostics imports the solvers

        if not self._stats and self._last_call is not None:
            gram, scale, weights, fell_back = self._last_call
            self._stats = (
                pareto_stats(torch.from_numpy(gram * scale), torch.from_numpy(weights)) if gram is not None else {}
            )
            self._stats.update(self._extra)
            self._stats["fallback"] = float(fell_back)
            self._stats["fallbacks_total"] = float(self.fallbacks)
        return dict(self._stats)

    def reset(self) -> None:
        """Forget all state (warm starts, logits, RNG position) as if freshly built with the same seed."""
        self.rng = np.random.default_rng(self.seed)
        self.calls = 0
        self.fallbacks = 0
        self._stats = {}
        self._extra = {}
        self._last_call = None
        self._new_warm_starts()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit after a checkpoint."""
        return {"rng": self.rng.bit_generator.state, "calls": self.calls, "fallbacks": self.fallbacks,
                **{key: getattr(self, attr).state_dict() for attr, key in self.warm_starts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.rng.bit_generator.state = state["rng"]
        self.calls = int(state["calls"])
        self.fallbacks = int(state["fallbacks"])
        for attr, key in self.warm_starts.items():
            getattr(self, attr).load_state_dict(state.get(key))

    def _new_warm_starts(self) -> None:
        from rl_mtl.combiners.solvers import WarmStart  # local: solvers imports scipy

        for attr in self.warm_starts:
            setattr(self, attr, WarmStart())

    # ------------------------------------------------------------------ for subclasses
    @abc.abstractmethod
    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        """Weights (K,) float64 from a finite, symmetric, trace-normalised float64 Gram (tr = K) and float64 losses.

        ``scale`` is the factor the raw Gram was divided by (``raw = scale * gram``), for the few methods whose
        weights are not scale-free (Nash-MTL: ``w_raw = w / sqrt(scale)``).  numpy, not torch: at K ≤ 50 every torch
        call costs more than the arithmetic it does.
        """

    def _on_fallback(self, reason: str) -> None:
        """Called when the mean was used instead of the method (stateful methods may reset a warm start)."""
        self._extra["fallback_reason_code"] = float(_FALLBACK_CODES.get(reason, -1))


def _as_float64(tensor: Tensor) -> np.ndarray:
    """A C-ordered float64 numpy copy (or view, when already so on the CPU) of a detached tensor."""
    array = tensor.numpy(force=True)
    if array.dtype == np.float64 and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype=np.float64)


@njit(cache=True)
def _normalise(raw: np.ndarray) -> tuple[np.ndarray, float, int]:
    """``((raw + rawᵀ)/2 / scale, scale = tr(raw)/K, status)`` of a square raw Gram; status 0 = usable,
    1 = some entry (or the trace) not finite, 2 = zero trace (every task gradient zero).  One compiled pass: the
    same checks in numpy cost more than an IMGrad solve."""
    k = raw.shape[0]
    trace = 0.0
    for i in range(k):
        trace += raw[i, i]
        for j in range(k):
            if not math.isfinite(raw[i, j]):
                return np.empty((0, 0)), 1.0, 1
    scale = trace / k
    if not math.isfinite(scale):
        return np.empty((0, 0)), 1.0, 1
    if not scale > 0.0:
        return np.empty((0, 0)), 1.0, 2
    out = np.empty((k, k))
    half = 0.5 / scale
    for i in range(k):
        for j in range(k):
            out[i, j] = (raw[i, j] + raw[j, i]) * half
    return out, scale, 0


_FALLBACK_CODES = {"non-finite gram": 1, "zero gram": 2, "non-finite losses": 3, "non-finite weights": 4}
