"""Compiled Nash bargaining point (Navon et al. 2022, Eqn 2) for ``nashmtl`` and ``imgrad_nash``.

``α > 0`` with ``α_i (Mα)_i = 1`` is the stationarity condition of the strictly convex ``½αᵀMα − Σ log α_i``;
:func:`bargaining` runs Newton's method on it (see ``nashmtl.solve_bargaining``).  :func:`shortcut_multipliers` gives
IMGrad-Nash's KKT multipliers at that point.  Compiled (numba, ``cache=True``): at K = 10 numpy's per-call
overhead was 20× the arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from rl_mtl.combiners.dense import cholesky, cholesky_solve, lu_solve, matvec

#: relative eigenvalue below which the normalised Gram (trace K) is treated as singular and ridged
SINGULAR = 1e-10


@njit(cache=True)
def _nash_objective(m: np.ndarray, x: np.ndarray, mx: np.ndarray) -> float:
    """``½xᵀMx − Σ log x_i`` (x > 0); mx is scratch."""
    matvec(m, x, mx)
    total = 0.0
    for i in range(x.shape[0]):
        total += 0.5 * x[i] * mx[i] - math.log(x[i])
    return total


@njit(cache=True)
def bargaining(gram: np.ndarray, start: np.ndarray, max_iter: int, rtol: float) -> tuple[np.ndarray, int, bool]:
    """Newton's method for ``α_i (Mα)_i = 1``; see :func:`rl_mtl.combiners.nashmtl.solve_bargaining` (start: (K,)
    warm start, or empty for ``1/sqrt(M_ii)``).

    ``M + SINGULAR·I`` is used when ``λ_min(M) < SINGULAR·tr(M)/K``, tested by a Cholesky of ``M − SINGULAR·
    (tr/K)·I`` (it fails exactly then, up to rounding).  Each step solves ``(M + diag(1/α²)) s = −∇f`` (SPD) and
    backtracks (Armijo, step kept 1 % inside α > 0).
    """
    k = gram.shape[0]
    trace = 0.0
    for i in range(k):
        trace += gram[i, i]
    shifted = gram.copy()
    shift = SINGULAR * max(trace / k, 1e-300)
    for i in range(k):
        shifted[i, i] -= shift
    m = gram.copy()
    if not cholesky(shifted):
        for i in range(k):
            m[i, i] += SINGULAR
    a = np.empty(k)
    usable = start.shape[0] == k
    for i in range(start.shape[0]):
        if not (math.isfinite(start[i]) and start[i] > 0.0):
            usable = False
    for i in range(k):
        a[i] = start[i] if usable else 1.0 / math.sqrt(max(m[i, i], 1e-12))
    ma = np.empty(k)
    grad = np.empty(k)
    step = np.empty(k)
    trial = np.empty(k)
    scratch = np.empty(k)
    hess = np.empty((k, k))
    prev_resid = math.inf
    for it in range(max_iter + 1):
        matvec(m, a, ma)
        resid = 0.0
        for i in range(k):
            resid = max(resid, abs(a[i] * ma[i] - 1.0))
        # converged, or stalled at the rounding floor of an ill-conditioned Gram (quadratic convergence has stopped)
        if resid <= rtol or (resid <= 1e-9 and resid > 0.25 * prev_resid):
            return a, it, True
        if it == max_iter:
            break
        prev_resid = resid
        for i in range(k):
            grad[i] = ma[i] - 1.0 / a[i]
            step[i] = -grad[i]
            for j in range(k):
                hess[i, j] = m[i, j]
            hess[i, i] += 1.0 / (a[i] * a[i])
        if not cholesky(hess):
            break
        cholesky_solve(hess, step)
        decrement = 0.0
        t = 1.0
        for i in range(k):
            decrement -= grad[i] * step[i]
            if step[i] < 0.0:
                t = min(t, 0.99 * (-a[i] / step[i]))
        if not math.isfinite(decrement):
            break
        f0 = _nash_objective(m, a, scratch)
        slack = 1e-14 * (abs(f0) + 1.0)  # rounding: near the optimum f cannot resolve the Armijo decrease
        while True:
            for i in range(k):
                trial[i] = a[i] + t * step[i]
            if _nash_objective(m, trial, scratch) <= f0 - 0.25 * t * decrement + slack:
                break
            t *= 0.5
            if t < 1e-10:
                return a, it, resid <= 1e-8  # no representable progress left
        for i in range(k):
            a[i] = trial[i]
    return a, max_iter, False


@njit(cache=True)
def shortcut_multipliers(gram: np.ndarray, alpha: np.ndarray, mu: float) -> np.ndarray:
    """KKT multipliers ``λ = μ + (1−μ) [(diag(1/α²) + M)⁻¹ M1] / α`` of (**) linearised at the bargaining point α
    with every constraint active (``imgrad_nash``'s shortcut); NaN when the system is singular."""
    k = gram.shape[0]
    a = np.empty((k, k))
    x = np.empty(k)
    for i in range(k):
        acc = 0.0
        for j in range(k):
            a[i, j] = gram[i, j]
            acc += gram[i, j]
        a[i, i] += 1.0 / (alpha[i] * alpha[i])
        x[i] = acc
    out = np.empty(k)
    if not lu_solve(a, x, k):
        out[:] = math.nan
        return out
    for i in range(k):
        out[i] = mu + (1.0 - mu) * x[i] / alpha[i]
    return out
