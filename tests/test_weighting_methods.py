"""The weightings against their papers' formulas: IGBv1's reference form, warm-up and frozen baseline, SI, RLW in
both spaces, gradient-norm scaling, uncertainty weighting, DWA; the interval statistics; checkpoints."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from rl_mtl import weighting
from rl_mtl.agents.mtsac import TaskLoss
from rl_mtl.combiners import make as make_combiner
from rl_mtl.config import ConfigError, build_config
from rl_mtl.routing import CombinedStep
from rl_mtl.weighting.base import Weighting, entropy, floored_weights
from rl_mtl.weighting.uw import uw_grad

K = 4


def drive(w: Weighting, losses: list[Tensor], info: dict[str, Any] | None = None) -> list[Tensor]:
    out = []
    for loss in losses:
        out.append(w.factors(loss, info) * 0 + w.lam)  # λ of the update (factors() records s as the router does)
        w.observe(loss, loss * 0.9 if w.needs_after() else None)
    return out


# ---------------------------------------------------------------------- IGBv1: warm-up, frozen baseline
def test_igbv1_keeps_lambda_one_through_its_warmup() -> None:
    w = weighting.make("igbv1", hold=5, warmup=20)
    loss = torch.tensor([1.0, 1.0, 4.0, 1.0], dtype=torch.float64)
    lambdas = drive(w, [torch.ones(K, dtype=torch.float64)] * 10 + [loss] * 30)
    assert all(torch.equal(lam, torch.ones(K, dtype=torch.float64)) for lam in lambdas[:20])
    assert int(lambdas[20].argmax()) == 2 and float(lambdas[20][2]) > 1.2  # the first choice: update 20


def test_igbv1_frozen_baseline_is_the_mean_of_its_first_updates() -> None:
    """``baseline_updates=10``: λ = 1 until the baseline (mean of the first 10 updates) is frozen; later losses
    are compared with it, never folded in — the reference's epoch-2 baseline."""
    w = weighting.make("igbv1", hold=5, warmup=0, baseline_updates=10)
    first = [torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=torch.float64)] * 5
    second = [torch.tensor([3.0, 2.0, 1.0, 1.0], dtype=torch.float64)] * 5
    later = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    lambdas = drive(w, first + second + [later] * 50)
    assert all(torch.equal(lam, torch.ones(K, dtype=torch.float64)) for lam in lambdas[:10])
    assert w.baseline_frozen
    baseline = torch.tensor([2.0, 2.0, 1.0, 1.0], dtype=torch.float64)  # the mean of the first 10 updates
    assert (w._ema / w._ema_norm).tolist() == pytest.approx(baseline.tolist())
    expected = K * torch.softmax(later / baseline, 0)  # K·softmax(L̄/b), the paper's formula
    assert lambdas[-1].tolist() == pytest.approx(expected.tolist(), rel=1e-7)  # eps in the ratio


# ---------------------------------------------------------------------- SI and RLW
def toy(scales: tuple[float, ...] = (1.0, 3.0, 0.3), transform: Any = None) -> TaskLoss:
    """Least-squares tasks on one parameter vector; ``transform(losses)`` → the loss whose gradient is wanted."""
    gen = torch.Generator().manual_seed(0)
    k = len(scales)
    A = torch.randn(k, 5, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(k, 5, generator=gen, dtype=torch.float64)
    c = torch.tensor(scales, dtype=torch.float64)
    theta = nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64))
    params = {"theta": theta}

    def one(p: dict[str, Tensor], a: Tensor, y: Tensor, ck: Tensor) -> tuple[Tensor, Tensor]:
        loss = 0.5 * ck * (a @ p["theta"] - y).pow(2).mean()
        return loss, loss.detach()

    def batched() -> tuple[Tensor, Tensor]:
        losses = torch.stack([one(params, A[i], b[i], c[i])[0] for i in range(k)])
        return (losses if transform is None else transform(losses)), losses.detach()

    return TaskLoss(params, batched, one, (A, b, c))


def test_si_is_the_gradient_of_the_mean_log_loss() -> None:
    got = toy()
    CombinedStep(make_combiner("mean"), plain=True, diag_every=0, weighting=weighting.make("si"))(got)
    ref = toy(transform=lambda losses: torch.log(losses + 1e-8))
    CombinedStep(make_combiner("mean"), plain=True, diag_every=0)(ref)
    assert got.params["theta"].grad.tolist() == pytest.approx(ref.params["theta"].grad.tolist(), rel=1e-9)


@pytest.mark.parametrize("space", ["linear", "log"])
def test_rlw_in_both_spaces(space: str) -> None:
    """Linear: ∇ mean(λ L) (the RLW paper); log: ∇ mean(λ log L) (the IGB code's rlw_log)."""
    w = weighting.make("rlw", hold=1, space=space, seed=3)
    w.weights(torch.ones(3, dtype=torch.float64))  # the first update has λ = 1; the next one draws
    got = toy()
    CombinedStep(make_combiner("mean"), plain=True, diag_every=0, weighting=w)(got)
    lam = w.lam.clone()
    assert float(lam.sum()) == pytest.approx(3.0) and not torch.allclose(lam, torch.ones(3, dtype=lam.dtype))
    f = (lambda losses: lam * losses) if space == "linear" else (lambda losses: lam * torch.log(losses + 1e-8))
    ref = toy(transform=f)
    CombinedStep(make_combiner("mean"), plain=True, diag_every=0)(ref)
    assert got.params["theta"].grad.tolist() == pytest.approx(ref.params["theta"].grad.tolist(), rel=1e-9)


# ---------------------------------------------------------------------- gradient-norm scaling
def test_grad_scale_equalises_gradient_norms_spread_1_to_1000() -> None:
    """On a Gram whose norms spread 1:1000, the next window's weighted gradients λ_k g_k have equal norms."""
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(K, 50, generator=gen, dtype=torch.float64)
    G = G / G.norm(dim=1, keepdim=True) * torch.tensor([1.0, 10.0, 1000.0, 0.9], dtype=torch.float64)[:, None]
    norms = (G @ G.T).diagonal().sqrt()
    assert float(norms.max() / norms.min()) > 1000
    w = weighting.make("grad_scale", hold=5)
    for _ in range(6):  # one window, then the boundary
        w.weights(torch.ones(K, dtype=torch.float64))
        assert w.norms_wanted(True)
        w.observe_norms(norms, torch.ones(K, dtype=torch.float64))
    weighted = (w.lam[:, None] * G).norm(dim=1)
    assert weighted.tolist() == pytest.approx([float(weighted[0])] * K, rel=1e-12)
    assert float(w.lam.sum()) == pytest.approx(K)


@pytest.mark.parametrize("method", ["imgrad", "mtsac"])
def test_grad_scale_through_the_router(method: str) -> None:
    """Gram route: the norms are the Gram's diagonal every update (no extra gradients); plain route: the per-task
    gradients are taken once per window, at its last update.  Either way, from the second window on, the Gram
    the combiner (or the diagnostics) sees has equal diagonal entries."""
    hold, scales = 4, (1.0, 1e-3, 0.05)
    w = weighting.make("grad_scale", hold=hold)
    combiner = make_combiner("mean") if method == "mtsac" else make_combiner(method)
    step = CombinedStep(combiner, plain=method == "mtsac", diag_every=0, weighting=w)
    passes = []
    inner = step.gradients_and_gram

    def counted(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        passes.append(step.calls)
        return out

    step.gradients_and_gram = counted
    grams: list[Tensor] = []
    if method != "mtsac":
        class Spy(type(combiner)):  # the same combiner, recording the Gram it is handed
            def __call__(self, gram: Tensor | None, losses: Tensor) -> Tensor:
                grams.append(gram.clone())
                return super().__call__(gram, losses)

        step.combiner = Spy()
    for _ in range(3 * hold):
        task_loss = toy(scales)
        step(task_loss)
    if method == "mtsac":
        assert passes == [hold, 2 * hold, 3 * hold]  # once per window, at its last update
        task_loss = toy(scales)
        G = torch.stack([torch.autograd.grad(task_loss.batched()[0][i], task_loss.params["theta"],
                                             retain_graph=True)[0] for i in range(3)])
        weighted = (w.lam[:, None] * G).norm(dim=1)
    else:
        assert len(passes) == 3 * hold  # the route's own pass, nothing added
        weighted = grams[-1].diagonal().sqrt()
    assert weighted.tolist() == pytest.approx([float(weighted[0])] * 3, rel=1e-9)


# ---------------------------------------------------------------------- uncertainty weighting, DWA
def test_uw_gradient_is_that_of_kendalls_objective() -> None:
    """½(1 − L e^{−s}) = ∂/∂s Σ ½(L e^{−s} + s) (Kendall et al. 2018 Eqn 7 with s = log σ²), by autograd."""
    losses = torch.tensor([0.3, 1.0, 4.0, 0.01], dtype=torch.float64)
    s = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    objective = (losses / (2 * torch.exp(s)) + torch.log(torch.exp(s).sqrt())).sum()  # L/(2σ²) + log σ
    (grad,) = torch.autograd.grad(objective, s)
    assert uw_grad(losses, s.detach()).tolist() == pytest.approx(grad.tolist(), rel=1e-12)


def test_uw_converges_to_inverse_loss_weights() -> None:
    """With constant losses σ_k² → L_k, so λ → K·(1/L_k)/Σ(1/L_j); the first update uses λ = 1 (s = 0)."""
    losses = torch.tensor([1.0, 4.0, 0.25, 2.0], dtype=torch.float64)
    w = weighting.make("uw")
    lambdas = [w.weights(losses).clone() for _ in range(3000)]
    assert lambdas[0].tolist() == [1.0] * K
    inverse = 1.0 / losses
    assert lambdas[-1].tolist() == pytest.approx((K * inverse / inverse.sum()).tolist(), rel=0.02)
    assert torch.exp(w.log_var).tolist() == pytest.approx(losses.tolist(), rel=0.02)
    with pytest.raises(ConfigError, match="--set weighted: SAC's actor loss can be negative"):
        build_config("mt10_cpu", {"weighting": "uw", "weighted": "critic,actor"})


def test_dwa_is_the_softmax_of_successive_window_ratios() -> None:
    """Windows 1 and 2: λ = 1; window 3: λ = K·softmax((L̄(2)/L̄(1))/T) with T = 2 (Liu et al. 2019, Eqn 7)."""
    w = weighting.make("dwa", hold=3)
    assert (w.hold, w.temp) == (3, 2.0)
    m1 = torch.tensor([1.0, 2.0, 4.0, 1.0], dtype=torch.float64)
    m2 = torch.tensor([0.5, 2.0, 5.0, 0.9], dtype=torch.float64)
    lambdas = drive(w, [m1] * 3 + [m2] * 3 + [m2])
    assert all(lam.tolist() == [1.0] * K for lam in lambdas[:6])
    ratio = m2 / m1
    expected = K * torch.exp(ratio / 2.0) / torch.exp(ratio / 2.0).sum()
    assert lambdas[6].tolist() == pytest.approx(expected.tolist(), rel=1e-7)  # eps in the ratio


# ---------------------------------------------------------------------- interval statistics
def test_stats_are_interval_means_not_the_last_window() -> None:
    w = weighting.make("rlw", hold=2, floor=0.0, seed=1)
    losses = [torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)] * 6
    lambdas = drive(w, losses)  # three windows: λ(1) = 1, then two random draws
    scalars, vectors = w.pop_stats()
    stacked = torch.stack(lambdas)
    assert vectors["lambda"].tolist() == pytest.approx(stacked.mean(0).tolist(), rel=1e-6)
    assert scalars["lambda_min"] == pytest.approx(float(stacked.min()), rel=1e-6)
    assert scalars["lambda_max"] == pytest.approx(float(stacked.max()), rel=1e-6)
    assert scalars["p_entropy"] == pytest.approx(float(np.mean([entropy(lam / K) for lam in lambdas])), rel=1e-6)
    factors = stacked / (losses[0] + 1e-8)  # log space: s = λ/(L + eps)
    assert vectors["grad_factor"].tolist() == pytest.approx(factors.mean(0).tolist(), rel=1e-6)
    drive(w, losses[:2])  # a new interval: only the last window
    _, vectors = w.pop_stats()
    assert vectors["lambda"].tolist() == pytest.approx(w.lam.tolist(), rel=1e-6)


def test_igbv2_logs_its_greedy_lambda_and_meta_figures_as_interval_means() -> None:
    torch.set_num_threads(1)
    w = weighting.make("igbv2", hold=2, warmup=1, learn_after=2, hidden_sizes=(16, 16))
    gen = torch.Generator().manual_seed(0)
    drive(w, [torch.rand(K, generator=gen, dtype=torch.float64) + 0.5 for _ in range(20)])
    scalars, vectors = w.pop_stats()
    assert scalars["meta_updates"] == w.meta.updates_done > 0
    for key in ("meta_reward", "meta_critic_loss", "meta_actor_loss", "meta_alpha", "meta_policy_std",
                "lambda_min", "lambda_max", "p_entropy"):
        assert math.isfinite(scalars[key]), key
    assert float(vectors["greedy_lambda"].sum()) == pytest.approx(K, rel=1e-5)
    drive(w, [torch.rand(K, generator=gen, dtype=torch.float64) + 0.5 for _ in range(2)])  # one boundary
    logged = w.pop_stats()[1]["greedy_lambda"]
    assert logged.tolist() == pytest.approx(w.greedy_lambda().tolist(), rel=1e-5)  # the λ of the mean action
    state = w._prev[0]
    mean, _ = w.meta.policy(state)
    expected = floored_weights(torch.softmax(2.0 * torch.tanh(mean.double()), 0), 0.3)
    assert w.greedy_lambda().tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert w.greedy_lambda().tolist() == pytest.approx(w.greedy_lambda().tolist())  # no RNG drawn, no step


# ---------------------------------------------------------------------- checkpoints of the new weightings
@pytest.mark.parametrize("name", ["si", "grad_scale", "uw", "dwa", "igbv1"])
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    opts = {"grad_scale": {"hold": 3}, "dwa": {"hold": 3}, "igbv1": {"hold": 3, "warmup": 0,
                                                                     "baseline_updates": 6}}.get(name, {})

    def run(w: Weighting, n: int, start: int) -> list[Tensor]:
        gen = torch.Generator().manual_seed(start)
        out = []
        for _ in range(n):
            loss = torch.rand(K, generator=gen, dtype=torch.float64) + 0.5
            out.append(w.factors(loss).clone())
            if w.norms_wanted(True):
                w.observe_norms(loss * 2.0, loss)
        return out

    a = weighting.make(name, **opts)
    run(a, 10, 1)
    b = weighting.make(name, **opts)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(run(a, 10, 2), run(b, 10, 2)))
    sa, va = a.pop_stats()
    sb, vb = b.pop_stats()
    assert sa == sb and all(torch.equal(va[k], vb[k]) for k in va)
