"""Compiled dense linear algebra for the K×K systems of the bargaining solvers (:mod:`bargaining`,
:mod:`concave_convex`): Cholesky, ridged Cholesky, LU with partial pivoting, matrix-vector product.

At K ≤ 50 these are a few thousand flops; written as numba loops (``cache=True``) they cost less than one call into
numpy or LAPACK from the compiled solvers would.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def cholesky(a: np.ndarray) -> bool:
    """Cholesky factor of the SPD a (n, n) in its lower triangle, in place; False if a is not numerically PD."""
    n = a.shape[0]
    for j in range(n):
        d = a[j, j]
        for p in range(j):
            d -= a[j, p] * a[j, p]
        if not d > 0.0:
            return False
        d = math.sqrt(d)
        a[j, j] = d
        for i in range(j + 1, n):
            s = a[i, j]
            for p in range(j):
                s -= a[i, p] * a[j, p]
            a[i, j] = s / d
    return True


@njit(cache=True)
def cholesky_solve(l: np.ndarray, b: np.ndarray) -> None:
    """Solve ``L Lᵀ x = b`` in place (b ← x) with the factor of :func:`cholesky`."""
    n = l.shape[0]
    for i in range(n):
        s = b[i]
        for p in range(i):
            s -= l[i, p] * b[p]
        b[i] = s / l[i, i]
    for i in range(n - 1, -1, -1):
        s = b[i]
        for p in range(i + 1, n):
            s -= l[p, i] * b[p]
        b[i] = s / l[i, i]


@njit(cache=True)
def ridged_solve(a: np.ndarray, b: np.ndarray) -> bool:
    """Solve ``(a + δ·max|a_ii|·I) x = b`` in place (b ← x) for the PSD a (n, n), with the smallest δ in {0,
    1e-14, 1e-12, …, 1e-6} whose Cholesky succeeds (at large barrier t on a near-singular R, a is PD only to
    rounding; the ridge keeps a descent direction).  False if none does."""
    n = a.shape[0]
    top = 0.0
    for i in range(n):
        top = max(top, abs(a[i, i]))
    work = np.empty((n, n))
    delta = 0.0
    while delta <= 1e-6:
        for i in range(n):
            for j in range(n):
                work[i, j] = a[i, j]
            work[i, i] += delta * top
        if cholesky(work):
            cholesky_solve(work, b)
            return True
        delta = 1e-14 if delta == 0.0 else delta * 100.0
    return False


@njit(cache=True)
def lu_solve(a: np.ndarray, x: np.ndarray, n: int) -> bool:
    """Solve ``a[:n, :n] z = x[:n]`` in place (x ← z; a destroyed), LU with partial pivoting; False if a pivot is
    below 1e-14 of the largest (numerically singular) or z is not finite."""
    high = 0.0
    low = math.inf
    for col in range(n):
        p = col
        best = abs(a[col, col])
        for r in range(col + 1, n):
            if abs(a[r, col]) > best:
                best = abs(a[r, col])
                p = r
        if not best > 0.0:
            return False
        if p != col:
            for c in range(n):
                a[p, c], a[col, c] = a[col, c], a[p, c]
            x[p], x[col] = x[col], x[p]
        high = max(high, best)
        low = min(low, best)
        inv = 1.0 / a[col, col]
        for r in range(col + 1, n):
            f = a[r, col] * inv
            if f != 0.0:
                for c in range(col + 1, n):
                    a[r, c] -= f * a[col, c]
                x[r] -= f * x[col]
    if not low > 1e-14 * high:
        return False
    for col in range(n - 1, -1, -1):
        s = x[col]
        for c in range(col + 1, n):
            s -= a[col, c] * x[c]
        x[col] = s / a[col, col]
        if not math.isfinite(x[col]):
            return False
    return True


@njit(cache=True)
def matvec(m: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """out ← m v for m (K, K)."""
    k = m.shape[0]
    for i in range(k):
        acc = 0.0
        for j in range(k):
            acc += m[i, j] * v[j]
        out[i] = acc
