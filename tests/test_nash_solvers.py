"""Compiled Nash-bargaining solvers (``bargaining``, ``concave_convex``) against independent references: cvxpy on
each concave-convex step of IMGrad-Nash and on the whole iteration, the KKT conditions checked with scipy's NNLS,
closed forms, and the combiner's failure and checkpoint behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from rl_mtl.combiners import concave_convex, make
from rl_mtl.combiners.imgrad import imbalance_mu
from rl_mtl.combiners.imgrad_nash import feasible_start
from rl_mtl.combiners.nashmtl import solve_bargaining

KINDS = ("random", "drift", "conflict", "nearrank")
# at tolerances 1e-12 Clarabel often ends 'optimal_inaccurate' (the tests bound how inaccurate): not news
pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")


def _gram(kind: str, k: int, rng: np.random.Generator) -> np.ndarray:
    """Trace-normalised (K, K) Gram of a named family; task-gradient norms spread over 1e-3..1 (ratio 1e3)."""
    dim = 3 * k + 4
    norms = np.exp(rng.uniform(np.log(1e-3), 0.0, k))[:, None]
    if kind == "random":
        g = rng.standard_normal((k, dim)) * norms + 0.3 * rng.standard_normal(dim) * norms.max()
    elif kind == "drift":  # the last of 30 gradients drifting by 5 % per step, as in training
        g = rng.standard_normal((k, dim)) * norms
        for _ in range(30):
            g = g + 0.05 * rng.standard_normal((k, dim)) * norms
    elif kind == "conflict":  # every task pushed against task 0
        g = rng.standard_normal((k, dim)) * norms
        g[1:] -= rng.uniform(0, 1.5, (k - 1, 1)) * g[0] / np.linalg.norm(g[0]) * np.linalg.norm(g[1:], axis=1)[:, None]
    else:  # near rank-deficient: rank 3 plus 1 % noise (λ_min/λ_max down to ~1e-9, above the Newton ridge)
        g = (rng.standard_normal((k, 3)) @ rng.standard_normal((3, dim)) + 1e-2 * rng.standard_normal((k, dim))) * norms
    gram = g @ g.T
    return gram / (np.trace(gram) / k)


def _linearised_cost(gram: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """``(c, ω_t, μ)`` of one concave-convex step: φ linearised at a feasible point near the bargaining point."""
    mu = imbalance_mu(gram)
    alpha, _, _ = solve_bargaining(gram)
    point = feasible_start(gram, alpha * np.exp(rng.normal(0.0, 0.3, len(alpha))), alpha)
    grad_phi = 1.0 / point + gram @ (1.0 / (gram @ point))  # ∇φ, IMGrad paper Eqn 12
    return (1.0 - mu) * gram.sum(axis=1) + mu * grad_phi, point, mu


def _exact_step(gram: np.ndarray, c: np.ndarray, start: np.ndarray, cold: bool = False) -> tuple[np.ndarray, int]:
    """The compiled step from ``start``, mapped back; warm: every constraint guessed active (λ = 1), cold: no guess
    and a start strictly inside (no constraint on its boundary), which leaves the active set to the barrier."""
    norms = np.sqrt(np.diag(gram))
    corr = gram / np.outer(norms, norms)
    y = start * norms * (1.5 if cold else 1.0)
    lam = np.zeros(len(c)) if cold else np.ones(len(c))
    active = lam > 0
    outcome, _ = concave_convex.linearised_step(corr, c / norms, y, lam, active)
    return y / norms, outcome


def _cvxpy_step(gram: np.ndarray, c: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The same programme written directly in cvxpy (Clarabel, tolerances 1e-12)."""
    import cvxpy as cp

    w = cp.Variable(len(c), nonneg=True)
    problem = cp.Problem(cp.Minimize(c @ w), [cp.log(w) + cp.log(gram @ w) >= 0])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return (None if w.value is None else np.asarray(w.value)), problem.status


def _kkt_residual(gram: np.ndarray, c: np.ndarray, w: np.ndarray) -> float:
    """Relative residual of ``c = Σ_A λ_i ∇h_i(w)``, λ ≥ 0 (NNLS), A = constraints active at w (KKT of (**))."""
    mw = gram @ w
    h = np.log(w) + np.log(mw)
    grads = np.diag(1.0 / w) + gram / mw[:, None]  # row i: ∇h_i = e_i/w_i + M_i/(Mw)_i
    active = np.flatnonzero(h <= 1e-9)
    _, residual = nnls(grads[active].T, c)
    return residual / float(np.abs(c).sum() + np.abs(grads[active].T).sum(axis=1).max())


def _assert_feasible(gram: np.ndarray, w: np.ndarray) -> None:
    """``w_i (Mw)_i ≥ 1`` up to the rounding of ``(Mw)_i``."""
    product = w * (gram @ w)
    floor = 1e-12 * w * (np.abs(gram) @ w)
    assert np.all(w > 0) and np.all(product >= 1.0 - floor)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_step_matches_cvxpy_and_satisfies_kkt(kind: str, k: int) -> None:
    rng = np.random.default_rng(1000 * k + KINDS.index(kind))
    gram = _gram(kind, k, rng)
    c, point, _ = _linearised_cost(gram, rng)
    exact, outcome = _exact_step(gram, c, point)
    ref, status = _cvxpy_step(gram, c)
    assert outcome in (concave_convex.WARM, concave_convex.GLOBAL)
    _assert_feasible(gram, exact)
    assert _kkt_residual(gram, c, exact) <= 1e-10
    size = float(np.abs(c * exact).sum())
    assert c @ exact <= c @ ref + 1e-10 * size  # never worse than the conic solver
    if status == "optimal" and kind != "nearrank":
        assert np.max(np.abs(exact - ref)) <= 1e-6 * np.max(np.abs(ref))
    else:  # near-singular Grams: ω is ill-conditioned and cvxpy is accurate to ~1e-6 there; compare the objective
        assert abs(c @ exact - c @ ref) <= 1e-5 * size


@pytest.mark.parametrize("kind", ["drift", "conflict"])
def test_cold_start_takes_the_barrier_path_to_the_same_optimum(kind: str) -> None:
    rng = np.random.default_rng(7)
    gram = _gram(kind, 10, rng)
    c, point, _ = _linearised_cost(gram, rng)
    warm, warm_outcome = _exact_step(gram, c, point)
    cold, cold_outcome = _exact_step(gram, c, point, cold=True)
    assert cold_outcome == concave_convex.GLOBAL
    np.testing.assert_allclose(cold, warm, rtol=1e-9)


def test_step_closed_forms() -> None:
    # orthogonal gradients (R = I): ω_i = 1/‖g_i‖, every constraint active, λ_i = c_i/(2‖g_i‖)  (c = λ/ω + Mλω)
    d = np.array([4.0, 1.0, 0.25])
    c = np.array([1.0, 2.0, 0.5])
    w, outcome = _exact_step(np.diag(d), c, np.ones(3))
    assert outcome == concave_convex.WARM
    np.testing.assert_allclose(w, 1.0 / np.sqrt(d), rtol=1e-13)
    # R = [[1, ρ], [ρ, 1]], c = (1, 0.1), ρ = 1/2: only constraint 1 active; c = λ(2y_1 + ρy_2, ρy_1) gives
    # y_2 = κ y_1 with κ = (c_1ρ − 2c_2)/(c_2ρ) = 6 and y_1²(1 + ρκ) = 1: y = (1/2, 3), λ_1 = c_2/(ρy_1) = 0.4
    # (from the guess "both active", which Newton solves with λ_2 < 0: the warm path must release constraint 2)
    r = np.array([[1.0, 0.5], [0.5, 1.0]])
    y, lam, active = np.full(2, 1 / math.sqrt(1.5)), np.ones(2), np.ones(2, dtype=bool)
    outcome, _ = concave_convex.linearised_step(r, np.array([1.0, 0.1]), y, lam, active)
    assert outcome == concave_convex.WARM
    np.testing.assert_allclose(y, [0.5, 3.0], rtol=1e-13)
    np.testing.assert_allclose(lam, [0.4, 0.0], atol=1e-13)
    assert active.tolist() == [True, False]


def _direction_gap(gram: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """‖d_a − d_b‖ / ‖d_b‖ for d = Gᵀw, from the Gram."""
    e = a - b
    return math.sqrt(max(float(e @ gram @ e), 0.0) / float(b @ gram @ b))


@pytest.mark.parametrize(("kind", "k", "seed"), [("drift", 10, 0), ("conflict", 10, 1), ("conflict", 3, 2),
                                                 ("drift", 3, 3), ("nearrank", 3, 4)])
def test_combiner_exact_matches_cvxpy_reference(kind: str, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(20):  # a Gram on which the shortcut does not apply (the iteration runs)
        gram = _gram(kind, k, rng) * 1e-3
        exact = make("imgrad_nash", max_norm=0.0)
        w = exact(torch.tensor(gram), torch.ones(k, dtype=torch.float64)).numpy()
        if exact.stats()["ccp_iters"] > 0:
            break
    else:
        pytest.fail("no Gram needing the iteration")
    reference = make("imgrad_nash", max_norm=0.0, solver="cvxpy")
    w_ref = reference(torch.tensor(gram), torch.ones(k, dtype=torch.float64)).numpy()
    assert exact.failures == 0 and reference.failures == 0
    assert _direction_gap(gram, w, w_ref) <= 3e-5  # both stop at moves ≤ tol = 1e-6; cvxpy's steps err ~1e-7
    scale = np.trace(gram) / k
    mu = exact.stats()["cos_theta_used"]
    f_exact, f_ref = (concave_convex.eqn13(gram / scale, mu, x * math.sqrt(scale)) for x in (w, w_ref))
    assert f_exact <= f_ref + 1e-9 * abs(f_ref)  # exact steps descend Eqn 13 at least as far


@pytest.mark.parametrize("kind", ["drift", "conflict"])
def test_combiner_returns_a_kkt_point_of_eqn13(kind: str) -> None:
    """At a fixed point of the iteration, Eqn 13's own KKT conditions hold: c(ω) = Σ_A λ_i ∇h_i(ω), λ ≥ 0."""
    rng = np.random.default_rng(11)
    for _ in range(20):
        gram = _gram(kind, 10, rng)
        comb = make("imgrad_nash", max_norm=0.0, tol=1e-10, max_iter=200)
        w = comb(torch.tensor(gram), torch.ones(10, dtype=torch.float64)).numpy()
        if comb.stats()["ccp_iters"] > 0:
            break
    mu = comb.stats()["cos_theta_used"]
    c = (1.0 - mu) * gram.sum(axis=1) + mu * (1.0 / w + gram @ (1.0 / (gram @ w)))
    assert comb.failures == 0
    _assert_feasible(gram, w)
    assert _kkt_residual(gram, c, w) <= 1e-8


def test_drifting_stream_stays_feasible_without_failures() -> None:
    """Every output on 60 drifting Grams satisfies the constraints (the warm start from the last call is lifted
    onto them: unlifted, the iteration returned the infeasible previous point in ~half the calls)."""
    rng = np.random.default_rng(5)
    k, dim = 10, 200
    norms = np.exp(rng.uniform(np.log(1e-3), 0.0, k))[:, None]
    g = rng.standard_normal((k, dim)) * norms
    comb = make("imgrad_nash", max_norm=0.0)
    iterated, steps, global_steps = 0, 0, 0
    for _ in range(60):
        g = g + 0.05 * rng.standard_normal((k, dim)) * norms
        gram = g @ g.T
        w = comb(torch.tensor(gram), torch.ones(k, dtype=torch.float64)).numpy()
        scale = np.trace(gram) / k
        _assert_feasible(gram / scale, w * math.sqrt(scale))
        stats = comb.stats()
        iterated += stats["ccp_iters"] > 0
        steps += int(stats["ccp_iters"])
        global_steps += int(stats.get("ccp_global_steps", 0))
    assert comb.failures == 0 and comb.fallbacks == 0
    assert iterated >= 30
    # the warm start (last step's multipliers, drop/add rounds, blocking) certifies nearly every step by itself
    assert global_steps <= 0.05 * steps


def test_failed_step_is_counted_and_keeps_the_last_good_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    gram = torch.tensor(_gram("conflict", 5, np.random.default_rng(2)))
    comb = make("imgrad_nash", max_norm=0.0)
    first = comb(gram, torch.ones(5, dtype=torch.float64))
    assert comb.stats()["ccp_iters"] > 0 and comb.failures == 0

    def failing(gram_, mu, start, lam, max_iter, tol):
        return start.copy(), 1, concave_convex.FAILED, 0, 0, 0

    monkeypatch.setattr(concave_convex, "ccp", failing)
    second = comb(gram * 1.01, torch.ones(5, dtype=torch.float64))
    assert comb.failures == 1 and comb.stats()["failures_total"] == 1.0
    assert comb.fallbacks == 0  # not the mean: the last good weights, mapped to the new scale
    torch.testing.assert_close(second, first / math.sqrt(1.01), rtol=1e-12, atol=0)
    assert comb.state_dict()["ccp_lam"] is None and comb.state_dict()["ccp_prev"] is None


def test_exactly_singular_gram_fails_cleanly() -> None:
    """K = 6 gradients in 3 dimensions: Mω = 1/ω has no solution, the programme none either: counted, finite."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal((6, 3)) * np.exp(rng.uniform(np.log(1e-3), 0.0, 6))[:, None]
    comb = make("imgrad_nash")
    w = comb(torch.tensor(g @ g.T), torch.ones(6, dtype=torch.float64))
    assert torch.isfinite(w).all() and comb.fallbacks == 0


def test_state_round_trip_carries_the_warm_start() -> None:
    """A restored combiner continues bit for bit, stats included: the last step's multipliers (the exact solver's
    warm start) travel in the state."""
    rng = np.random.default_rng(8)
    k, dim = 10, 60
    norms = np.exp(rng.uniform(np.log(1e-3), 0.0, k))[:, None]
    g = rng.standard_normal((k, dim)) * norms
    grams = []
    for _ in range(8):
        g = g + 0.05 * rng.standard_normal((k, dim)) * norms
        grams.append(torch.tensor(g @ g.T))
    ones = torch.ones(k, dtype=torch.float64)
    a = make("imgrad_nash")
    for gram in grams[:4]:
        a(gram, ones)
    b, fresh = make("imgrad_nash"), make("imgrad_nash")
    b.load_state_dict(a.state_dict())
    state = a.state_dict()
    state["ccp_lam"] = None
    fresh.load_state_dict(state)
    differs = False
    for gram in grams[4:]:
        w_a, w_b, w_fresh = a(gram, ones), b(gram, ones), fresh(gram, ones)
        assert torch.equal(w_a, w_b) and a.stats() == b.stats()
        differs |= not torch.equal(w_a, w_fresh)
    assert differs  # without the multipliers the last bits differ (else this test proves nothing)


def test_checkpoint_from_before_the_exact_solver_loads() -> None:
    rng = np.random.default_rng(4)
    grams = [torch.tensor(_gram("drift", 10, rng)) for _ in range(3)]
    ones = torch.ones(10, dtype=torch.float64)
    a = make("imgrad_nash")
    a(grams[0], ones)
    old = a.state_dict()
    del old["ccp_lam"]  # the key the exact solver added
    b = make("imgrad_nash")
    b.load_state_dict(old)
    torch.testing.assert_close(b(grams[1], ones), a(grams[1], ones), rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match="solver"):
        make("imgrad_nash", solver="ecos")


def test_bargaining_ridge_follows_the_eigenvalue_rule() -> None:
    """The compiled Newton ridges M (+1e-10 I) exactly when λ_min(M) < 1e-10·tr(M)/K (tested by a Cholesky)."""
    # g_1 = −g_2: λ_min = 0, no solution without the ridge; with it α = t(1, 1), t²·1e-10 = 1 (to the 1e-6 that
    # the rounding of 1 + 1e-10 leaves)
    alpha, _, ok = solve_bargaining(np.array([[1.0, -1.0], [-1.0, 1.0]]))
    assert ok
    np.testing.assert_allclose(alpha, 1e5, rtol=1e-5)
    # λ_min = 1e-8 (above the threshold): no ridge, α_i (Mα)_i = 1 to rounding (a ridge would leave 1e-10·α_i²)
    q, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((4, 4)))
    m = q @ np.diag([2.0, 1.0, 1.0 - 1e-8, 1e-8]) @ q.T
    alpha, _, ok = solve_bargaining(m)
    assert ok and np.min(alpha) > 0.1
    np.testing.assert_allclose(alpha * (m @ alpha), 1.0, rtol=1e-12)
