"""Exact, fast solvers for the convex subproblems on the probability simplex ``W`` (DESIGN §3, §9).

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
face optimum.  Plain numpy on float64 arrays: at K ≤ 50 torch's per-call overhead would dominate.

``solve_cvxpy`` is the independent reference: one parametrised (DPP) cvxpy problem per (K, kind), compiled once.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from scipy.linalg import lapack


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
    return math.sqrt(max(float(gram.sum()), 0.0)) / gram.shape[0]


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


def min_norm(gram: np.ndarray | Prepared, support: np.ndarray | None = None) -> Solution:
    """MGDA: ``argmin_{w∈W} wᵀMw`` for gram: (K, K) PSD or its :func:`prepare` (closed form for K = 2;
    ``support``: warm start)."""
    raw = gram.gram if isinstance(gram, Prepared) else gram
    if raw.shape[0] == 2:
        return min_norm_2(raw)
    return warm_solve(gram, 0.0, 0.0, 1.0, support)


def _face_tau(lin: float, root: float, quad: float, r0sq: float, m: float) -> float:
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


def _kkt_solve(sub: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    """Solve the bordered face system; ``None`` if it is numerically singular."""
    _, _, x, info = lapack.dgesv(sub, rhs)
    if info != 0 or not np.isfinite(x).all():
        return None
    return x


class Prepared(NamedTuple):
    """What every solve on one Gram shares (IMGrad solves twice per Gram: its MGDA step, then its own problem)."""

    gram: np.ndarray
    b: np.ndarray
    """(K,) ``M1/K``"""
    norms: np.ndarray
    """(K,) ``‖g_k‖``"""
    bordered: np.ndarray
    """(K+1, K+1) equilibrated bordered KKT matrix"""
    rhs: np.ndarray
    """(K+1, 3) its two right-hand sides and the scaling"""


def prepare(gram: np.ndarray) -> Prepared:
    """The bordered KKT system of ``gram`` (K, K), equilibrated by ``D = 1/‖g_k‖`` (``w = D y``): a 1e8 norm ratio
    then costs no precision."""
    k = gram.shape[0]
    b = gram.sum(axis=1) / k
    norms = np.sqrt(np.maximum(gram.diagonal(), 0.0))
    scaling = np.ones(k + 1)
    np.divide(1.0, norms, out=scaling[:k], where=norms > 0.0)
    bordered = np.multiply.outer(scaling, scaling)
    bordered[:k, :k] *= gram
    bordered[k, k] = 0.0
    rhs = np.empty((k + 1, 3))
    np.multiply(b, scaling[:k], out=rhs[:k, 1])
    rhs[:k, 1] *= -1.0
    rhs[:k, 0] = 0.0
    rhs[k, :2] = (1.0, 0.0)
    rhs[:, 2] = scaling
    return Prepared(gram, b, norms, bordered, rhs)


def simplex_solve(
    gram: np.ndarray | Prepared,
    lin: float,
    root: float,
    quad: float,
    support: np.ndarray | None = None,
    tol: float = 1e-13,
) -> Solution:
    """Exact minimiser of (*) over the simplex.

    gram: (K, K) symmetric PSD float64, ideally trace-normalised (tolerances are absolute on that scale), or its
    :func:`prepare`; support: optional guess of the optimal support (warm start); by default all K tasks are
    tried first.
    """
    prepared = gram if isinstance(gram, Prepared) else prepare(gram)
    gram, b, norms, bordered, rhs = prepared
    k = gram.shape[0]
    active = np.zeros(k + 1, dtype=bool)
    active[k] = True
    active[:k] = True if support is None else False
    if support is not None:
        active[np.asarray(support, dtype=np.intp)] = True
    w, face = _guess(bordered, rhs, b, active, lin, root, quad)
    if w is None:
        # the guessed support is (nearly) affinely dependent: start from the best vertex instead
        j = int(np.argmin(lin * b + root * norms + quad * gram.diagonal()))
        active[:k] = False
        active[j] = True
        w = np.zeros(k)
        w[j] = 1.0
        face = None
    result = _wolfe(gram, bordered, rhs, b, norms, active, w, face, lin, root, quad, tol)
    if support is None and not result.gap <= 1e-10:
        # retry from a vertex: the cheap guess may have started on an ill-conditioned face
        vertex = np.zeros(k, dtype=np.intp)
        vertex[0] = int(np.argmin(lin * b + root * norms + quad * gram.diagonal()))
        retry = simplex_solve(prepared, lin, root, quad, support=vertex[:1], tol=tol)
        if objective(gram, retry.weights, lin, root, quad) < objective(gram, result.weights, lin, root, quad):
            result = Solution(retry.weights, result.iterations + retry.iterations, retry.gap)
    if root > 0.0 and lin > 0.0 and not result.gap <= 1e-10:
        # ‖g_w‖ → 0 on some face (0 ∈ conv{g_k}): the kink can stall the active set, so follow the smooth path
        polished = _tau_search(gram, lin, root, quad)
        if objective(gram, polished.weights, lin, root, quad) <= objective(gram, result.weights, lin, root, quad):
            return Solution(polished.weights, result.iterations + polished.iterations, polished.gap)
    return result


def warm_solve(
    gram: np.ndarray | Prepared, lin: float, root: float, quad: float, support: np.ndarray | None
) -> Solution:
    """:func:`simplex_solve` started on ``support`` (the previous optimum's: successive training Grams are close,
    so the optimal face rarely changes); the cold solve takes over unless the warm one certifies gap ≤ 1e-10."""
    prepared = gram if isinstance(gram, Prepared) else prepare(gram)
    if support is not None and support.size and int(support.max()) < prepared.gram.shape[0]:
        sol = simplex_solve(prepared, lin, root, quad, support=support)
        if sol.gap <= 1e-10:
            return sol
    return simplex_solve(prepared, lin, root, quad)


def support_of(weights: np.ndarray) -> np.ndarray:
    """Indices of the positive weights (the face a warm start begins on)."""
    return np.flatnonzero(weights > 0.0)


class WarmStart:
    """Remembers the optimal support of the last solve and starts the next one there (speed only: same optimum)."""

    def __init__(self) -> None:
        self.support: np.ndarray | None = None

    def solve(self, gram: np.ndarray | Prepared, lin: float, root: float, quad: float) -> Solution:
        """:func:`warm_solve` from the remembered support; remembers the new one."""
        sol = warm_solve(gram, lin, root, quad, self.support)
        self.support = support_of(sol.weights)
        return sol

    def min_norm(self, gram: np.ndarray | Prepared) -> Solution:
        """:func:`min_norm` from the remembered support; remembers the new one."""
        sol = min_norm(gram, self.support)
        self.support = support_of(sol.weights)
        return sol

    def state_dict(self) -> list[int] | None:
        return None if self.support is None else self.support.tolist()

    def load_state_dict(self, state: list[int] | None) -> None:
        self.support = None if state is None else np.asarray(state, dtype=np.intp)


def _face(bordered: np.ndarray, rhs: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(support indices, bordered-KKT solution (s+1, 2)) on the face ``active``; ``None`` if singular."""
    idx = np.flatnonzero(active)
    rows = rhs.take(idx, 0)
    lu, _, x, info = lapack.dgesv(bordered.take(idx, 0).take(idx, 1), rows[:, :2])
    if info != 0:
        return None
    pivots = np.abs(lu.diagonal())
    if not pivots.min() > 1e-13 * pivots.max() or not math.isfinite(float(x.sum())):
        return None
    x *= rows[:, 2:]
    return idx[:-1], x


def _face_target(
    x: np.ndarray, b_sup: np.ndarray, lin: float, root: float, quad: float
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(face minimiser w0 + τ z or, for τ = ∞, the ray direction z; z; is_ray) from a bordered-KKT solution."""
    s = x.shape[0] - 1
    z = x[:s, 1]
    tau = _face_tau(lin, root, quad, -float(x[s, 0]), -float(z @ b_sup))
    if math.isinf(tau):
        return z, z, True
    return x[:s, 0] + tau * z, z, False


def _guess(
    bordered: np.ndarray, rhs: np.ndarray, b: np.ndarray, active: np.ndarray, lin: float, root: float, quad: float
) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, bool]] | None]:
    """A feasible start on a guessed support: a few rounds of 'face minimiser, drop its negative coordinates'.

    Each round drops at least one coordinate, so it ends within K solves; it is not monotone in (*) (hence no
    guarantee), but usually lands on the optimal face in 1–4 solves, which spares Wolfe's one-coordinate-per-cycle
    drops; the monotone algorithm takes over from the point it returns.
    ``active`` (K+1,) is updated in place to the returned point's support; also returns the face solve of that
    support and its :func:`_face_target` when still current (so that Wolfe need not repeat them).
    """
    k = b.shape[0]
    w = np.zeros(k)
    target = None
    for _ in range(k):
        face = _face(bordered, rhs, active)
        if face is None:
            return None, None
        sup, x = face
        solved = _face_target(x, b[sup], lin, root, quad)
        target, _, ray = solved
        if ray:
            # (*) decreases without bound along z on this face: guess that the coordinates z drives down vanish
            if not (target < 0.0).any():
                w[sup] = 1.0 / sup.size
                return w, (sup, x, solved)
            target = np.where(target > 0.0, 1.0, 0.0)
        pos = target > 0.0
        if pos.all():
            w[sup] = 1.0 / sup.size
            return w, (sup, x, solved)
        if not pos.any():
            return None, None
        active[sup[~pos]] = False
        target = np.where(pos, target, 0.0)[pos]
    sup = np.flatnonzero(active[:k])
    w[sup] = target / target.sum()
    return w, None


def _wolfe(
    gram: np.ndarray,
    bordered: np.ndarray,
    rhs: np.ndarray,
    b: np.ndarray,
    norms: np.ndarray,
    active: np.ndarray,
    w: np.ndarray,
    face: tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, bool]] | None,
    lin: float,
    root: float,
    quad: float,
    tol: float,
) -> Solution:
    """Wolfe-type active-set iterations from a feasible ``w`` (K,) whose support is ``active[:K]``."""
    k = gram.shape[0]
    iterations = 0
    gap = math.inf
    just_added = -1
    while iterations < 20 * k + 50:
        iterations += 1
        if face is None:
            solve = _face(bordered, rhs, active)
            if solve is None:
                break
            face = (*solve, _face_target(solve[1], b[solve[0]], lin, root, quad))
        sup, _, (target, z, ray) = face
        w_s = w[sup]
        if ray:
            neg = target < 0.0
            target = w_s + float(np.min(w_s[neg] / -target[neg])) * target if neg.any() else w_s
        if (target <= 0.0).any():
            # minor cycle: walk towards the face minimiser until a coordinate hits zero, then drop it
            step = w_s - target
            ratios = np.where(target <= 0.0, w_s / np.where(step > 0.0, step, 1.0), np.inf)
            j = int(np.argmin(ratios))
            alpha = min(float(ratios[j]), 1.0)
            if sup[j] == just_added and alpha <= 1e-15:
                # the vertex just added cannot enter: the previous face optimum is optimal to machine precision
                active[sup[j]] = False
                break
            w_s = w_s + alpha * (target - w_s)
            w_s[j] = 0.0
            w_s = np.maximum(w_s, 0.0)
            w[sup] = w_s / w_s.sum()
            active[sup[w_s <= 0.0]] = False
            face = None
            just_added = -1
            continue
        w[sup] = target
        # major cycle: optimality on the whole simplex with a (sub)gradient of (*)
        mw = gram @ w
        r = math.sqrt(max(float(w @ mw), 0.0))
        if root > 0.0 and r <= 1e-7 * float(w @ norms):
            # g_w = 0 up to rounding: the subgradient root·u, u = (lin/root)·g_z, certifies the face optimum
            z_full = np.zeros(k)
            z_full[sup] = z
            grad = lin * (b + gram @ z_full)
        else:
            grad = lin * b + ((root / r if root > 0.0 else 0.0) + 2.0 * quad) * mw
        nu = float(w @ grad)
        j = int(grad.argmin())
        gap = max(nu - float(grad[j]), 0.0)
        if gap <= tol * max(1.0, abs(nu), abs(float(grad[j]))) or active[j]:
            break
        active[j] = True
        just_added = j
        face = None
    return Solution(w, iterations, float(gap))


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
    tau = _face_tau(lin, root, quad, -float(sol[s, 0]), -float(sol[:s, 1] @ b[sup]))
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
