"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023, Eqn 6-9).

The task gradients are aligned to an orthogonal system with equal magnitudes: with ``M = G Gᵀ = V Λ Vᵀ`` the balance
matrix ``B = sqrt(λ_min) · V Λ^{-1/2} Vᵀ`` makes the aligned gradients ``Ĝ = B G`` satisfy ``Ĝ Ĝᵀ = λ_min · V Vᵀ``
(∝ identity on the range of M), and the update is ``d = wᵀ Ĝ = (B w)ᵀ G``, so the weights are ``B w``.

Rank-deficient Grams follow the reference (SamsungLabs/MTL ``ProcrustesSolver``, ``scale_mode="min"``, also LibMTL):
only eigenvalues above ``λ_max · K · eps_float32`` are kept and λ_min is the smallest of those.

Conventions (deliberate): task preference ``w = 1/K`` (mean convention: orthogonal equal-norm gradients give the
mean), where the reference sums the aligned gradients (``w = 1``, weights K times larger).  ``B`` is unchanged when
the Gram is scaled, so the weights are scale-free and ``d`` scales with the gradients exactly as the mean does.
"""

from __future__ import annotations

import numpy as np

from rl_mtl.combiners.base import Combiner

_EPS32 = float(np.finfo(np.float32).eps)  # the reference's torch.finfo() default dtype


class AlignedMTL(Combiner):
    """Balance-matrix weights ``B·1/K``; see the module docstring."""

    name = "aligned_mtl"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        eigval, eigvec = np.linalg.eigh(gram)
        k = eigval.shape[0]
        keep = eigval > eigval.max() * k * _EPS32
        lam, vec = eigval[keep], eigvec[:, keep]
        balance = np.sqrt(lam.min()) * (vec / np.sqrt(lam)) @ vec.T
        self._extra.update(rank=float(keep.sum()), condition=float(lam.max() / lam.min()))
        return balance @ np.full(k, 1.0 / k)
