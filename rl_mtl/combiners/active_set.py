"""Compiled kernel of the simplex solver in :mod:`rl_mtl.combiners.solvers`: the Wolfe-type active-set algorithm.

The algorithm (and the problem (*) it solves) is described in :mod:`solvers`; this module holds its inner loops,
compiled with numba.  Why compiled: at K = 10 the work is a few 11×11 solves and matrix-vector products, a few
microseconds of arithmetic, but written with numpy it takes ~60 array calls per IMGrad update at 1.5–3 µs of call
overhead each, 10–50× the arithmetic.  Compiled, a warm IMGrad solve (MGDA step plus its own problem) costs a few
microseconds and the combiner's cost is its Python glue.

Everything here works on plain float64 arrays and integer index lists, allocates only small scratch arrays, and
mirrors the numpy formulation step by step (same pivoting, same tolerances, same cycle rules), so that the
solver's documented guarantees (gap ≤ 1e-13 relative, non-singular faces, monotone decrease) carry over.
Functions are compiled on first use and cached on disk (``cache=True``): a new environment pays ~10 s once.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: solve modes of :func:`solve`
COLD, FROM_SUPPORT, WARM = 0, 1, 2


@njit(cache=True)
def face_tau(lin: float, root: float, quad: float, r0sq: float, m: float) -> float:
    """τ ≥ 0 (possibly ∞) solving ``τ·(root/‖g_w‖ + 2 quad) = lin`` with ``‖g_w‖² = r0² + τ² m`` on a face."""
    if lin <= 0.0 or m <= 0.0:
        # no linear term, or it is constant on the face: the smallest ‖g_w‖ (τ = 0) is best
        return 0.0
    if root == 0.0:
        return lin / (2.0 * quad) if quad > 0.0 else math.inf
    r0 = math.sqrt(max(r0sq, 0.0))
    sm = math.sqrt(m)
    if quad == 0.0:
        den = root * root - lin * lin * m
        return lin * r0 / math.sqrt(den) if den > 0.0 else math.inf
    if r0 == 0.0:
        return max(lin - root / sm, 0.0) / (2.0 * quad)
    # ψ(τ) = lin − 2 quad τ − root τ/sqrt(r0² + τ² m) is convex and decreasing with ψ(0) > 0, so Newton from
    # τ = 0 increases monotonically to the unique root without overshooting
    tau = 0.0
    for _ in range(60):
        den = r0sq + tau * tau * m
        sq = math.sqrt(den)
        psi = lin - 2.0 * quad * tau - root * tau / sq
        dpsi = -2.0 * quad - root * r0sq / (den * sq)
        step = -psi / dpsi
        tau += step
        if step <= 1e-16 * tau:
            break
    return tau


@njit(cache=True)
def system(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(b, norms, scaling, bordered, rhs)`` of gram (K, K): ``b = M1/K``, ``‖g_k‖``, ``D = 1/‖g_k‖`` (1 for a
    zero gradient, then 1 for the border), the bordered KKT matrix ``D [[M, 1], [1ᵀ, 0]] D`` (K+1, K+1) and its
    right-hand sides ``[e_K, −D b]`` (K+1, 2).  The equilibration ``w = D y`` makes a 1e8 norm ratio cost no
    precision."""
    k = gram.shape[0]
    b = np.empty(k)
    norms = np.empty(k)
    scaling = np.ones(k + 1)
    for i in range(k):
        acc = 0.0
        for j in range(k):
            acc += gram[i, j]
        b[i] = acc / k
        norms[i] = math.sqrt(gram[i, i]) if gram[i, i] > 0.0 else 0.0
        if norms[i] > 0.0:
            scaling[i] = 1.0 / norms[i]
    bordered = np.empty((k + 1, k + 1))
    rhs = np.zeros((k + 1, 2))
    for i in range(k):
        for j in range(k):
            bordered[i, j] = (scaling[i] * scaling[j]) * gram[i, j]
        bordered[i, k] = scaling[i]
        bordered[k, i] = scaling[i]
        rhs[i, 1] = -(b[i] * scaling[i])
    bordered[k, k] = 0.0
    rhs[k, 0] = 1.0
    return b, norms, scaling, bordered, rhs


@njit(cache=True)
def _indices(active: np.ndarray, idx: np.ndarray) -> int:
    """Write the positions of ``active`` (K+1,) into ``idx``; return how many (the border K is always last)."""
    n = 0
    for i in range(active.shape[0]):
        if active[i]:
            idx[n] = i
            n += 1
    return n


@njit(cache=True)
def _face_solve(
    bordered: np.ndarray, rhs: np.ndarray, scaling: np.ndarray, idx: np.ndarray, n: int, x: np.ndarray
) -> bool:
    """Solve the bordered system of the face ``idx[:n]`` for both right-hand sides into ``x[:n]`` (unscaled).

    LU with partial pivoting (LAPACK dgesv's algorithm); False if a pivot is zero, the pivots span more than 1e13
    (numerically singular: the face's gradients are nearly affinely dependent) or the solution is not finite.
    """
    a = np.empty((n, n))
    for r in range(n):
        for c in range(n):
            a[r, c] = bordered[idx[r], idx[c]]
        x[r, 0] = rhs[idx[r], 0]
        x[r, 1] = rhs[idx[r], 1]
    low = math.inf
    high = 0.0
    for col in range(n):
        p = col
        best = abs(a[col, col])
        for r in range(col + 1, n):
            v = abs(a[r, col])
            if v > best:
                best = v
                p = r
        if not best > 0.0:
            return False
        if p != col:
            for c in range(n):
                a[p, c], a[col, c] = a[col, c], a[p, c]
            x[p, 0], x[col, 0] = x[col, 0], x[p, 0]
            x[p, 1], x[col, 1] = x[col, 1], x[p, 1]
        low = min(low, best)
        high = max(high, best)
        inv = 1.0 / a[col, col]
        for r in range(col + 1, n):
            f = a[r, col] * inv
            if f != 0.0:
                for c in range(col + 1, n):
                    a[r, c] -= f * a[col, c]
                x[r, 0] -= f * x[col, 0]
                x[r, 1] -= f * x[col, 1]
    if not low > 1e-13 * high:
        return False
    for col in range(n - 1, -1, -1):
        for j in range(2):
            acc = x[col, j]
            for c in range(col + 1, n):
                acc -= a[col, c] * x[c, j]
            x[col, j] = acc / a[col, col]
    for r in range(n):
        for j in range(2):
            if not math.isfinite(x[r, j]):
                return False
            x[r, j] *= scaling[idx[r]]
    return True


@njit(cache=True)
def _face_target(
    x: np.ndarray, n: int, b: np.ndarray, idx: np.ndarray, lin: float, root: float, quad: float, target: np.ndarray
) -> bool:
    """Write the face minimiser ``w0 + τ z`` (or, when τ = ∞, the ray direction z) into ``target[:n−1]``; return
    whether it is a ray.  ``x`` holds the face's bordered solution: ``w0 = x[:, 0]``, ``z = x[:, 1]``,
    ``‖g_{w0}‖² = −x[s, 0]``."""
    s = n - 1
    m = 0.0
    for r in range(s):
        m -= x[r, 1] * b[idx[r]]
    tau = face_tau(lin, root, quad, -x[s, 0], m)
    if math.isinf(tau):
        for r in range(s):
            target[r] = x[r, 1]
        return True
    for r in range(s):
        target[r] = x[r, 0] + tau * x[r, 1]
    return False


@njit(cache=True)
def _guess(
    bordered: np.ndarray, rhs: np.ndarray, scaling: np.ndarray, b: np.ndarray, active: np.ndarray,
    lin: float, root: float, quad: float, w: np.ndarray, idx: np.ndarray, x: np.ndarray, target: np.ndarray,
) -> tuple[int, int, bool]:
    """A feasible start on a guessed support: rounds of 'face minimiser, drop its non-positive coordinates'.

    Each round drops at least one coordinate, so it ends within K solves; it is not monotone in (*) (hence no
    guarantee), but usually lands on the optimal face in 1–4 solves, which spares Wolfe's one-coordinate-per-cycle
    drops.  Writes the start into ``w`` and updates ``active`` to its support.  Returns ``(status, n, ray)``:
    status 0 = failed (singular face or nothing positive), 1 = ``w`` set and the face solve of its support
    (``idx[:n]``, ``x``, ``target``, ``ray``) is current, 2 = ``w`` set, no face solve current.
    """
    k = b.shape[0]
    c = 0
    for _ in range(k):
        n = _indices(active, idx)
        if not _face_solve(bordered, rhs, scaling, idx, n, x):
            return 0, n, False
        ray = _face_target(x, n, b, idx, lin, root, quad, target)
        s = n - 1
        if ray:
            # (*) decreases without bound along z on this face: guess that the coordinates z drives down vanish
            negative = False
            for r in range(s):
                if target[r] < 0.0:
                    negative = True
            if not negative:
                for r in range(s):
                    w[idx[r]] = 1.0 / s
                return 1, n, True
            for r in range(s):
                target[r] = 1.0 if target[r] > 0.0 else 0.0
        positive = 0
        for r in range(s):
            if target[r] > 0.0:
                positive += 1
        if positive == s:
            for r in range(s):
                w[idx[r]] = 1.0 / s
            return 1, n, ray
        if positive == 0:
            return 0, n, False
        c = 0
        for r in range(s):
            if target[r] > 0.0:
                target[c] = target[r]
                c += 1
            else:
                active[idx[r]] = False
    # K rounds without settling: start from the last round's positive part
    n = _indices(active, idx)
    total = 0.0
    for q in range(c):
        total += target[q]
    for q in range(c):
        w[idx[q]] = target[q] / total
    return 2, n, False


@njit(cache=True)
def _wolfe(
    gram: np.ndarray, bordered: np.ndarray, rhs: np.ndarray, scaling: np.ndarray, b: np.ndarray,
    norms: np.ndarray, active: np.ndarray, w: np.ndarray, have_face: bool, n: int, ray: bool,
    idx: np.ndarray, x: np.ndarray, target: np.ndarray, lin: float, root: float, quad: float, tol: float,
) -> tuple[int, float]:
    """Wolfe-type active-set iterations from a feasible ``w`` (K,) whose support is ``active[:K]``; returns
    ``(iterations, Frank–Wolfe gap)`` and leaves the solution in ``w``."""
    k = gram.shape[0]
    iterations = 0
    gap = math.inf
    just_added = -1
    step = np.empty(k + 1)
    mw = np.empty(k)
    grad = np.empty(k)
    while iterations < 20 * k + 50:
        iterations += 1
        if not have_face:
            n = _indices(active, idx)
            if not _face_solve(bordered, rhs, scaling, idx, n, x):
                break
            ray = _face_target(x, n, b, idx, lin, root, quad, target)
        have_face = False
        s = n - 1
        if ray:
            # walk along the ray until a coordinate hits zero (or stay, if none decreases)
            t = math.inf
            negative = False
            for r in range(s):
                if target[r] < 0.0:
                    negative = True
                    t = min(t, w[idx[r]] / -target[r])
            for r in range(s):
                target[r] = w[idx[r]] + t * target[r] if negative else w[idx[r]]
        j = -1
        best = math.inf
        for r in range(s):
            if target[r] <= 0.0:
                gap_r = w[idx[r]] - target[r]
                ratio = w[idx[r]] / (gap_r if gap_r > 0.0 else 1.0)
                if j < 0 or ratio < best:
                    best = ratio
                    j = r
        if j >= 0:
            # minor cycle: walk towards the face minimiser until a coordinate hits zero, then drop it
            alpha = min(best, 1.0)
            if idx[j] == just_added and alpha <= 1e-15:
                # the vertex just added cannot enter: the previous face optimum is optimal to machine precision
                active[idx[j]] = False
                break
            total = 0.0
            for r in range(s):
                v = w[idx[r]] + alpha * (target[r] - w[idx[r]])
                if r == j or v < 0.0:
                    v = 0.0
                step[r] = v
                total += v
            for r in range(s):
                w[idx[r]] = step[r] / total
                if step[r] <= 0.0:
                    active[idx[r]] = False
            just_added = -1
            continue
        for r in range(s):
            w[idx[r]] = target[r]
        # major cycle: optimality on the whole simplex with a (sub)gradient of (*)
        sq = _gram_times(gram, w, mw)
        wn = 0.0
        for i in range(k):
            wn += w[i] * norms[i]
        rw = math.sqrt(max(sq, 0.0))
        if root > 0.0 and rw <= 1e-7 * wn:
            # g_w = 0 up to rounding: the subgradient root·u, u = (lin/root)·g_z, certifies the face optimum
            for i in range(k):
                acc = 0.0
                for r in range(s):
                    acc += gram[i, idx[r]] * x[r, 1]
                grad[i] = lin * (b[i] + acc)
        else:
            coef = (root / rw if root > 0.0 else 0.0) + 2.0 * quad
            for i in range(k):
                grad[i] = lin * b[i] + coef * mw[i]
        nu = 0.0
        j = 0
        for i in range(k):
            nu += w[i] * grad[i]
            if grad[i] < grad[j]:
                j = i
        gap = max(nu - grad[j], 0.0)
        if gap <= tol * max(1.0, abs(nu), abs(grad[j])) or active[j]:
            break
        active[j] = True
        just_added = j
    return iterations, gap


@njit(cache=True)
def _gram_times(gram: np.ndarray, w: np.ndarray, out: np.ndarray) -> float:
    """Write ``M w`` into ``out`` (K,) and return ``wᵀMw`` (= ‖g_w‖² for w on the simplex)."""
    k = gram.shape[0]
    sq = 0.0
    for i in range(k):
        acc = 0.0
        for j in range(k):
            acc += gram[i, j] * w[j]
        out[i] = acc
        sq += w[i] * acc
    return sq


@njit(cache=True)
def objective(gram: np.ndarray, w: np.ndarray, lin: float, root: float, quad: float) -> float:
    """Value of (*) at ``w`` (K,)."""
    k = gram.shape[0]
    mw = np.empty(k)
    sq = max(_gram_times(gram, w, mw), 0.0)
    total = 0.0
    for i in range(k):
        total += mw[i]
    return lin * total / k + root * math.sqrt(sq) + quad * sq


@njit(cache=True)
def _run(
    gram: np.ndarray, system_: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    lin: float, root: float, quad: float, support: np.ndarray, all_tasks: bool, tol: float,
) -> tuple[np.ndarray, int, float]:
    """Guess, then Wolfe, from ``support`` (or every task when ``all_tasks``); the vertex with the smallest
    objective is the start when the guess fails."""
    b, norms, scaling, bordered, rhs = system_
    k = gram.shape[0]
    active = np.zeros(k + 1, dtype=np.bool_)
    active[k] = True
    for i in range(k):
        active[i] = all_tasks
    if not all_tasks:
        for i in support:
            if 0 <= i < k:
                active[i] = True
    w = np.zeros(k)
    idx = np.empty(k + 1, dtype=np.int64)
    x = np.empty((k + 1, 2))
    target = np.empty(k + 1)
    status, n, ray = _guess(bordered, rhs, scaling, b, active, lin, root, quad, w, idx, x, target)
    if status == 0:
        # the guessed support is (nearly) affinely dependent: start from the best vertex instead
        j = _best_vertex(gram, b, norms, lin, root, quad)
        for i in range(k):
            active[i] = False
            w[i] = 0.0
        active[j] = True
        w[j] = 1.0
    iterations, gap = _wolfe(gram, bordered, rhs, scaling, b, norms, active, w, status == 1, n, ray, idx, x,
                             target, lin, root, quad, tol)
    return w, iterations, gap


@njit(cache=True)
def _best_vertex(gram: np.ndarray, b: np.ndarray, norms: np.ndarray, lin: float, root: float, quad: float) -> int:
    """The vertex e_j with the smallest (*)."""
    j = 0
    best = math.inf
    for i in range(b.shape[0]):
        v = lin * b[i] + root * norms[i] + quad * gram[i, i]
        if v < best:
            best = v
            j = i
    return j


@njit(cache=True)
def solve(
    gram: np.ndarray, lin: float, root: float, quad: float, support: np.ndarray, mode: int, tol: float
) -> tuple[np.ndarray, int, float, np.ndarray]:
    """``(w, iterations, gap, support of w)`` of (*) on gram (K, K).

    mode ``COLD``: from every task (then, if the gap stays above 1e-10, once more from the best vertex, keeping
    the better point); ``FROM_SUPPORT``: one run from ``support``; ``WARM``: from ``support``, accepted when its
    gap is ≤ 1e-10, else the cold solve (also when ``support`` is empty or not a set of task indices).
    """
    k = gram.shape[0]
    sys_ = system(gram)
    if mode == WARM:
        for i in support:
            if i < 0 or i >= k:
                mode = COLD
        if support.shape[0] == 0:
            mode = COLD
    if mode != COLD:
        w, iterations, gap = _run(gram, sys_, lin, root, quad, support, False, tol)
        if mode == FROM_SUPPORT or gap <= 1e-10:
            return w, iterations, gap, _support(w)
    w, iterations, gap = _run(gram, sys_, lin, root, quad, support, True, tol)
    if not gap <= 1e-10:
        # retry from a vertex: the cheap guess may have started on an ill-conditioned face
        vertex = np.empty(1, dtype=np.int64)
        vertex[0] = _best_vertex(gram, sys_[0], sys_[1], lin, root, quad)
        w2, iterations2, gap2 = _run(gram, sys_, lin, root, quad, vertex, False, tol)
        if objective(gram, w2, lin, root, quad) < objective(gram, w, lin, root, quad):
            return w2, iterations + iterations2, gap2, _support(w2)
    return w, iterations, gap, _support(w)


@njit(cache=True)
def _support(w: np.ndarray) -> np.ndarray:
    """Indices of the positive entries of w (the face a warm start begins on)."""
    n = 0
    for v in w:
        if v > 0.0:
            n += 1
    out = np.empty(n, dtype=np.int64)
    n = 0
    for i in range(w.shape[0]):
        if w[i] > 0.0:
            out[n] = i
            n += 1
    return out


@njit(cache=True)
def conflict_averse(gram: np.ndarray, w: np.ndarray, s: float, factor: float) -> np.ndarray:
    """weights (K,) ``(1/K + s/‖g_w‖ · w)·factor`` of CAGrad's direction (see :mod:`cagrad`); the g_w term is
    dropped when ``‖g_w‖ ≤ 1e-7 Σ w_k‖g_k‖`` (g_w = 0 up to rounding)."""
    k = gram.shape[0]
    gw_norm, floor, _, _ = norm_stats(gram, w)
    coef = s / gw_norm if s > 0.0 and gw_norm > 1e-7 * floor else 0.0
    out = np.empty(k)
    for i in range(k):
        out[i] = (1.0 / k + coef * w[i]) * factor
    return out


@njit(cache=True)
def g0_norm(gram: np.ndarray) -> float:
    """‖g_0‖ = sqrt(1ᵀM1)/K for gram (K, K) PSD (one compiled call: a numpy reduction costs more, cache-cold)."""
    k = gram.shape[0]
    total = 0.0
    for i in range(k):
        for j in range(k):
            total += gram[i, j]
    return math.sqrt(max(total, 0.0)) / k


@njit(cache=True)
def norm_stats(gram: np.ndarray, w: np.ndarray) -> tuple[float, float, float, float]:
    """``(‖g_w‖, Σ_k w_k‖g_k‖, g_0ᵀg_w, ‖g_0‖)`` for gram (K, K) PSD and w (K,): what μ and the conflict-averse
    step need, in one pass (``g_0 = G1/K``)."""
    k = gram.shape[0]
    sq = 0.0
    wn = 0.0
    g0w = 0.0
    total = 0.0
    for i in range(k):
        acc = 0.0
        row = 0.0
        for j in range(k):
            acc += gram[i, j] * w[j]
            row += gram[i, j]
        sq += w[i] * acc
        g0w += row * w[i]
        total += row
        wn += w[i] * (math.sqrt(gram[i, i]) if gram[i, i] > 0.0 else 0.0)
    return math.sqrt(max(sq, 0.0)), wn, g0w / k, math.sqrt(max(total, 0.0)) / k
