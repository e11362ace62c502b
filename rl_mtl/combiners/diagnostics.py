"""Pareto diagnostics of one combination step, all from the Gram matrix (architecture §3; IMGrad paper Def. 2, 3).

With ``d = Σ w_k g_k``: ``‖d‖² = wᵀMw`` and ``g_kᵀd = (Mw)_k``, so no per-task gradient is touched here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from rl_mtl.combiners.solvers import min_norm

#: cos(d, g_k) below this counts as a conflict (Pareto failure, paper Def. 3); absorbs rounding
CONFLICT_TOL = -1e-9


def _safe_cos(dot: np.ndarray, norm_a: np.ndarray | float, norm_b: np.ndarray | float) -> np.ndarray:
    """cos from a dot product and two norms; 0 where a norm vanishes (a zero vector conflicts with nothing)."""
    den = np.asarray(norm_a) * np.asarray(norm_b)
    safe = np.where(den > 0.0, den, 1.0)
    return np.clip(np.where(den > 0.0, dot / safe, 0.0), -1.0, 1.0)


def pareto_stats(gram: Tensor, weights: Tensor) -> dict[str, float]:
    """Diagnostics of ``d = Σ w_k g_k``; every value is finite for any input.

    gram: (K, K) PSD Gram matrix (non-finite entries are treated as 0); weights: (K,) combiner output.
    Keys: ``imbalance_ratio`` (max/min ‖g_k‖, min floored at 1e-12·max), ``cos_theta`` (g_0 vs the MGDA
    direction), ``min_cos_dk``, ``pareto_failure`` (1.0 if some cos(d, g_k) < -1e-9), ``d_norm``, ``d_norm_rel``
    (‖d‖/‖g_0‖), ``grad_norm/<k>`` and ``weight/<k>``.
    """
    m = np.nan_to_num(gram.detach().to("cpu", torch.float64).numpy(), nan=0.0, posinf=0.0, neginf=0.0)
    m = 0.5 * (m + m.T)
    w = np.nan_to_num(weights.detach().to("cpu", torch.float64).numpy().reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    k = m.shape[0]
    norms = np.sqrt(np.maximum(np.diag(m), 0.0))
    top = float(norms.max()) if k else 0.0
    ratio = top / max(float(norms.min()), 1e-12 * top) if top > 0.0 else 1.0

    mw = m @ w
    d_norm = math.sqrt(max(float(w @ mw), 0.0))
    g0_norm = math.sqrt(max(float(m.sum()), 0.0)) / k
    cos_dk = _safe_cos(mw, d_norm, norms)

    cos_theta = 0.0
    scale = float(np.trace(m)) / k
    if scale > 0.0 and math.isfinite(scale):
        # cos θ between g_0 and g_m = MGDA direction (paper Eqn 9), solved on the trace-normalised Gram
        normalised = m / scale
        wm = min_norm(normalised).weights
        gm_norm = math.sqrt(max(float(wm @ normalised @ wm), 0.0))
        g0n = math.sqrt(max(float(normalised.sum()), 0.0)) / k
        cos_theta = float(_safe_cos(np.array(float(normalised.sum(axis=0) @ wm) / k), g0n, gm_norm))

    stats = {
        "imbalance_ratio": float(ratio) if math.isfinite(ratio) else 1e12,
        "cos_theta": cos_theta,
        "min_cos_dk": float(cos_dk.min()) if k else 0.0,
        "pareto_failure": float(k > 0 and float(cos_dk.min()) < CONFLICT_TOL),
        "d_norm": d_norm,
        "d_norm_rel": d_norm / g0_norm if g0_norm > 0.0 else 0.0,
    }
    for i in range(k):
        stats[f"grad_norm/{i}"] = float(norms[i])
        stats[f"weight/{i}"] = float(w[i])
    return {key: (value if math.isfinite(value) else 0.0) for key, value in stats.items()}
