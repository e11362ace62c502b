"""MGDA (Désidéri 2012; Sener & Koltun 2018): the min-norm point ``w* = argmin_{w∈W} wᵀMw`` (architecture §3).

``d = g_{w*}`` is the steepest common descent direction: ``g_kᵀd ≥ ‖d‖² ≥ 0`` for every task, so it never conflicts.
Solved exactly (closed form at K = 2, Wolfe's min-norm-point active set otherwise: :mod:`solvers`), instead of
the Frank–Wolfe iterations of the reference ``MinNormSolver`` (which stops after a fixed iteration budget); warm
started from the last optimal support (same optimum, fewer face solves).
"""

from __future__ import annotations

import numpy as np

from rl_mtl.combiners import solvers
from rl_mtl.combiners.base import Combiner

SOLVERS = ("exact", "cvxpy")


class MGDA(Combiner):
    """Min-norm point of the convex hull of the task gradients."""

    name = "mgda"
    warm_starts = {"_warm": "support"}

    def __init__(self, solver: str = "exact", seed: int = 0) -> None:
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        super().__init__(seed)
        self.solver = solver

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        """weights: (K,) on the simplex; gram: (K, K) PSD with trace K."""
        if self.solver == "exact":
            sol = self._warm.min_norm(gram)
        else:
            sol = solvers.solve_cvxpy(gram, 0.0, 0.0, 1.0)
        self._extra.update(solver_iterations=float(sol.iterations), solver_gap=sol.gap)
        return sol.weights
