"""Plain averaging, the MTSAC baseline (architecture §3): ``w = 1/K``, so ``d = g_0``.

Loss-only in effect: it needs no Gram (``needs_gram = False``, the trainer may pass ``gram=None`` and skip the
per-task backward passes); when a Gram is given anyway, ``stats()`` reports its Pareto diagnostics.
"""

from __future__ import annotations

import numpy as np

from rl_mtl.combiners.base import Combiner


class Mean(Combiner):
    """``w_k = 1/K`` for every task."""

    name = "mean"
    needs_gram = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        """weights: (K,) = 1/K; gram: (K, K) or None; losses: (K,)."""
        return np.full(losses.shape[0], 1.0 / losses.shape[0])
