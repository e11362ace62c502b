"""The loss-weighting bugs of issue 14, one test (or two) each: IGBv2's dead start, ``weighting.updates=0``, linear
space with negative losses, FAMO with a log-space weighting, where IGBv2's reward is sampled, and the no-effect
warning under Nash-MTL (and FAMO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from rl_mtl import sweep, weighting
from rl_mtl.agents.mtsac import TaskLoss
from rl_mtl.combiners import make as make_combiner
from rl_mtl.config import ConfigError, build_config, parse_set
from rl_mtl.routing import CombinedStep, weighting_warning
from rl_mtl.train import main
from rl_mtl.weighting.base import Weighting, loss_ratio

from weighting_helpers import FixedWeighting  # tests/weighting_helpers.py

K = 4


def drive(w: Weighting, losses: list[Tensor], info: dict[str, Any] | None = None) -> list[Tensor]:
    """One loss vector per update (same-batch decline of 10 % where asked for); the λ of each update."""
    out = []
    for loss in losses:
        out.append(w.weights(loss, info).clone())
        w.observe(loss, loss * 0.9 if w.needs_after() else None)
    return out


# ---------------------------------------------------------------------- 1. dead start of IGBv2
@pytest.mark.parametrize("hold", [1, 10, 100])
def test_igbv2_learns_by_window_20_at_the_defaults_whatever_hold(hold: int) -> None:
    """Default IGBv2: the meta-SAC makes its first update by window 20 (the old one waited for 64 transitions:
    window 66), its policy starts with σ ≈ 1 (not 1e-4), and the windows after the random warm-up still explore."""
    torch.set_num_threads(1)
    w = weighting.make("igbv2", hold=hold)
    gen = torch.Generator().manual_seed(0)
    first_learnt, lambdas = None, []
    for window in range(1, 21):
        for _ in range(hold):
            lam = w.weights(torch.rand(K, generator=gen, dtype=torch.float64) + 0.5, {"progress": 0.1})
            w.observe(lam, lam * 0.95 if w.needs_after() else None)
        lambdas.append(lam.clone())
        if first_learnt is None and w.meta.updates_done > 0:
            first_learnt = window
    assert first_learnt is not None and first_learnt <= 20
    scalars, _ = w.pop_stats()
    assert scalars["meta_updates"] == w.meta.updates_done > 0
    assert 0.5 < scalars["meta_policy_std"] < 2.0  # the σ the policy acted with, averaged over the windows
    for state in np.random.default_rng(0).uniform(-5, 5, (5, 2 * K + 1)).astype(np.float32):
        w2 = weighting.make("igbv2", hold=hold)
        w2.weights(torch.ones(K))
        assert w2.meta.policy(state)[1].tolist() == pytest.approx([1.0] * K, rel=1e-4)  # initial σ, any state
    policy_windows = torch.stack(lambdas[11:])  # windows chosen by the policy, after the 10 random ones
    assert float(policy_windows.std(0).mean()) > 0.1  # a real spread, not one λ repeated


# ---------------------------------------------------------------------- 2. weighting.updates=0
def test_zero_meta_updates_is_refused_with_the_flags_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"^--set weighting.updates: updates must be an integer >= 1"):
        build_config("mt10_cpu", {"weighting": "igbv2", **parse_set(["weighting.updates=0"])})
    with pytest.raises(SystemExit) as exc:
        main(["--config", "mt10_cpu", "--method", "igbv2", "--set", "weighting.updates=0", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set weighting.updates" in err[0]


# ---------------------------------------------------------------------- 3. linear space, negative losses
def test_loss_ratio_is_sign_safe() -> None:
    """log(L̄/b) for positive values; for a negative baseline 0 at L̄ = b and rising with L̄ (worse)."""
    pos = loss_ratio(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0]), 1e-12)
    assert pos.tolist() == pytest.approx([np.log(2.0), np.log(0.5)])
    b = torch.full((4,), -2.0)
    neg = loss_ratio(torch.tensor([-2.0, -1.0, -3.0, -1.5]), b, 1e-12)
    assert neg[0].item() == pytest.approx(0.0, abs=1e-9)
    assert neg[1] > neg[3] > neg[0] > neg[2]
    assert neg[1].item() == pytest.approx(np.log(1.5))  # ρ = 1 + (−1 + 2)/2


@pytest.mark.parametrize("name", ["igbv1", "igbv2", "dwa"])
def test_negative_losses_in_linear_space_keep_a_meaningful_state(name: str) -> None:
    """Actor-like losses around −2: task 1's rises towards 0 (worse), task 2's falls (better).  The state sees it
    (the old clamp to 0 made every ratio log(eps/eps) = 0); IGBv1 weights task 1 most and task 2 least."""
    opts = {"igbv1": {"warmup": 0}, "igbv2": {"warmup": 1, "learn_after": 2, "hidden_sizes": (16, 16)}}.get(name, {})
    w = weighting.make(name, hold=5, space="linear", **opts)
    drive(w, [torch.full((K,), -2.0, dtype=torch.float64)] * 200)
    moved = torch.tensor([-2.0, -1.0, -3.0, -2.0], dtype=torch.float64)
    drive(w, [moved] * 5)
    w.pop_stats()
    lam = drive(w, [moved])[-1]
    ratio = w.stats()[1]["loss_ratio"]
    assert ratio[1] > 0.1 and ratio[2] < -0.1 and abs(float(ratio[0])) < 0.05
    assert torch.isfinite(lam).all() and float(lam.sum()) == pytest.approx(K)
    if name == "igbv1":
        assert int(lam.argmax()) == 1 and int(lam.argmin()) == 2
    if name == "dwa":  # r = L̄(t−1)/L̄(t−2), sign-safe: the rising loss has the largest ratio
        assert int(lam.argmax()) == 1


# ---------------------------------------------------------------------- 4. FAMO with a loss weighting
LAM = torch.tensor([0.5, 2.0, 0.5], dtype=torch.float64)


def toy(power: Tensor | None = None) -> TaskLoss:
    """Three least-squares tasks of very different scales on one parameter vector; with ``power`` each task's loss
    is ``L_k^{λ_k}`` — the losses whose logs are the weighted log-losses ``λ_k log L_k``."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.3])[:, None, None]
    b = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    theta = nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64))

    def batched() -> tuple[Tensor, Tensor]:
        losses = 0.5 * (torch.einsum("kni,i->kn", A, theta) - b).pow(2).mean(1)
        if power is not None:
            losses = losses.pow(power)
        return losses, losses.detach()

    return TaskLoss({"theta": theta}, batched)


def famo_with_logits(logits: list[float]) -> Any:
    famo = make_combiner("famo")
    famo.logits, famo._m, famo._v = np.array(logits), np.zeros(3), np.zeros(3)
    return famo


def test_famo_with_a_log_space_weighting_is_famo_on_the_weighted_losses() -> None:
    """Direction: ∝ Σ z_k λ_k/L_k g_k, normalised to coefficients summing to 1 (by hand from autograd's g_k), and
    parallel to plain FAMO run on the losses L_k^{λ_k}; the old code gave Σ z_k λ_k/(c L_k²) g_k."""
    logits = [0.3, -0.2, 0.1]
    task_loss = toy()
    CombinedStep(famo_with_logits(logits), diag_every=0, weighting=FixedWeighting(LAM, "log"))(task_loss)
    got = task_loss.params["theta"].grad.clone()

    reference = toy()
    losses = reference.batched()[0]
    grads = torch.stack([torch.autograd.grad(losses[k], reference.params["theta"], retain_graph=True)[0]
                         for k in range(3)])
    z = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
    coef = z * LAM / (losses.detach() + 1e-8)
    assert got.tolist() == pytest.approx(((coef / coef.sum()) @ grads).tolist(), rel=1e-9)

    powered = toy(LAM)
    CombinedStep(famo_with_logits(logits), diag_every=0)(powered)  # plain FAMO on the losses L^λ
    other = powered.params["theta"].grad
    cos = float(got @ other / (got.norm() * other.norm()))
    assert cos == pytest.approx(1.0, abs=1e-12) and float(got @ other) > 0


def test_famo_logit_updates_follow_the_weighted_log_losses() -> None:
    """After-step updates: FAMO told λ (log space) moves its logits exactly as plain FAMO fed L^λ before and after
    each step does — the decline is λ_k·(log L_k^before − log L_k^after)."""
    rng = np.random.default_rng(0)
    weighted, plain = make_combiner("famo"), make_combiner("famo")
    for _ in range(5):
        before = torch.tensor(rng.uniform(0.5, 2.0, 3), dtype=torch.float64)
        after = before * torch.tensor(rng.uniform(0.7, 1.0, 3), dtype=torch.float64)
        weighted.weigh_log_losses(LAM)
        w1 = weighted(None, before)
        weighted.after_step(after)
        w2 = plain(None, before.pow(LAM))
        plain.after_step(after.pow(LAM))
        assert weighted.logits.tolist() == pytest.approx(plain.logits.tolist(), rel=1e-6, abs=1e-9)
        # the weights on the raw gradients: FAMO's on L^λ times dL^λ/dL = λ L^λ/L, renormalised
        expected = w2 * LAM * before.pow(LAM) / before
        assert w1.tolist() == pytest.approx((expected / expected.sum()).tolist(), rel=1e-6)
    assert not np.allclose(weighted.logits, 0.0)


def test_famo_with_a_linear_weighting_is_plain_famo_and_says_so() -> None:
    """A linear-space weighting cancels in FAMO's log: the step equals FAMO's own, and train/sweep warn."""
    weighted, plain = toy(), toy()
    CombinedStep(famo_with_logits([0.3, -0.2, 0.1]), diag_every=0, weighting=FixedWeighting(LAM, "linear"))(weighted)
    CombinedStep(famo_with_logits([0.3, -0.2, 0.1]), diag_every=0)(plain)
    assert torch.equal(weighted.params["theta"].grad, plain.params["theta"].grad)
    cfg = build_config("mt10_cpu", {"method": "famo", "weighting": "rlw", **parse_set(["weighting.space=linear"])})
    assert "no effect under --method famo" in weighting_warning(cfg)
    assert weighting_warning(build_config("mt10_cpu", {"method": "famo", "weighting": "si"})) is not None
    assert weighting_warning(build_config("mt10_cpu", {"method": "famo", "weighting": "igbv1"})) is None


# ---------------------------------------------------------------------- 5. where the reward is sampled
@pytest.mark.parametrize(("hold", "samples", "expected"), [
    (100, 10, list(range(9, 100, 10))), (20, 4, [4, 9, 14, 19]), (7, 10, list(range(7))), (10, 1, [9])])
def test_igbv2_samples_its_reward_late_in_each_sub_block(hold: int, samples: int, expected: list[int]) -> None:
    """The decline is measured at the last update of each sub-block (the old code took positions 0, 10, …, where
    Adam's momentum still carries the previous window's weights)."""
    w = weighting.make("igbv2", hold=hold, reward_samples=samples, hidden_sizes=(8,))
    asked = []
    for _ in range(2 * hold):
        w.weights(torch.ones(K))
        if w.needs_after():
            asked.append(w.window_position)
        w.observe(torch.ones(K), torch.ones(K) if w.needs_after() else None)
    assert asked == expected * 2


# ---------------------------------------------------------------------- 6. no-effect warning
def test_nashmtl_warning_in_train_and_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = build_config("mt10_cpu", {"method": "nashmtl", "weighting": "igbv2"})
    assert "no effect under --method nashmtl" in weighting_warning(cfg)
    assert weighting_warning(build_config("mt10_cpu", {"method": "imgrad", "weighting": "igbv2"})) is None
    # the actor alone weighted, the critic alone combined: the actor's plain mean does feel the weights
    mixed = build_config("mt10_cpu", {"method": "nashmtl", "weighting": "rlw", "combine": "critic",
                                      "weighted": "actor", **parse_set(["weighting.space=linear"])})
    assert weighting_warning(mixed) is None

    class Stub:  # the trainer is not what is tested here: no envs are built
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def run(self) -> dict[str, float]:
            return {"mean": 0.0}

    monkeypatch.setattr("rl_mtl.trainer.Trainer", Stub)
    assert main(["--config", "mt10_cpu", "--method", "nashmtl", "--weighting", "rlw", "--logdir",
                 str(tmp_path / "run"), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning: --weighting rlw has no effect under --method nashmtl" in err[0]

    assert sweep.main(["--env", "mt1:reach-v3", "--methods", "nashmtl+igbv2,imgrad+igbv2", "--seeds", "1",
                       "--config", "mt10_cpu", "--out", str(tmp_path / "sweep"), "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "has no effect" in line]
    assert len(lines) == 1 and "nashmtl+igbv2" in lines[0]
