"""Exact, fast solvers for the convex subproblems on the probability simplex ``W`` (architecture §3, §9).

Every gradient-combination subproblem in this package is an instance of

    min_{w ∈ W}  lin · bᵀw  +  root · ‖g_w‖  +  quad · ‖g_w‖²,      b = M1/K,  ‖g_w‖² = wᵀMw     (*)

with ``lin, root, quad ≥ 0`` and ``M = G Gᵀ`` the (trace-normalised) task Gram matrix:

* MGDA min-norm point:           lin = 0,     root = 0,       quad = 1;
* CAGrad (paper Eqn 2 → 10):      lin = 1,     root = s,       quad = 0,   s = c‖g_0‖ = c·sqrt(1ᵀM1)/K;
* IMGrad, released code:          lin = 1.5−μ, root = μ s,     quad = 0;
* IMGrad, paper Eqn 11:           lin = 1−μ,   root = 0,       quad = μ s;
* IMGrad, paper Eqn 9:            lin = 1−μ,   root = (1−μ)s,  quad = μ.

Method (a generalisation of Wolfe's 1976 min-norm-point algorithm).  On the affine hull of a support ``S``
stationarity of (*) reads ``κ M_SS w_S + lin·b_S = ν1`` with the scalar ``κ = root/‖g_w‖ + 2 quad``, so the face
minimiser lies on the line ``w0 + τ z`` (``τ = lin/κ``), where ``w0`` is the affine min-norm point of ``S`` and ``z``
the response to ``−b``; both come from ONE bordered KKT solve with two right-hand sides.  Along this line
``‖g_w‖² = r0² + τ² m`` exactly, so τ solves a monotone scalar equation (closed form unless root·quad > 0, then a
monotone Newton iteration).  Major cycles add the vertex with the most negative reduced cost (which is never in
the current affine hull, so the KKT systems stay non-singular); minor cycles move towards the face minimiser and
drop the coordinates that hit zero, decreasing (*) monotonically.  It stops on the Frank–Wolfe duality gap
``wᵀ∇f − min_k ∇f_k`` (an upper bound on ``f(w) − f*``), at ``g_w = 0`` using the subgradient that certifies the
face optimum.  The active-set loops are compiled (:mod:`active_set`, numba): at K ≤ 50 a solve is microseconds
of arithmetic, which numpy (1.5–3 µs per call, ~60 calls per IMGrad update) or torch would multiply 10–50×.  This
module keeps the interface, warm starts, the rare kink-safe path (:func:`_tau_search`, numpy) and the references.

``solve_cvxpy`` is the independent reference: one parametrised (DPP) cvxpy problem per (K, kind), compiled once.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from scipy.linalg import lapack

from rl_mtl.combiners import active_set


class Solution(NamedTuple):
    """Result of a simplex solve."""

    weights: np.ndarray
    """(K,) float64 point of the simplex"""
    iterations: int
    """major + minor cycles (cvxpy: solver iterations)"""
    gap: float
    """Frank–Wolfe duality gap at ``weights`` (≥ f(w) − f*); NaN when unknown"""


def coefficients(problem: str, gram: np.ndarray, c: float = 0.0, mu: float = 0.0) -> tuple[float, float, float]:
    """``(lin, root, quad)`` of (*) for a named problem: ``minnorm``, ``cagrad``, ``release``, ``eqn11``, ``eqn9``.

    gram: (K, K) PSD; ``c`` is CAGrad's constraint radius factor, ``mu`` IMGrad's μ ∈ [0, 1].
    """
    s = c * g0_norm(gram)
    table = {
        "minnorm": (0.0, 0.0, 1.0),
        "cagrad": (1.0, s, 0.0),
        "release": (1.5 - mu, mu * s, 0.0),
        "eqn11": (1.0 - mu, 0.0, mu * s),
        "eqn9": (1.0 - mu, (1.0 - mu) * s, mu),
    }
    if problem not in table:
        raise ValueError(f"unknown problem '{problem}'; known: {', '.join(table)}")
    return table[problem]


def g0_norm(gram: np.ndarray) -> float:
    """‖g_0‖ = sqrt(1ᵀM1)/K for gram: (K, K) PSD."""
    return active_set.g0_norm(_float64(gram))


def objective(gram: np.ndarray, weights: np.ndarray, lin: float, root: float, quad: float) -> float:
    """Value of (*) at ``weights`` (K,) for gram: (K, K) PSD."""
    mw = gram @ weights
    sq = max(float(weights @ mw), 0.0)
    return lin * float(mw.sum()) / gram.shape[0] + root * math.sqrt(sq) + quad * sq


def min_norm_2(gram: np.ndarray) -> Solution:
    """Closed-form min-norm point for K = 2: ``w_1 = clip((M22 − M12)/(M11 + M22 − 2 M12), 0, 1)``."""
    m11, m12, m22 = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
    den = m11 + m22 - 2.0 * m12
    w1 = 0.5 if den <= 1e-300 else min(max((m22 - m12) / den, 0.0), 1.0)
    return Solution(np.array([w1, 1.0 - w1]), 0, 0.0)


def min_norm(gram: np.ndarray, support: np.ndarray | None = None) -> Solution:
    """MGDA: ``argmin_{w∈W} wᵀMw`` for gram: (K, K) PSD (closed form for K = 2; ``support``: warm start)."""
    if gram.shape[0] == 2:
        return min_norm_2(gram)
    return warm_solve(gram, 0.0, 0.0, 1.0, support)


def _kkt_solve(sub: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    """Solve the bordered face system; ``None`` if it is numerically singular."""
    _, _, x, info = lapack.dgesv(sub, rhs)
    if info != 0 or not np.isfinite(x).all():
        return None
    return x


def simplex_solve(
    gram: np.ndarray,
    lin: float,
    root: float,
    quad: float,
    support: np.ndarray | None = None,
    tol: float = 1e-13,
) -> Solution:
    """Exact minimiser of (*) over the simplex.

    gram: (K, K) symmetric PSD float64, ideally trace-normalised (tolerances are absolute on that scale);
    support: optional guess of the optimal support (one run from there, no fallback: see :func:`warm_solve`);
    by default all K tasks are tried first.
    """
    if support is None:
        return _solve(gram, lin, root, quad, _NO_SUPPORT, active_set.COLD, tol)[0]
    start = np.asarray(support, dtype=np.int64).reshape(-1)
    return _solve(gram, lin, root, quad, start, active_set.FROM_SUPPORT, tol)[0]


def warm_solve(gram: np.ndarray, lin: float, root: float, quad: float, support: np.ndarray | None) -> Solution:
    """:func:`simplex_solve` started on ``support`` (the previous optimum's: successive training Grams are close,
    so the optimal face rarely changes); the cold solve takes over unless the warm one certifies gap ≤ 1e-10."""
    return _warm(gram, lin, root, quad, support)[0]


_NO_SUPPORT = np.zeros(0, dtype=np.int64)


def _warm(gram: np.ndarray, lin: float, root: float, quad: float,
          support: np.ndarray | None) -> tuple[Solution, np.ndarray]:
    """:func:`warm_solve` and the support of its solution."""
    start = _NO_SUPPORT if support is None else support if support.dtype == np.int64 else support.astype(np.int64)
    return _solve(gram, lin, root, quad, start, active_set.WARM, 1e-13)


def _solve(gram: np.ndarray, lin: float, root: float, quad: float, support: np.ndarray, mode: int,
           tol: float) -> tuple[Solution, np.ndarray]:
    """The compiled active-set solve (:func:`active_set.solve`), then, if it could not certify a gap ≤ 1e-10
    with a ``‖g_w‖`` term, the kink-safe smooth path; also returns the solution's support."""
    gram = _float64(gram)
    w, iterations, gap, face = active_set.solve(gram, float(lin), float(root), float(quad), support, mode, tol)
    if root > 0.0 and lin > 0.0 and not gap <= 1e-10:
        # ‖g_w‖ → 0 on some face (0 ∈ conv{g_k}): the kink can stall the active set, so follow the smooth path
        polished = _tau_search(gram, lin, root, quad)
        if objective(gram, polished.weights, lin, root, quad) <= objective(gram, w, lin, root, quad):
            sol = Solution(polished.weights, iterations + polished.iterations, polished.gap)
            return sol, support_of(sol.weights)
    return Solution(w, iterations, gap), face


def _float64(gram: np.ndarray) -> np.ndarray:
    """gram as a C-ordered float64 array: the kernels are compiled (and cached) for that one type."""
    if gram.dtype == np.float64 and gram.flags.c_contiguous:
        return gram
    return np.ascontiguousarray(gram, dtype=np.float64)


def support_of(weights: np.ndarray) -> np.ndarray:
    """Indices of the positive weights (the face a warm start begins on)."""
    return np.flatnonzero(weights > 0.0)


class WarmStart:
    """Remembers the optimal support of the last solve and starts the next one there (speed only: same optimum)."""

    def __init__(self) -> None:
        self.support: np.ndarray | None = None

    def solve(self, gram: np.ndarray, lin: float, root: float, quad: float) -> Solution:
        """:func:`warm_solve` from the remembered support; remembers the new one."""
        sol, self.support = _warm(gram, lin, root, quad, self.support)
        return sol

    def min_norm(self, gram: np.ndarray) -> Solution:
        """:func:`min_norm` from the remembered support; remembers the new one."""
        if gram.shape[0] == 2:
            sol = min_norm_2(gram)
            self.support = support_of(sol.weights)
            return sol
        return self.solve(gram, 0.0, 0.0, 1.0)

    def state_dict(self) -> list[int] | None:
        return None if self.support is None else self.support.tolist()

    def load_state_dict(self, state: list[int] | None) -> None:
        self.support = None if state is None else np.asarray(state, dtype=np.int64)


def _tau_search(gram: np.ndarray, lin: float, root: float, quad: float) -> Solution:
    """Solve (*) with root > 0 through its smooth path ``w(τ) = argmin_W τ bᵀw + ½ wᵀMw`` (kink-safe, slower).

    Writing ``root‖g_w‖ = min_ρ root(‖g_w‖²/2ρ + ρ/2)`` makes (*) a convex 1-D problem in ρ whose inner problem is
    that QP with ``τ = lin/(root/ρ + 2 quad)``; its optimum satisfies ``ψ(τ) = lin − 2 quad τ − root τ/‖g_w(τ)‖ = 0``
    and ψ changes sign once, so bisection brackets τ*, and the exact τ* on the bracketing face finishes the solve.
    """
    norms = np.sqrt(np.maximum(gram.diagonal(), 0.0))
    hi = lin / (2.0 * quad) if quad > 0.0 else 2.0 * lin * float(norms.max()) / root
    lo = lo_start = 1e-14 * hi
    iterations = 0
    best: Solution | None = None
    for _ in range(64):
        tau = math.sqrt(lo * hi)
        qp = simplex_solve(gram, tau, 0.0, 0.5)
        iterations += qp.iterations + 1
        r = math.sqrt(max(float(qp.weights @ gram @ qp.weights), 0.0))
        psi = lin - 2.0 * quad * tau - (root * tau / r if r > 0.0 else math.inf)
        exact = _polish(gram, lin, root, quad, qp.weights)
        if exact is not None and (best is None or exact.gap < best.gap):
            best = exact
        if best is not None and best.gap <= 1e-12 * max(1.0, abs(objective(gram, best.weights, lin, root, quad))):
            break
        if psi > 0.0:
            lo = tau
        else:
            hi = tau
        if hi <= lo * (1.0 + 1e-13):
            break
    if lo == lo_start:
        # ψ ≤ 0 down to τ → 0, i.e. h'(ρ → 0) ≥ 0 for the convex h: the kink ‖g_w‖ = 0 (min-norm point) is optimal
        kink = min_norm(gram)
        if best is None or objective(gram, kink.weights, lin, root, quad) <= objective(
            gram, best.weights, lin, root, quad
        ):
            return Solution(kink.weights, iterations, 0.0)
    if best is None:
        return Solution(min_norm(gram).weights, iterations, math.nan)
    return Solution(best.weights, iterations, best.gap)


def _polish(gram: np.ndarray, lin: float, root: float, quad: float, w: np.ndarray) -> Solution | None:
    """Exact τ* on the face of ``w`` (support of a path point) and its duality gap; ``None`` if infeasible."""
    k = gram.shape[0]
    sup = np.flatnonzero(w > 0.0)
    b = gram.sum(axis=1) / k
    sub = np.zeros((sup.size + 1, sup.size + 1))
    sub[:-1, :-1] = gram[np.ix_(sup, sup)]
    sub[:-1, -1] = 1.0
    sub[-1, :-1] = 1.0
    rhs = np.zeros((sup.size + 1, 2))
    rhs[-1, 0] = 1.0
    rhs[:-1, 1] = -b[sup]
    sol = _kkt_solve(sub, rhs)
    if sol is None:
        return None
    s = sup.size
    tau = active_set.face_tau(lin, root, quad, -float(sol[s, 0]), -float(sol[:s, 1] @ b[sup]))
    if math.isinf(tau):
        return None
    cand = np.zeros(k)
    cand[sup] = sol[:s, 0] + tau * sol[:s, 1]
    if (cand < 0.0).any():
        return None
    mw = gram @ cand
    r = math.sqrt(max(float(cand @ mw), 0.0))
    if r == 0.0:
        return None
    grad = lin * b + (root / r + 2.0 * quad) * mw
    return Solution(cand, 1, max(float(cand @ grad - grad.min()), 0.0))


# ---------------------------------------------------------------------------------------------- references
@lru_cache(maxsize=None)
def _cvxpy_problem(k: int, kind: str) -> tuple[Any, Any, dict[str, Any]]:
    """Parametrised (DPP) cvxpy problem of kind ``minnorm|sqrt|quad|general`` for K = k, compiled once."""
    import cvxpy as cp

    w = cp.Variable(k, nonneg=True)
    params = {
        "lin": cp.Parameter(k),
        "root_factor": cp.Parameter((k, k)),
        "quad_factor": cp.Parameter((k, k)),
    }
    terms = {
        "minnorm": [cp.sum_squares(params["quad_factor"] @ w)],
        "sqrt": [params["lin"] @ w, cp.norm(params["root_factor"] @ w, 2)],
        "quad": [params["lin"] @ w, cp.sum_squares(params["quad_factor"] @ w)],
        "general": [
            params["lin"] @ w,
            cp.norm(params["root_factor"] @ w, 2),
            cp.sum_squares(params["quad_factor"] @ w),
        ],
    }[kind]
    problem = cp.Problem(cp.Minimize(sum(terms)), [cp.sum(w) == 1])
    assert problem.is_dpp()
    return problem, w, params


def _kind(lin: float, root: float, quad: float) -> str:
    if lin == 0.0 and root == 0.0:
        return "minnorm"
    if quad == 0.0:
        return "sqrt"
    if root == 0.0:
        return "quad"
    return "general"


def solve_cvxpy(gram: np.ndarray, lin: float, root: float, quad: float) -> Solution:
    """Reference solve of (*) with cvxpy (Clarabel) on a cached, parametrised problem; gram: (K, K) PSD."""
    import cvxpy as cp

    k = gram.shape[0]
    problem, w, params = _cvxpy_problem(k, _kind(lin, root, quad))
    # ‖g_w‖ = ‖F w‖ with F = diag(sqrt λ) Vᵀ from the eigendecomposition of the PSD Gram
    eigval, eigvec = np.linalg.eigh(0.5 * (gram + gram.T))
    factor = np.sqrt(np.maximum(eigval, 0.0))[:, None] * eigvec.T
    params["lin"].value = lin * gram.sum(axis=1) / k
    params["root_factor"].value = root * factor
    params["quad_factor"].value = math.sqrt(quad) * factor
    try:
        problem.solve(solver=cp.CLARABEL)
    except cp.SolverError:
        problem.solve(solver=cp.SCS, eps=1e-10, max_iters=100000)
    weights = np.maximum(np.asarray(w.value, dtype=np.float64), 0.0)
    weights /= weights.sum()
    iters = int(problem.solver_stats.num_iters or 0)
    return Solution(weights, iters, math.nan)


def cagrad_sgd(raw_gram: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """CAGrad's MT10 approximate solve (Cranial-XIX/CAGrad ``mtrl_files/cagrad.py``), in numpy.

    raw_gram: (K, K) un-normalised Gram.  The reference divides the Gram by the squared mean task-gradient norm
    (with a 1e-4 floor inside the square roots), runs 20 SGD steps (lr 25, 50 for K = 50; momentum 0.5) on
    softmax logits starting at 0 and keeps the best of the 21 iterates.  Returns the simplex point ``w`` (K,)
    and the reference's multiplier ``c·‖g_0‖/‖g_w‖`` (both computed with its epsilons).
    """
    k = raw_gram.shape[0]
    scale = float(np.sqrt(np.diag(raw_gram) + 1e-4).mean())
    gg = raw_gram / scale**2
    gg_mean = gg.mean(axis=1)
    s = math.sqrt(float(gg_mean.mean()) + 1e-4) * c
    lr = 50.0 if k == 50 else 25.0
    logits = np.zeros(k)
    velocity = np.zeros(k)
    best_obj, best_logits = math.inf, logits.copy()
    for i in range(21):
        e = np.exp(logits - logits.max())
        ww = e / e.sum()
        mw = gg @ ww
        norm = math.sqrt(float(ww @ mw) + 1e-4)
        obj = float(ww @ gg_mean) + s * norm
        if obj < best_obj:
            best_obj, best_logits = obj, logits.copy()
        if i < 20:
            grad_w = gg_mean + (s / norm) * mw
            # chain rule through the softmax: J = diag(ww) − ww wwᵀ
            grad = ww * (grad_w - float(ww @ grad_w))
            velocity = 0.5 * velocity + grad if i > 0 else grad
            logits = logits - lr * velocity
    e = np.exp(best_logits - best_logits.max())
    ww = e / e.sum()
    gw_norm = math.sqrt(float(ww @ gg @ ww) + 1e-4)
    return ww, s / (gw_norm + 1e-4)
