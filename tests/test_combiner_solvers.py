"""Exact simplex solvers vs the cvxpy reference on random and adversarial Grams (architecture §3, §9)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from rl_mtl.combiners import solvers

PROBLEMS = ("minnorm", "cagrad", "release", "eqn11", "eqn9")
KINDS = ("gaussian", "lowrank", "rank1", "identity", "ratio1e8", "duplicates", "imbalanced")
SIZES = (2, 3, 5, 10, 20, 50)
SEED_OFFSET = 0


def make_gram(kind: str, k: int, rng: np.random.Generator) -> np.ndarray:
    """Trace-normalised (K, K) Gram of a named family."""
    if kind == "gaussian":
        g = rng.standard_normal((k, 64)) + 0.5 * rng.standard_normal(64)
    elif kind == "lowrank":
        g = rng.standard_normal((k, 3)) @ rng.standard_normal((3, 64))
    elif kind == "rank1":
        g = rng.standard_normal((k, 1)) @ rng.standard_normal((1, 64))
    elif kind == "identity":
        g = np.eye(k)
    elif kind == "ratio1e8":
        g = rng.standard_normal((k, 64))
        g[rng.integers(k)] *= 1e8
    elif kind == "duplicates":
        g = rng.standard_normal((1, 64)) + 1e-5 * rng.standard_normal((k, 64))
        g[0] = rng.standard_normal(64)
    else:
        g = rng.standard_normal((k, 64)) * np.exp(rng.uniform(-8.0, 0.0, k))[:, None] + 0.2 * rng.standard_normal(64)
    gram = g @ g.T
    return gram / (np.trace(gram) / k)


def natural_scale(gram: np.ndarray, lin: float, root: float, quad: float) -> float:
    """Size of the objective's terms: the absolute floor for comparing near-zero objectives."""
    k = gram.shape[0]
    return lin * float(np.abs(gram.sum(axis=1)).max()) / k + root * math.sqrt(gram.diagonal().max()) + quad * float(
        gram.diagonal().max()
    )


CASES = [(kind, k, problem) for kind in KINDS for k in SIZES for problem in PROBLEMS]


@pytest.mark.parametrize(("kind", "k", "problem"), CASES)
def test_exact_matches_cvxpy(kind: str, k: int, problem: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{k}/{problem}".encode()) + SEED_OFFSET)
    gram = make_gram(kind, k, rng)
    c = float(rng.choice([0.1, 0.5, 0.9, 2.0]))
    mu = float(rng.uniform())
    lin, root, quad = solvers.coefficients(problem, gram, c, mu)
    exact = solvers.simplex_solve(gram, lin, root, quad)
    ref = solvers.solve_cvxpy(gram, lin, root, quad)
    assert exact.weights.shape == (k,)
    assert np.all(exact.weights >= 0.0) and abs(exact.weights.sum() - 1.0) < 1e-12
    f_exact = solvers.objective(gram, exact.weights, lin, root, quad)
    f_ref = solvers.objective(gram, ref.weights, lin, root, quad)
    # ‖g_w‖ = sqrt(wᵀMw) is only accurate to ~sqrt(eps)·max‖g_k‖ absolute, so near-zero optima get a floor
    floor = 1e-2 * natural_scale(gram, lin, root, quad)
    # never worse than cvxpy beyond 1e-6 relative
    assert f_exact - f_ref <= 1e-6 * max(abs(f_ref), floor)
    # the duality gap certifies optimality on its own
    assert exact.gap <= 1e-8 * max(abs(f_exact), natural_scale(gram, lin, root, quad))


@pytest.mark.parametrize("seed", range(40))
def test_min_norm_closed_form_k2(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((2, 5)) * np.exp(rng.uniform(-3, 3, 2))[:, None]
    gram = g @ g.T
    w = solvers.min_norm(gram).weights
    # textbook: w_1 = clip((g_2 − g_1)ᵀg_2 / ‖g_1 − g_2‖², 0, 1)
    diff = g[0] - g[1]
    w1 = float(np.clip((g[1] - g[0]) @ g[1] / (diff @ diff), 0.0, 1.0))
    assert w == pytest.approx([w1, 1.0 - w1], abs=1e-12)
    general = solvers.simplex_solve(gram / (np.trace(gram) / 2), 0.0, 0.0, 1.0).weights
    assert general == pytest.approx(w, abs=1e-9)


def test_warm_start_support_gives_same_optimum() -> None:
    rng = np.random.default_rng(0)
    gram = make_gram("imbalanced", 10, rng)
    lin, root, quad = solvers.coefficients("cagrad", gram, 0.9)
    cold = solvers.simplex_solve(gram, lin, root, quad)
    warm = solvers.simplex_solve(gram, lin, root, quad, support=np.flatnonzero(cold.weights > 0))
    assert warm.weights == pytest.approx(cold.weights, abs=1e-10)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_warm_start_from_any_remembered_support_is_exact(problem: str) -> None:
    """A WarmStart carried along a drifting sequence of Grams, across a change of K and from stale, empty or
    out-of-range supports, always returns the cold solve's optimum (a warm start buys speed, never a different
    answer)."""
    rng = np.random.default_rng(11)
    warm = solvers.WarmStart()
    g = rng.standard_normal((10, 40)) * np.exp(rng.uniform(-4.0, 0.0, 10))[:, None]
    stale = [None, np.array([], dtype=np.int64), np.array([3, 99]), np.array([-1, 2]), np.arange(10)]
    for step in range(30):
        g = g + 0.1 * rng.standard_normal(g.shape) * np.exp(rng.uniform(-4.0, 0.0, 10))[:, None]
        rows = g if step < 20 else g[:7]  # K changes from 10 to 7: the remembered support may not fit
        gram = rows @ rows.T
        gram /= np.trace(gram) / gram.shape[0]
        lin, root, quad = solvers.coefficients(problem, gram, 0.9, 0.6)
        if step % 6 == 5:
            warm.load_state_dict(None if stale[step // 6] is None else stale[step // 6].tolist())
        got = warm.solve(gram, lin, root, quad)
        cold = solvers.simplex_solve(gram, lin, root, quad)
        scale = natural_scale(gram, lin, root, quad)
        f_got = solvers.objective(gram, got.weights, lin, root, quad)
        f_cold = solvers.objective(gram, cold.weights, lin, root, quad)
        assert got.weights.min() >= 0.0 and got.weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert f_got <= f_cold + 1e-12 * max(scale, 1.0)
        assert got.gap <= 1e-10
        assert np.array_equal(warm.support, np.flatnonzero(got.weights > 0.0))


def test_pareto_stationary_kink() -> None:
    # g_1 = −g_2 and a third gradient: 0 is in the convex hull, ‖g_w‖ = 0 is reachable
    g = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    gram = g @ g.T
    gram = gram / (np.trace(gram) / 3)
    for problem in PROBLEMS:
        lin, root, quad = solvers.coefficients(problem, gram, 0.5, 0.5)
        exact = solvers.simplex_solve(gram, lin, root, quad)
        ref = solvers.solve_cvxpy(gram, lin, root, quad)
        f_exact = solvers.objective(gram, exact.weights, lin, root, quad)
        f_ref = solvers.objective(gram, ref.weights, lin, root, quad)
        assert f_exact - f_ref <= 1e-6 * max(abs(f_ref), 1e-3)


def test_cagrad_sgd_reference_is_close_but_approximate() -> None:
    rng = np.random.default_rng(1)
    gram = make_gram("gaussian", 10, rng)
    w, multiplier = solvers.cagrad_sgd(gram * 7.0, 0.9)
    assert w.shape == (10,) and np.isfinite(multiplier) and abs(w.sum() - 1.0) < 1e-12
    lin, root, quad = solvers.coefficients("cagrad", gram, 0.9)
    f_sgd = solvers.objective(gram, w, lin, root, quad)
    f_exact = solvers.objective(gram, solvers.simplex_solve(gram, lin, root, quad).weights, lin, root, quad)
    assert f_exact <= f_sgd + 1e-12
