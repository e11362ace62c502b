"""Property tests over the whole combiner registry, plus method identities (architecture §3)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from rl_mtl import combiners
from rl_mtl.combiners import solvers

NAMES = combiners.names()


def random_grads(k: int, seed: int, dim: int = 40, spread: float = 2.0) -> torch.Tensor:
    """(K, dim) gradients with log-uniform norms and a shared component (some conflicts, some agreement)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((k, dim)) * np.exp(rng.uniform(-spread, 0.0, k))[:, None] + 0.3 * rng.standard_normal(dim)
    return torch.from_numpy(g)


def gram_of(g: torch.Tensor) -> torch.Tensor:
    return g @ g.T


def losses_for(k: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed + 100).uniform(0.5, 2.0, k))


def direction(gram: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """weights / ‖d‖: compares directions d = Gᵀw without the gradients themselves."""
    w = weights.to(torch.float64)
    norm = math.sqrt(max(float(w @ gram @ w), 0.0))
    return w / norm if norm > 0 else w


def is_random(name: str) -> bool:
    """Whether the method's output depends on its seed (PCGrad's projection order)."""
    g = gram_of(random_grads(6, 3))
    losses = losses_for(6)
    return not torch.allclose(combiners.make(name, seed=0)(g, losses), combiners.make(name, seed=1)(g, losses))


# ------------------------------------------------------------------------------------------ registry properties
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [2, 3, 10])
def test_shape_and_finite(name: str, k: int) -> None:
    comb = combiners.make(name)
    g = random_grads(k, k)
    w = comb(gram_of(g), losses_for(k))
    assert w.shape == (k,) and torch.isfinite(w).all()
    stats = comb.stats()
    assert stats and all(math.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("name", NAMES)
def test_loss_only_methods_accept_no_gram(name: str) -> None:
    comb = combiners.make(name)
    if comb.needs_gram:
        with pytest.raises(ValueError, match="needs the task Gram"):
            comb(None, losses_for(4))
    else:
        w = comb(None, losses_for(4))
        assert w.shape == (4,) and torch.isfinite(w).all()


@pytest.mark.parametrize("name", NAMES)
def test_permutation_equivariance(name: str) -> None:
    if not getattr(combiners.get_class(name), "symmetric", True):
        pytest.skip(f"{name} treats the tasks asymmetrically by design (PCD: task 0 is the primary objective)")
    # random-order methods (PCGrad) are only order-free at K = 2 (one other task to project on)
    k = 2 if is_random(name) else 6
    g = random_grads(k, 11)
    losses = losses_for(k)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(k))
    w = combiners.make(name)(gram_of(g), losses)
    w_perm = combiners.make(name)(gram_of(g[perm]), losses[perm])
    assert w_perm.numpy() == pytest.approx(w[perm].numpy(), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("factor", [1e-6, 3.0, 1e6])
def test_scale_invariance_of_direction(name: str, factor: float) -> None:
    g = random_grads(5, 21)
    gram = gram_of(g)
    losses = losses_for(5)
    w = combiners.make(name)(gram, losses)
    w_scaled = combiners.make(name)(gram * factor, losses)
    assert direction(gram, w_scaled).numpy() == pytest.approx(direction(gram, w).numpy(), rel=1e-6, abs=1e-9)


def adversarial_grams(k: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(5)
    ratio = rng.standard_normal((k, 20))
    ratio[0] *= 1e8
    rank1 = rng.standard_normal((k, 1)) @ rng.standard_normal((1, 20))
    opposite = np.zeros((k, 20))
    opposite[0, 0], opposite[1, 0] = 1.0, -1.0
    opposite[2:, 1:] = rng.standard_normal((k - 2, 19))
    out = {
        "zero": torch.zeros(k, k, dtype=torch.float64),
        "singular": gram_of(torch.from_numpy(rng.standard_normal((k, 2)))),
        "rank1": gram_of(torch.from_numpy(rank1)),
        "ratio1e8": gram_of(torch.from_numpy(ratio)),
        "opposite": gram_of(torch.from_numpy(opposite)),
        "one_zero_task": gram_of(torch.from_numpy(np.vstack([np.zeros((1, 20)), rng.standard_normal((k - 1, 20))]))),
    }
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["zero", "singular", "rank1", "ratio1e8", "opposite", "one_zero_task"])
def test_robust_on_adversarial_grams(name: str, case: str) -> None:
    k = 5
    comb = combiners.make(name)
    w = comb(adversarial_grams(k)[case], losses_for(k))
    assert w.shape == (k,) and torch.isfinite(w).all()
    assert all(math.isfinite(v) for v in comb.stats().values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_gram_falls_back_to_mean(name: str, bad: float) -> None:
    k = 4
    gram = gram_of(random_grads(k, 2))
    gram[1, 2] = bad
    comb = combiners.make(name)
    w = comb(gram, losses_for(k))
    assert w.numpy() == pytest.approx(np.full(k, 1.0 / k))
    stats = comb.stats()
    assert stats["fallback"] == 1.0 and stats["fallbacks_total"] == 1.0
    assert all(math.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("name", NAMES)
def test_zero_gram_counts_a_fallback(name: str) -> None:
    comb = combiners.make(name)
    w = comb(torch.zeros(3, 3, dtype=torch.float64), losses_for(3))
    assert torch.isfinite(w).all()
    assert comb.stats()["fallbacks_total"] == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_reproducible_with_seed(name: str) -> None:
    outs = []
    for _ in range(2):
        comb = combiners.make(name, seed=7)
        seq = []
        for step in range(4):
            g = random_grads(5, 30 + step)
            seq.append(comb(gram_of(g), losses_for(5, step)))
            comb.after_step(losses_for(5, step + 50))
        outs.append(torch.stack(seq))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    comb = combiners.make(name, seed=3)
    for step in range(3):
        comb(gram_of(random_grads(5, step)), losses_for(5, step))
        comb.after_step(losses_for(5, step + 10))
    state = copy.deepcopy(comb.state_dict())
    g_next, l_next = gram_of(random_grads(5, 99)), losses_for(5, 99)
    expected = comb(g_next, l_next)
    restored = combiners.make(name, seed=3)
    restored.load_state_dict(state)
    assert torch.equal(restored(g_next, l_next), expected)
    comb.reset()
    fresh = combiners.make(name, seed=3)
    g0, l0 = gram_of(random_grads(5, 0)), losses_for(5, 0)
    assert torch.equal(comb(g0, l0), fresh(g0, l0))


# ---------------------------------------------------------------------------------------------- registry API
def test_make_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="known: mean"):
        combiners.make("nope")


@pytest.mark.parametrize("name", NAMES)
def test_make_unknown_hparam_lists_known(name: str) -> None:
    with pytest.raises(ValueError, match="known: .*seed"):
        combiners.make(name, not_a_hparam=1)


@pytest.mark.parametrize(
    ("name", "hparams", "mentioned"),
    [
        ("cagrad", {"c": -0.1}, "c"),
        ("cagrad", {"c": math.nan}, "c"),
        ("cagrad", {"rescale": "1/c"}, "rescale"),
        ("cagrad", {"solver": "slsqp"}, "solver"),
        ("imgrad", {"mu": 1.5}, "mu"),
        ("imgrad", {"form": "eqn12"}, "form"),
        ("imgrad", {"c": -1.0}, "c"),
        ("imgrad", {"solver": "sgd"}, "solver"),
        ("mgda", {"solver": "fw"}, "solver"),
    ],
)
def test_out_of_range_hparams(name: str, hparams: dict, mentioned: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{mentioned}\b"):
        combiners.make(name, **hparams)


# ------------------------------------------------------------------------------------------------ identities
@pytest.mark.parametrize("rescale", ["none", "1/(1+c^2)", "1/(1+c)"])
def test_cagrad_c0_is_mean(rescale: str) -> None:
    gram = gram_of(random_grads(6, 4))
    w = combiners.make("cagrad", c=0.0, rescale=rescale)(gram, losses_for(6))
    assert torch.equal(w, torch.full((6,), 1.0 / 6, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("c", [0.4, 0.9])
def test_imgrad_eqn9_mu0_is_cagrad(seed: int, c: float) -> None:
    gram = gram_of(random_grads(6, seed, spread=4.0))
    losses = losses_for(6)
    w_im = combiners.make("imgrad", form="eqn9", mu=0.0, c=c)(gram, losses)
    w_ca = combiners.make("cagrad", c=c)(gram, losses)
    assert w_im.numpy() == pytest.approx(w_ca.numpy(), abs=1e-9)


def test_imgrad_release_mu0_is_linear_programme_vertex() -> None:
    # documented: at μ = 0 the released objective is 1.5 g_wᵀg_0, minimised at the vertex argmin_k g_kᵀg_0
    g = random_grads(5, 8)
    gram = gram_of(g)
    comb = combiners.make("imgrad", form="release", mu=0.0, rescale="none")
    w = comb(gram, losses_for(5)).numpy()
    m = (gram / (torch.trace(gram) / 5)).numpy()
    j = int(np.argmin(m.sum(axis=0)))
    s = 0.9 * solvers.g0_norm(m)
    expected = np.full(5, 0.2)
    expected[j] += s / math.sqrt(m[j, j])
    assert w == pytest.approx(expected, rel=1e-9)


def test_imgrad_reports_mu() -> None:
    comb = combiners.make("imgrad")
    comb(gram_of(random_grads(4, 1)), losses_for(4))
    stats = comb.stats()
    assert 0.0 <= stats["mu"] <= 1.0
    assert stats["mu"] == pytest.approx(stats["cos_theta"], abs=1e-9)


@pytest.mark.parametrize("solver", ["exact", "cvxpy"])
@pytest.mark.parametrize("seed", range(10))
def test_mgda_k2_closed_form(solver: str, seed: int) -> None:
    g = random_grads(2, seed, spread=5.0)
    w = combiners.make("mgda", solver=solver)(gram_of(g), losses_for(2)).numpy()
    diff = g[0] - g[1]
    w1 = float(torch.clamp((g[1] - g[0]) @ g[1] / (diff @ diff), 0.0, 1.0))
    assert w == pytest.approx([w1, 1.0 - w1], abs=1e-6 if solver == "cvxpy" else 1e-12)


def test_pcgrad_two_conflicting_tasks_is_textbook() -> None:
    g = torch.tensor([[1.0, 0.2, 0.0], [-0.6, 1.0, 0.3]], dtype=torch.float64)
    assert float(g[0] @ g[1]) < 0
    g1 = g[0] - (g[0] @ g[1]) / (g[1] @ g[1]) * g[1]
    g2 = g[1] - (g[1] @ g[0]) / (g[0] @ g[0]) * g[0]
    w = combiners.make("pcgrad")(gram_of(g), losses_for(2))
    assert (w @ g).numpy() == pytest.approx(((g1 + g2) / 2).numpy(), abs=1e-12)


def test_pcgrad_matches_vector_space_projection() -> None:
    g = random_grads(6, 13, spread=3.0)
    comb = combiners.make("pcgrad", seed=4)
    orders = __import__("rl_mtl.combiners.pcgrad", fromlist=["x"]).projection_orders(6, np.random.default_rng(4))
    w = comb(gram_of(g), losses_for(6))
    projected = []
    for i in range(6):
        gi = g[i].clone()
        for j in orders[i]:
            dot = gi @ g[j]
            if dot < 0:
                gi = gi - dot / (g[j] @ g[j]) * g[j]
        projected.append(gi)
    assert (w @ g).numpy() == pytest.approx(torch.stack(projected).mean(0).numpy(), abs=1e-10)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("name", "hparams"), [("mgda", {}), ("cagrad", {"c": 1.0}), ("cagrad", {"c": 2.0})])
def test_no_conflict(name: str, hparams: dict, seed: int) -> None:
    gram = gram_of(random_grads(7, seed, spread=6.0))
    comb = combiners.make(name, **hparams)
    comb(gram, losses_for(7))
    assert comb.stats()["min_cos_dk"] >= -1e-9
    assert comb.stats()["pareto_failure"] == 0.0


@pytest.mark.parametrize("name", ["mgda", "cagrad", "imgrad"])
def test_exact_and_cvxpy_solvers_agree(name: str) -> None:
    gram = gram_of(random_grads(8, 17, spread=3.0))
    losses = losses_for(8)
    exact = combiners.make(name)(gram, losses)
    ref = combiners.make(name, solver="cvxpy")(gram, losses)
    assert direction(gram, ref).numpy() == pytest.approx(direction(gram, exact).numpy(), abs=1e-4)


def test_cagrad_sgd_solver_runs_and_is_close() -> None:
    gram = gram_of(random_grads(10, 2))
    losses = losses_for(10)
    approx = combiners.make("cagrad", solver="sgd")(gram, losses)
    exact = combiners.make("cagrad")(gram, losses)
    assert torch.isfinite(approx).all()
    cos = float(direction(gram, approx) @ gram @ direction(gram, exact))
    assert cos > 0.9


def test_pareto_stats_all_finite_on_degenerate_input() -> None:
    from rl_mtl.combiners.diagnostics import pareto_stats

    for gram in [torch.zeros(3, 3), torch.full((3, 3), math.nan), torch.diag(torch.tensor([1.0, 0.0, 1e16]))]:
        stats = pareto_stats(gram, torch.full((3,), 1 / 3))
        assert all(math.isfinite(v) for v in stats.values())
        assert {"imbalance_ratio", "cos_theta", "min_cos_dk", "pareto_failure", "d_norm", "d_norm_rel"} <= set(stats)
    stats = pareto_stats(torch.diag(torch.tensor([1.0, 0.0, 1e16])), torch.full((3,), 1 / 3))
    assert stats["imbalance_ratio"] == pytest.approx(1e12)


@pytest.mark.parametrize("name", ["mgda", "cagrad", "imgrad"])
def test_warm_start_gives_the_cold_optimum(name: str) -> None:
    """Reusing the last optimal support (warm start) changes the speed, never the answer."""
    rng = np.random.default_rng(7)
    warm = combiners.make(name)
    for step in range(40):
        k = 10
        G = rng.normal(size=(k, 30)) * np.exp(rng.uniform(-2, 2, size=(k, 1)))
        if step % 2:  # consecutive Grams close to each other, as in training
            G = G_prev + 0.05 * G
        G_prev = G
        gram = torch.from_numpy(G @ G.T)
        losses = torch.ones(k, dtype=torch.float64)
        torch.testing.assert_close(warm(gram, losses), combiners.make(name)(gram, losses), rtol=1e-7, atol=1e-9)
