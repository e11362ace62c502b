"""Nash-MTL, IMGrad-Nash, FAMO and Aligned-MTL: the maths each method promises (shared properties live in
tests/test_combiners.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_mtl.combiners import make
from rl_mtl.combiners.nashmtl import solve_bargaining


def _gram(k: int, seed: int, imbalance: float = 0.0, dim: int | None = None) -> np.ndarray:
    """(K, K) Gram of Gaussian gradients whose norms spread over exp(±imbalance)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(k, dim or 2 * k + 3)) * np.exp(rng.uniform(-imbalance, imbalance, size=(k, 1)))
    return g @ g.T


def _ones(k: int) -> torch.Tensor:
    return torch.ones(k, dtype=torch.float64)


@pytest.mark.parametrize("k", [2, 3, 5, 10, 20, 50])
@pytest.mark.parametrize("imbalance", [0.0, 3.0])
def test_nash_newton_solves_bargaining(k: int, imbalance: float) -> None:
    m = _gram(k, seed=k, imbalance=imbalance) * 1e-3  # raw scale: α must map back as α_norm / sqrt(scale)
    w = make("nashmtl", max_norm=0.0)(torch.tensor(m), _ones(k)).numpy()
    assert np.all(w > 0)
    np.testing.assert_allclose(w * (m @ w), 1.0, rtol=1e-8, atol=0)


def test_nash_newton_beats_reference_procedure() -> None:
    for seed, imbalance in [(0, 0.0), (1, 2.0), (2, 3.0)]:
        m = torch.tensor(_gram(4, seed, imbalance))
        newton = make("nashmtl", max_norm=0.0)
        reference = make("nashmtl", solver="reference", max_norm=0.0)
        newton(m, _ones(4))
        reference(m, _ones(4))
        assert newton.stats()["kkt_residual"] <= reference.stats()["kkt_residual"] + 1e-15
        assert newton.stats()["kkt_residual"] < 1e-10


def test_nash_reference_stops_short_on_imbalanced_gram() -> None:
    reference = make("nashmtl", solver="reference", max_norm=0.0)
    reference(torch.tensor(_gram(10, 3, imbalance=3.0)), _ones(10))
    assert reference.stats()["kkt_residual"] > 1e-3


def test_nash_warm_start_reduces_iterations() -> None:
    g = _gram(10, 5, imbalance=2.0)
    g = g / (np.trace(g) / 10)
    _, cold_iters, ok = solve_bargaining(g)
    solution, _, _ = solve_bargaining(g)
    perturbed = g * (1 + 1e-3 * np.random.default_rng(0).normal(size=g.shape))
    perturbed = 0.5 * (perturbed + perturbed.T)
    _, warm_iters, ok_warm = solve_bargaining(perturbed, solution)
    _, cold_perturbed, _ = solve_bargaining(perturbed)
    assert ok and ok_warm
    assert warm_iters < cold_perturbed and warm_iters < cold_iters


def test_nash_max_norm_clips_direction() -> None:
    m = _gram(5, 7)
    unclipped = make("nashmtl", max_norm=0.0)(torch.tensor(m), _ones(5)).numpy()
    assert np.sqrt(unclipped @ m @ unclipped) == pytest.approx(np.sqrt(5), rel=1e-9)  # ‖d‖² = Σ α_i(Mα)_i = K
    clip = make("nashmtl", max_norm=1.0)
    clipped = clip(torch.tensor(m), _ones(5)).numpy()
    assert np.sqrt(clipped @ m @ clipped) == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_allclose(clipped / unclipped, 1 / np.sqrt(5), rtol=1e-9)
    assert clip.stats()["clipped"] == 1.0


def test_nash_update_weights_every_reuses_weights() -> None:
    nash = make("nashmtl", max_norm=0.0, update_weights_every=3)
    first = nash(torch.tensor(_gram(3, 1)), _ones(3))
    second = nash(torch.tensor(_gram(3, 2)), _ones(3))
    torch.testing.assert_close(first, second)


def test_nash_singular_gram_is_handled() -> None:
    g = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # g1 = −g2: Pareto stationary, Mα = 1/α has no solution
    nash = make("nashmtl", max_norm=0.0)
    w = nash(torch.tensor(g @ g.T), _ones(3)).numpy()
    assert np.all(np.isfinite(w))
    duplicate = np.array([[1.0, 2.0], [1.0, 2.0]])
    w2 = make("nashmtl", max_norm=0.0)(torch.tensor(duplicate @ duplicate.T), _ones(2)).numpy()
    np.testing.assert_allclose(w2, 1 / np.sqrt(10), rtol=1e-6)  # α(5α + 5α) = 1


def test_nash_state_round_trip_and_hparam_validation() -> None:
    a, b = make("nashmtl"), make("nashmtl")
    a(torch.tensor(_gram(4, 1)), _ones(4))
    b.load_state_dict(a.state_dict())
    m = torch.tensor(_gram(4, 2))
    torch.testing.assert_close(a(m, _ones(4)), b(m, _ones(4)))
    for bad in [{"solver": "ecos"}, {"max_norm": -1.0}, {"update_weights_every": 0}]:
        with pytest.raises(ValueError):
            make("nashmtl", **bad)


def test_imgrad_nash_equals_nash_when_balanced() -> None:
    m = torch.tensor(_gram(4, 3))
    imn = make("imgrad_nash", max_norm=0.0)
    torch.testing.assert_close(imn(m, _ones(4)), make("nashmtl", max_norm=0.0)(m, _ones(4)), rtol=1e-9, atol=0)
    assert imn.stats()["ccp_iters"] == 0.0


def test_imgrad_nash_stationary_point_under_imbalance() -> None:
    # an imbalanced, conflicting pair (from the toy problem under weights 0.9/0.1): the shortcut does not apply
    m = np.array([[46.55759235, -1.56478316], [-1.56478316, 0.07615847]])
    imn = make("imgrad_nash", max_norm=0.0)
    w = imn(torch.tensor(m), _ones(2)).numpy()
    stats = imn.stats()
    assert stats["min_multiplier"] < 0 and stats["ccp_iters"] >= 1
    h = w * (m @ w)
    assert h.min() == pytest.approx(1.0, abs=1e-4)  # the dominant task's constraint stays active
    assert h.max() > 1.5  # the weak, conflicting task's constraint is released: it gets more weight than Nash
    nash = make("nashmtl", max_norm=0.0)(torch.tensor(m), _ones(2)).numpy()
    assert w[1] / w[0] > nash[1] / nash[0]


def test_famo_weights_formula() -> None:
    famo = make("famo")
    losses = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    w = famo(None, losses).numpy()
    expected = (1 / (losses.numpy() + 1e-8)) / np.sum(1 / (losses.numpy() + 1e-8))  # z uniform at the start
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    assert w.sum() == pytest.approx(1.0)
    w_neg = famo(None, torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)).numpy()
    assert np.all(np.isfinite(w_neg)) and w_neg[0] > 0.99  # a negative loss is clamped to 0: max weight


def test_famo_after_step_favours_the_slowest_task() -> None:
    famo = make("famo", weight_decay=0.0)
    before = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    famo(None, before)
    famo.after_step(torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))  # task 2 decreased least
    logits = famo.state_dict()["logits"]
    assert np.argmax(logits) == 2 and np.argmin(logits) == 0
    np.testing.assert_allclose(np.abs(logits), 0.025, rtol=1e-6)  # first Adam step has size lr per coordinate


def test_famo_state_round_trip() -> None:
    a, b = make("famo"), make("famo")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a(None, torch.tensor(rng.uniform(0.1, 2, 3)))
        a.after_step(torch.tensor(rng.uniform(0.1, 2, 3)))
    b.load_state_dict(a.state_dict())
    losses = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(a(None, losses), b(None, losses))
    a.after_step(losses * 0.5)
    b.after_step(losses * 0.5)
    np.testing.assert_array_equal(a.state_dict()["logits"], b.state_dict()["logits"])
    for bad in [{"lr": 0.0}, {"weight_decay": -1.0}, {"eps": 0.0}]:
        with pytest.raises(ValueError):
            make("famo", **bad)


@pytest.mark.parametrize("k", [2, 4, 10])
def test_aligned_mtl_equalises_task_gradients(k: int) -> None:
    rng = np.random.default_rng(k)
    g = rng.normal(size=(k, 3 * k)) * np.exp(rng.uniform(-2, 2, size=(k, 1)))
    m = g @ g.T
    w = make("aligned_mtl")(torch.tensor(m), _ones(k)).numpy()
    eigval, eigvec = np.linalg.eigh(m)
    balance = np.sqrt(eigval.min()) * (eigvec / np.sqrt(eigval)) @ eigvec.T
    aligned = balance @ m @ balance  # Gram of the aligned gradients B G
    np.testing.assert_allclose(aligned, eigval.min() * np.eye(k), atol=1e-8 * eigval.max())
    np.testing.assert_allclose(w, balance.sum(axis=1) / k, rtol=1e-8)
    np.testing.assert_allclose(make("aligned_mtl")(torch.tensor(m * 1e4), _ones(k)).numpy(), w, rtol=1e-8)


def test_aligned_mtl_singular_gram() -> None:
    g = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])  # rank 2
    m = g @ g.T
    aligned = make("aligned_mtl")
    w = aligned(torch.tensor(m), _ones(3)).numpy()
    assert np.all(np.isfinite(w)) and aligned.stats()["rank"] == 2.0
    eigval, eigvec = np.linalg.eigh(m)
    keep = eigval > eigval.max() * 1e-6
    balance = np.sqrt(eigval[keep].min()) * (eigvec[:, keep] / np.sqrt(eigval[keep])) @ eigvec[:, keep].T
    projector = eigvec[:, keep] @ eigvec[:, keep].T
    np.testing.assert_allclose(balance @ m @ balance, eigval[keep].min() * projector, atol=1e-10)
