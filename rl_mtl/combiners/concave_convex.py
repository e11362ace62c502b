"""IMGrad-Nash's concave-convex iteration with every step solved exactly, compiled (numba, ``cache=True``).

The step (IMGrad paper Eqn 13 with the concave ``φ`` linearised at ``ω_t``; ``M`` the trace-normalised Gram):

    min_ω cᵀω   s.t.  h_i(ω) = log ω_i + log (Mω)_i ≥ 0,   c = (1 − μ) M1 + μ ∇φ(ω_t),              (**)

a linear objective on the superlevel set of concave functions, hence convex.  Its KKT conditions, exact and
sufficient (Slater holds: ``2ω`` is strictly feasible for any feasible ω), are

    c = Σ_{i∈A} λ_i ∇h_i(ω),   ∇h_i = e_i/ω_i + M_i/(Mω)_i,   λ_A ≥ 0,   h_A(ω) = 0,   h(ω) ≥ 0.

They are solved in the variables ``y = ω ∘ ‖g‖`` (``‖g_i‖ = sqrt(M_ii)``), where the constraint reads
``y_i (Ry)_i ≥ 1`` with ``R`` the gradients' correlation matrix (unit diagonal): a 1e3 norm imbalance only enters
``c``.  :func:`linearised_step`: Newton's method on the KKT system of a guessed active set ``A`` (the previous
step's: it rarely changes along the iteration or from one update to the next), a ``(K+|A|)``-square LU solve per
iteration, iterates kept inside the logs' domain, a constraint that a step would violate joining ``A`` (blocking);
then the certificate — a negative ``λ_j`` leaves ``A``, a violated ``h_i < 0`` joins it, and Newton resumes — until
the KKT conditions above hold to rounding.  When Newton or the active-set rounds fail, a feasible path-following
barrier method (barrier ``−Σ log h_i``, iterates strictly feasible) finds the active set and the same Newton polish
finishes.  :func:`ccp` runs the concave-convex iteration of ``imgrad_nash`` with these exact steps.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from rl_mtl.combiners.dense import lu_solve, matvec, ridged_solve

#: outcomes of :func:`linearised_step`: failed; KKT certified from the warm start; after the barrier method;
#: the barrier's point only (its gap bound certifies it, the KKT polish did not converge)
FAILED, WARM, GLOBAL, BARRIER = -1, 0, 1, 2


@njit(cache=True)
def _blocking(y: float, q: float, dy: float, dq: float, limit: float) -> float:
    """Smallest t in [0, limit) where the feasible inactive constraint ``(y + t dy)(q + t dq) ≥ 1`` becomes
    active, else ``limit`` (a constraint a hair below 1 counts as on its boundary)."""
    gap = max(y * q - 1.0, 0.0)
    b = y * dq + q * dy
    a = dy * dq
    # p(t) − 1 = gap + b t + a t², gap ≥ 0: find its first root in (0, limit)
    if a == 0.0:
        t = -gap / b if b < 0.0 else math.inf
    else:
        disc = b * b - 4.0 * a * gap
        if disc < 0.0:
            return limit
        root = math.sqrt(disc)
        # the two roots, computed without cancellation
        big = -0.5 * (b - root if b < 0.0 else b + root)
        t1 = big / a
        t2 = gap / big if big != 0.0 else math.inf
        t = math.inf
        for cand in (t1, t2):
            if cand >= 0.0 and cand < t:
                t = cand
    return t if t < limit else limit


@njit(cache=True)
def _newton(r: np.ndarray, c: np.ndarray, y: np.ndarray, lam: np.ndarray, active: np.ndarray, released: int) -> int:
    """Newton's method on the KKT system of (**) (scaled: R, c) with the constraints ``active`` as equalities,
    from (y, λ), in place.  Returns its iterations, or −1 when it stalled, diverged or met a singular system.

    Each iteration solves ``[[H, −J_Aᵀ], [J_A, 0]] [Δy; Δλ] = [−r_d; −h_A]`` with ``H = −Σ_A λ_i ∇²h_i`` (PSD for
    λ ≥ 0); the step is cut to stay 1 % inside ``y > 0, Ry > 0``, and at the first feasible inactive constraint it
    would violate, which then joins A (the active-set method's blocking rule) — except ``released``, the constraint
    just dropped for its negative multiplier (else Newton's first step, not a descent step, can re-add it at once:
    a drop/add cycle).  Converged: the residual is ≤ 1e-14 of the size of its terms, or ≤ 1e-8 and no longer
    shrinking fourfold (the rounding floor: ~1e-9 where R is near-singular).
    """
    k = c.shape[0]
    idx = np.empty(k, dtype=np.int64)
    q = np.empty(k)
    dq = np.empty(k)
    rd = np.empty(k)
    mag = np.empty(k)
    x = np.empty(2 * k)
    kkt = np.empty((2 * k, 2 * k))
    prev = math.inf
    since = 0  # iterations since A last changed
    for it in range(60):
        na = 0
        for i in range(k):
            if active[i]:
                idx[na] = i
                na += 1
        size = k + na
        matvec(r, y, q)
        for i in range(k):
            if not (y[i] > 0.0 and q[i] > 0.0):
                return -1
        for j in range(k):
            rd[j] = c[j]
            mag[j] = abs(c[j])
        for a in range(na):
            i = idx[a]
            for j in range(k):
                term = lam[i] * r[i, j] / q[i]
                rd[j] -= term
                mag[j] += abs(term)
            term = lam[i] / y[i]
            rd[i] -= term
            mag[i] += abs(term)
        res = 0.0
        for j in range(k):
            res = max(res, abs(rd[j]) / max(mag[j], 1e-300))
        for a in range(na):
            i = idx[a]
            res = max(res, abs(math.log(y[i]) + math.log(q[i])))
        if not math.isfinite(res):
            return -1
        if res <= 1e-14 or (res <= 1e-8 and res > 0.25 * prev):
            return it
        if since >= 8 and res > 0.5 * prev:
            return -1  # not converging: leave it to the barrier method
        prev = res
        since += 1
        for j in range(size):
            for l in range(size):
                kkt[j, l] = 0.0
        for a in range(na):
            i = idx[a]
            wq = lam[i] / (q[i] * q[i])
            for j in range(k):
                f = wq * r[i, j]
                for l in range(k):
                    kkt[j, l] += f * r[i, l]
            kkt[i, i] += lam[i] / (y[i] * y[i])
            for j in range(k):
                grad_ij = r[i, j] / q[i]
                kkt[j, k + a] = -grad_ij
                kkt[k + a, j] = grad_ij
            kkt[i, k + a] -= 1.0 / y[i]
            kkt[k + a, i] += 1.0 / y[i]
            x[k + a] = -(math.log(y[i]) + math.log(q[i]))
        for j in range(k):
            x[j] = -rd[j]
        if not lu_solve(kkt, x, size):
            return -1
        matvec(r, x[:k], dq)
        t = 1.0
        for i in range(k):
            if x[i] < 0.0:
                t = min(t, 0.99 * (-y[i] / x[i]))
            if dq[i] < 0.0:
                t = min(t, 0.99 * (-q[i] / dq[i]))
        block = -1
        for i in range(k):
            if not active[i] and i != released and y[i] * q[i] >= 1.0 - 1e-9:  # feasible up to rounding
                tb = _blocking(y[i], q[i], x[i], dq[i], t)
                if tb < t:
                    t = tb
                    block = i
        for i in range(k):
            y[i] += t * x[i]
        for a in range(na):
            lam[idx[a]] += t * x[k + a]
        if block >= 0:
            active[block] = True
            lam[block] = 0.0
            prev = math.inf
            since = 0
    return -1


@njit(cache=True)
def _active_set(r: np.ndarray, c: np.ndarray, y: np.ndarray, lam: np.ndarray, active: np.ndarray) -> int:
    """Newton on a guessed active set, then the KKT certificate: the most negative λ_j leaves A, else the most
    violated inactive constraint joins it, and Newton resumes (at most 2K + 2 rounds).  Returns the Newton
    iterations when the KKT conditions of (**) hold, −1 otherwise; (y, λ, active) in place."""
    k = c.shape[0]
    q = np.empty(k)
    total = 0
    released = -1
    for _ in range(2 * k + 2):
        it = _newton(r, c, y, lam, active, released)
        if it < 0:
            return -1
        total += it
        released = -1
        big = 1.0
        for i in range(k):
            if active[i]:
                big = max(big, abs(lam[i]))
        j = -1
        worst = -1e-12 * big
        for i in range(k):
            if active[i] and lam[i] < worst:
                worst = lam[i]
                j = i
        if j >= 0:
            active[j] = False
            lam[j] = 0.0
            released = j
            continue
        matvec(r, y, q)
        worst = -1e-13
        for i in range(k):
            if not active[i]:
                h = math.log(y[i]) + math.log(q[i])
                if h < worst:
                    worst = h
                    j = i
        if j < 0:
            return total
        active[j] = True
        lam[j] = 0.0
    return -1


@njit(cache=True)
def _barrier_parts(r: np.ndarray, y: np.ndarray, h: np.ndarray, grad: np.ndarray, hess: np.ndarray) -> None:
    """Constraint values ``h_i = log y_i + log (Ry)_i``, gradient and Hessian of ``Φ(y) = −Σ log h_i``.

    ``∇²Φ = Σ ∇h_i∇h_iᵀ/h_i² + Σ (e_ie_iᵀ/y_i² + R_iR_iᵀ/q_i²)/h_i``: a sum of PSD terms (h_i concave), so it
    stays numerically PD where the product form ``−log(y_i q_i − 1)`` loses it to cancellation.
    """
    k = y.shape[0]
    q = np.empty(k)
    matvec(r, y, q)
    for i in range(k):
        h[i] = math.log(y[i]) + math.log(q[i])
        grad[i] = 0.0
        for j in range(k):
            hess[i, j] = 0.0
    dh = np.empty(k)
    for i in range(k):
        for j in range(k):
            dh[j] = r[i, j] / q[i]
        dh[i] += 1.0 / y[i]
        inv = 1.0 / h[i]
        wq = inv / (q[i] * q[i])
        for j in range(k):
            grad[j] -= dh[j] * inv
            f = dh[j] * inv * inv
            g = wq * r[i, j]
            for l in range(k):
                hess[j, l] += f * dh[l] + g * r[i, l]
        hess[i, i] += inv / (y[i] * y[i])


@njit(cache=True)
def _barrier_value(r: np.ndarray, c: np.ndarray, y: np.ndarray, t: float) -> float:
    """``t cᵀy + Φ(y)``, +inf outside the strictly feasible set (y > 0, Ry > 0, h > 0)."""
    k = y.shape[0]
    total = 0.0
    for i in range(k):
        if not y[i] > 0.0:
            return math.inf
        acc = 0.0
        for j in range(k):
            acc += r[i, j] * y[j]
        if not acc > 0.0:
            return math.inf
        h = math.log(y[i]) + math.log(acc)
        if not h > 0.0:
            return math.inf
        total += t * c[i] * y[i] - math.log(h)
    return total


@njit(cache=True)
def _gap_target(c: np.ndarray, y: np.ndarray) -> float:
    """Gap the barrier method aims at: 1e-9 of ``|cᵀy|``, or of ``1e-3 Σ|c_i y_i|`` when cᵀy cancels."""
    cy = 0.0
    size = 0.0
    for i in range(c.shape[0]):
        cy += c[i] * y[i]
        size += abs(c[i] * y[i])
    return 1e-9 * max(abs(cy), 1e-3 * size, 1e-300)


@njit(cache=True)
def _barrier(r: np.ndarray, c: np.ndarray, y: np.ndarray, lam: np.ndarray, active: np.ndarray) -> int:
    """Path-following barrier method for (**) from ``y`` (y > 0, Ry > 0; scaled to ``min y_i(Ry)_i = 1.1``):
    Newton centring (Armijo backtracking, ridged Cholesky) of ``t cᵀy + Φ(y)``, t ×20 until the central path's gap
    ``K/t`` is below :func:`_gap_target`; then ``λ_i = 1/(t h_i)`` and ``A = {h_i < 1/sqrt(t)}``.  Returns Newton
    iterations, −1 on failure (also when rounding stops the path with a gap bound over 1e3 targets)."""
    k = c.shape[0]
    q = np.empty(k)
    matvec(r, y, q)
    low = math.inf
    for i in range(k):
        if not (y[i] > 0.0 and q[i] > 0.0):
            return -1
        low = min(low, y[i] * q[i])
    f = math.sqrt(1.1 / low)
    for i in range(k):
        y[i] *= f
    h = np.empty(k)
    grad = np.empty(k)
    hess = np.empty((k, k))
    dy = np.empty(k)
    hc = np.empty(k)
    trial = np.empty(k)
    nu = float(k)  # on the central path the duality gap is K/t
    # initial t: the point of the central path closest to y in the barrier's local norm
    _barrier_parts(r, y, h, grad, hess)
    cy = 0.0
    for i in range(k):
        hc[i] = c[i]
        dy[i] = grad[i]
        cy += c[i] * y[i]
    if not (ridged_solve(hess, hc) and ridged_solve(hess, dy)):
        return -1
    num = 0.0
    den = 0.0
    for i in range(k):
        num -= c[i] * dy[i]
        den += c[i] * hc[i]
    t = num / den if den > 0.0 and num > 0.0 else nu / max(abs(cy), 1e-300)
    total = 0
    stalled = False
    for _ in range(60):
        for _ in range(60):
            total += 1
            _barrier_parts(r, y, h, grad, hess)
            for i in range(k):
                dy[i] = -(t * c[i] + grad[i])
            if not ridged_solve(hess, dy):
                stalled = True
                break
            dec = 0.0
            for i in range(k):
                dec -= (t * c[i] + grad[i]) * dy[i]
            if not math.isfinite(dec):
                return -1
            if dec <= 1e-9:
                break  # centred (also when rounding made the direction useless: dec < 0)
            f0 = _barrier_value(r, c, y, t)
            step = 1.0
            while True:
                for i in range(k):
                    trial[i] = y[i] + step * dy[i]
                if _barrier_value(r, c, trial, t) <= f0 - 0.25 * step * dec:
                    break
                step *= 0.5
                if step < 1e-14:
                    break
            if step < 1e-14:
                break  # rounding floor of the barrier's value
            for i in range(k):
                y[i] = trial[i]
        if stalled or nu / t <= _gap_target(c, y):
            break
        t *= 20.0
    if not nu / t <= 1e3 * _gap_target(c, y):
        return -1
    matvec(r, y, q)
    threshold = 1.0 / math.sqrt(t)
    for i in range(k):
        h[i] = math.log(y[i]) + math.log(q[i])
        active[i] = h[i] < threshold
        lam[i] = 1.0 / (t * h[i]) if active[i] else 0.0
    return total


@njit(cache=True)
def linearised_step(
    r: np.ndarray, c: np.ndarray, y: np.ndarray, lam: np.ndarray, active: np.ndarray
) -> tuple[int, int]:
    """Exact solution of (**) in the scaled variables (r: (K, K) unit-diagonal correlation, c: (K,) scaled cost),
    warm-started from (y, λ, active), all in place.  Returns ``(outcome, Newton iterations)``: ``WARM`` (the
    active-set Newton from the warm start certified the KKT conditions), ``GLOBAL`` (the barrier method found the
    active set, Newton certified it), ``BARRIER`` (the barrier's point, within its gap bound) or ``FAILED`` (y, λ
    and active restored to their input).  On success every constraint holds: ``y_i (Ry)_i ≥ 1`` to rounding."""
    k = c.shape[0]
    y0 = y.copy()
    lam0 = lam.copy()
    active0 = active.copy()
    q = np.empty(k)
    matvec(r, y, q)
    for i in range(k):
        # constraints on their boundary join the guess (λ = 0 there: a degenerate vertex of the last step)
        if not active[i] and y[i] > 0.0 and q[i] > 0.0 and abs(math.log(y[i] * q[i])) <= 1e-10:
            active[i] = True
    outcome = WARM
    it = _active_set(r, c, y, lam, active)
    if it < 0:
        y[:] = y0
        it = _barrier(r, c, y, lam, active)
        if it < 0:
            y[:] = y0
            lam[:] = lam0
            active[:] = active0
            return FAILED, 0
        outcome = GLOBAL
        yb = y.copy()
        lamb = lam.copy()
        activeb = active.copy()
        polish = _active_set(r, c, y, lam, active)
        if polish >= 0:
            it += polish
        else:
            # KKT not reached to rounding (R near-singular): keep the strictly feasible barrier point, whose
            # objective is within the barrier's gap bound of the optimum
            outcome = BARRIER
            y[:] = yb
            lam[:] = lamb
            active[:] = activeb
    # feasibility to rounding: lift y along the ray (h_i grows by 2 log f) if some constraint is a hair below 0
    matvec(r, y, q)
    low = math.inf
    for i in range(k):
        low = min(low, y[i] * q[i])
    if low < 1.0:
        f = 1.0 / math.sqrt(low)
        for i in range(k):
            y[i] *= f
    return outcome, it


@njit(cache=True)
def eqn13(gram: np.ndarray, mu: float, omega: np.ndarray) -> float:
    """IMGrad paper Eqn 13 at ω (K,): ``(1−μ) 1ᵀMω + μ φ(ω)``, +inf outside the domain of the logs."""
    k = gram.shape[0]
    linear = 0.0
    logs = 0.0
    for i in range(k):
        acc = 0.0
        for j in range(k):
            acc += gram[i, j] * omega[j]
        if not (acc > 0.0 and omega[i] > 0.0):
            return math.inf
        linear += acc
        logs += math.log(omega[i]) + math.log(acc)
    return (1.0 - mu) * linear + mu * logs


@njit(cache=True)
def ccp(
    gram: np.ndarray, mu: float, start: np.ndarray, lam: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, int, int, int, int, int]:
    """IMGrad-Nash's concave-convex iteration (see ``imgrad_nash``) with every step (**) solved exactly.

    gram: (K, K) trace-normalised; start: (K,) feasible point; lam: (K,) warm multipliers (active set ``λ > 0``),
    updated in place.  Stops when ω moves by ≤ tol (relative), when Eqn 13 decreases by less than
    ``1e-3·tol·(|f| + 1)`` (keeping the better point) or after max_iter steps.  Returns ``(ω, steps, outcome,
    Newton iterations, steps that needed the barrier, steps that ended on the barrier's point)``; outcome
    ``FAILED`` when a step failed (ω is then ``start``), else ``WARM``.
    """
    k = gram.shape[0]
    norms = np.empty(k)
    for i in range(k):
        if not gram[i, i] > 0.0:
            return start.copy(), 0, FAILED, 0, 0, 0  # a zero gradient: (Mω)_i = 0, nothing is feasible
        norms[i] = math.sqrt(gram[i, i])
    r = np.empty((k, k))
    push = np.empty(k)
    for i in range(k):
        acc = 0.0
        for j in range(k):
            r[i, j] = gram[i, j] / (norms[i] * norms[j])
            acc += gram[i, j]
        r[i, i] = 1.0
        push[i] = (1.0 - mu) * acc
    active = np.empty(k, dtype=np.bool_)
    for i in range(k):
        active[i] = lam[i] > 0.0
    omega = start.copy()
    new = np.empty(k)
    y = np.empty(k)
    c = np.empty(k)
    inv_mo = np.empty(k)
    mo = np.empty(k)
    for i in range(k):
        y[i] = omega[i] * norms[i]
    value = eqn13(gram, mu, omega)
    newton = 0
    global_steps = 0
    approx_steps = 0
    for it in range(1, max_iter + 1):
        matvec(gram, omega, mo)
        for i in range(k):
            if not (omega[i] > 0.0 and mo[i] > 0.0):  # outside the logs' domain: no ∇φ
                return start.copy(), it, FAILED, newton, global_steps, approx_steps
            inv_mo[i] = 1.0 / mo[i]
        for i in range(k):
            acc = 0.0
            for j in range(k):
                acc += gram[i, j] * inv_mo[j]
            c[i] = (push[i] + mu * (1.0 / omega[i] + acc)) / norms[i]  # ∇φ = 1/ω + M (1/(Mω))
            if not math.isfinite(c[i]):
                return start.copy(), it, FAILED, newton, global_steps, approx_steps
        outcome, steps = linearised_step(r, c, y, lam, active)
        if outcome == FAILED:
            return start.copy(), it, FAILED, newton, global_steps, approx_steps
        newton += steps
        global_steps += 1 if outcome != WARM else 0
        approx_steps += 1 if outcome == BARRIER else 0
        diff = 0.0
        base = 0.0
        for i in range(k):
            new[i] = y[i] / norms[i]
            diff += (new[i] - omega[i]) ** 2
            base += omega[i] ** 2
        moved = math.sqrt(diff / base)
        new_value = eqn13(gram, mu, new)
        # each step can only lower Eqn 13 (φ's linearisation majorises it): a rise or a stall is rounding
        if math.isfinite(value) and new_value >= value - tol * 1e-3 * (abs(value) + 1.0):
            if new_value < value:
                omega[:] = new
            return omega, it, WARM, newton, global_steps, approx_steps
        omega[:] = new
        value = new_value
        if moved <= tol:
            return omega, it, WARM, newton, global_steps, approx_steps
    return omega, max_iter, WARM, newton, global_steps, approx_steps
