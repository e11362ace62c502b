"""PCGrad (Yu et al., NeurIPS 2020, Algorithm 1), mtrl's convention (facebookresearch/mtrl ``agent/pcgrad.py``).

Each task's gradient, visiting the other tasks in its own random order, is projected off every ORIGINAL other
gradient it currently conflicts with: ``g_i ← g_i − min(g_iᵀg_j, 0)/‖g_j‖² · g_j``; the update is the mean of the
projected gradients.  Done exactly in coefficient space: row i of ``C`` (K×K) holds the running gradient as
``Σ_l C_il g_l``, so ``g_iᵀg_j = (C M)_ij`` and the weights are ``Cᵀ1/K``.  Deliberate difference: mtrl divides by
``‖g_j‖ + 1e-8`` (twice); we divide by ``‖g_j‖²`` exactly and skip zero gradients (they conflict with nothing).
With two conflicting tasks this is the textbook ``g_1' = g_1 − (g_1ᵀg_2/‖g_2‖²) g_2``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from rl_mtl.combiners.base import Combiner


def projection_orders(k: int, rng: np.random.Generator) -> np.ndarray:
    """(K, K−1): row i lists the tasks other than i in a random order (mtrl's ``get_shuffled_task_indices``)."""
    others = np.arange(k - 1)[None, :] + (np.arange(k - 1)[None, :] >= np.arange(k)[:, None])
    return rng.permuted(others, axis=1)


@njit(cache=True)
def pcgrad_weights(gram: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """weights (K,) of PCGrad's mean projected gradient; gram: (K, K) PSD, orders: (K, K−1).

    Row i of ``cross`` holds the inner products of task i's running gradient with the original ones; the weights
    are the column sums of ``C`` over K, accumulated as the projections happen.  Compiled: the K(K−1) sequential
    projections are a few hundred flops, which numpy would spend ~10 calls per projection round on.
    """
    k = gram.shape[0]
    weights = np.ones(k)
    cross = gram.copy()
    for i in range(k):
        for step in range(k - 1):
            j = orders[i, step]
            norm_sq = gram[j, j]
            if norm_sq > 0.0 and cross[i, j] < 0.0:
                shift = cross[i, j] / norm_sq
                weights[j] -= shift
                for q in range(k):
                    cross[i, q] -= shift * gram[j, q]
    return weights / k


class PCGrad(Combiner):
    """Projecting conflicting gradients (stochastic: the projection order comes from ``self.rng``)."""

    name = "pcgrad"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        """weights: (K,); gram: (K, K) PSD with trace K."""
        return pcgrad_weights(gram, projection_orders(gram.shape[0], self.rng))
