"""CAGrad (Liu et al., NeurIPS 2021; paper Eqn 2, solved through its dual, IMGrad paper Eqn 10).

``w* = argmin_{w∈W} g_wᵀg_0 + s‖g_w‖`` with ``s = c‖g_0‖``, then ``d = (g_0 + s g_w*/‖g_w*‖)·rescale``, i.e.
``weights = (1/K + s/‖g_w*‖ · w*)·rescale``.  MT10 setup (Cranial-XIX/CAGrad ``mtrl_files/cagrad.py``): c = 0.9,
rescale 1/(1+c²).  Rescale spellings: ``"none"`` (×1), ``"1/(1+c^2)"`` (the MT10 reference), ``"1/(1+c)"``.

Deliberate difference: the default ``solver="exact"`` solves the dual to a duality gap ~1e-13 (:mod:`solvers`);
the reference runs 20 SGD steps on softmax logits (``solver="sgd"``, reproduced with its epsilons for parity),
and the supervised code uses SLSQP, which can return objectives 25 % above the optimum on badly scaled Grams.
"""

from __future__ import annotations

import math

import numpy as np

from rl_mtl.combiners import active_set, solvers
from rl_mtl.combiners.base import Combiner

RESCALES = ("none", "1/(1+c^2)", "1/(1+c)")


def rescale_factor(rescale: str, c: float) -> float:
    """Output scale of CAGrad-type directions: 1, 1/(1+c²) or 1/(1+c)."""
    return {"none": 1.0, "1/(1+c^2)": 1.0 / (1.0 + c * c), "1/(1+c)": 1.0 / (1.0 + c)}[rescale]


def conflict_averse_weights(gram: np.ndarray, w: np.ndarray, s: float, factor: float) -> np.ndarray:
    """weights (K,) of ``d = (g_0 + s g_w/‖g_w‖)·factor`` for gram: (K, K) PSD and w: (K,) on the simplex.

    ``‖g_w‖`` below the rounding floor of a Gram-based norm (``1e-7 Σ w_k‖g_k‖``) means g_w = 0: the g_w term is
    dropped, leaving ``g_0·factor``.
    """
    return active_set.conflict_averse(gram, w, s, factor)


def check_c_rescale(c: float, rescale: str) -> None:
    """Validate CAGrad/IMGrad's ``c`` (≥ 0, finite) and ``rescale``."""
    if not (math.isfinite(c) and c >= 0.0):
        raise ValueError(f"c must be a finite number >= 0, got {c}")
    if rescale not in RESCALES:
        raise ValueError(f"rescale must be one of {RESCALES}, got {rescale!r}")


class CAGrad(Combiner):
    """Conflict-averse gradient descent."""

    name = "cagrad"
    warm_starts = {"_warm": "support"}

    def __init__(self, c: float = 0.9, rescale: str = "1/(1+c^2)", solver: str = "exact", seed: int = 0) -> None:
        check_c_rescale(c, rescale)
        if solver not in ("exact", "sgd", "cvxpy"):
            raise ValueError(f"solver must be one of ('exact', 'sgd', 'cvxpy'), got {solver!r}")
        super().__init__(seed)
        self.c = float(c)
        self.rescale = rescale
        self.solver = solver

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        """weights: (K,); gram: (K, K) PSD with trace K (``scale`` restores the raw Gram for ``sgd``)."""
        m = gram
        k = m.shape[0]
        factor = rescale_factor(self.rescale, self.c)
        if self.c == 0.0:
            # exactly the mean (c = 0 shrinks the constraint ball of Eqn 2 to the point g_0)
            return np.full(k, factor / k)
        if self.solver == "sgd":
            w, multiplier = solvers.cagrad_sgd(m * scale, self.c)
            self._extra.update(solver_iterations=20.0)
            return (1.0 / k + multiplier * w) * factor
        lin, root, quad = solvers.coefficients("cagrad", m, self.c)
        if self.solver == "exact":
            sol = self._warm.solve(m, lin, root, quad)
        else:
            sol = solvers.solve_cvxpy(m, lin, root, quad)
        self._extra.update(solver_iterations=float(sol.iterations), solver_gap=sol.gap)
        return conflict_averse_weights(m, sol.weights, root, factor)
