"""Loss weightings (IGBv1, IGBv2, RLW): their weights, their learner, and their composition with the combiners."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from rl_mtl.agents.mtsac import TaskLoss
from rl_mtl import weighting
from rl_mtl.combiners import make as make_combiner
from rl_mtl.config import ConfigError, build_config, parse_set
from rl_mtl.routing import CombinedStep
from rl_mtl.train import main
from rl_mtl.weighting.base import Weighting, floored_weights, gradient_scale, softmin
from rl_mtl.weighting.meta_sac import MetaSAC

from weighting_helpers import FixedWeighting  # tests/weighting_helpers.py

K = 4
TINY = ["--set", "hidden_sizes=16,16", "--set", "warmup_steps=10", "--set", "eval_episodes=1",
        "--set", "max_episode_steps=20", "--set", "log_every=10", "--set", "torch_threads=1", "--no-progress"]
LEARNED = ("rlw", "igbv1", "igbv2")


def small(name: str, **kwargs: Any) -> Weighting:
    """A weighting with a short hold and, for IGBv2, a tiny quickly-warmed meta-SAC."""
    extra = {"igbv2": {"warmup": 2, "batch_size": 4, "hidden_sizes": (16, 16)}, "igbv1": {"warmup": 0}}.get(name, {})
    return weighting.make(name, **{"hold": 2, **extra, **kwargs})


def drive(w: Weighting, losses: list[Tensor], info: dict[str, Any] | None = None) -> list[Tensor]:
    """Feed one loss vector per update (with a made-up same-batch decline) and collect λ."""
    out = []
    for loss in losses:
        out.append(w.weights(loss, info))
        w.observe(loss, loss * 0.9 if w.needs_after() else None)
    return out


def tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run directory's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ---------------------------------------------------------------------- the weights themselves
@pytest.mark.parametrize("name", LEARNED)
def test_weights_sum_to_k_respect_floor_and_stay_finite(name: str) -> None:
    """Ordinary, zero, tiny and huge losses: every λ sums to K, is ≥ the floor and finite."""
    rng = np.random.default_rng(0)
    cases = [torch.tensor(rng.uniform(0.1, 10.0, K)) for _ in range(12)]
    cases += [torch.zeros(K), torch.tensor([1e-30, 1.0, 1e30, 5.0]), torch.tensor([1e300, 1e-300, 0.0, 1.0])]
    cases += [torch.tensor(rng.uniform(0.1, 10.0, K)) for _ in range(6)]
    w = small(name, floor=0.2)
    lambdas = drive(w, cases, {"success": np.linspace(0, 1, K), "progress": 0.5})
    assert len({tuple(lam.tolist()) for lam in lambdas}) > 2  # it does change
    for lam in lambdas:
        assert torch.isfinite(lam).all()
        assert lam.sum().item() == pytest.approx(K, abs=1e-9)
        assert lam.min().item() >= 0.2 - 1e-12
    assert w.fallbacks == 0


@pytest.mark.parametrize("name", LEARNED)
def test_nan_window_keeps_previous_weights_and_counts_a_fallback(name: str) -> None:
    w = small(name)
    drive(w, [torch.tensor([1.0, 2.0, 3.0, 4.0])] * 4)  # two windows of hold=2
    nan = torch.tensor([float("nan"), 1.0, 1.0, 1.0])
    after = drive(w, [nan, nan, nan])  # a whole window of non-finite losses, then the next boundary
    assert all(torch.isfinite(lam).all() for lam in after)
    assert torch.equal(after[2], after[0])  # the choice after the NaN window keeps the previous λ
    assert w.fallbacks == 1 and w.stats()[0]["fallbacks"] == 1.0


def test_floored_weights_formula() -> None:
    p = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    lam = floored_weights(p, 0.3)
    assert lam.tolist() == pytest.approx([4 * (0.7 + 0.075), 0.3, 0.3, 0.3])


@pytest.mark.parametrize("form", ["reference", "log"])
def test_igbv1_favours_the_task_whose_loss_rose_most_over_its_baseline(form: str) -> None:
    """Equal losses build the baseline; then task 2's loss triples: λ = K·softmax(L̄/b) (the paper's, reference
    form) or K·softmax(log(L̄/b)) picks task 2; the ratio matches the bias-corrected EMA computed by hand."""
    w = weighting.make("igbv1", hold=10, baseline_rate=1e-2, form=form, warmup=0)
    drive(w, [torch.ones(K)] * 200)
    loss = torch.tensor([1.0, 1.0, 3.0, 1.2], dtype=torch.float64)
    drive(w, [loss] * 10)
    w.pop_stats()  # the next interval holds only the boundary below
    lam = drive(w, [loss])[-1]
    assert int(lam.argmax()) == 2
    norm = 1.0 - 0.99**200  # the EMA of 200 ones, and its bias correction, are both this
    step = 1.0 - 0.99**10  # one window of 10 updates at rate 1e-2
    baseline = ((1 - step) * norm + step * loss) / ((1 - step) * norm + step)
    expected_ratio = torch.log(loss / baseline)
    ratio = w.stats()[1]["loss_ratio"].double()
    assert ratio.tolist() == pytest.approx(expected_ratio.tolist(), rel=1e-5)
    z = loss / baseline if form == "reference" else expected_ratio
    assert lam.tolist() == pytest.approx((K * torch.softmax(z, 0)).tolist(), rel=1e-5)


def test_rlw_is_random_but_seeded() -> None:
    a = drive(weighting.make("rlw", hold=1, seed=3), [torch.ones(K)] * 6)
    b = drive(weighting.make("rlw", hold=1, seed=3), [torch.ones(K)] * 6)
    c = drive(weighting.make("rlw", hold=1, seed=4), [torch.ones(K)] * 6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[-1], c[-1])


def test_softmin_limits() -> None:
    x = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    assert softmin(x, 1e-3).item() == pytest.approx(1.0, abs=1e-2)
    assert softmin(x, 1e4).item() == pytest.approx(x.mean().item(), rel=1e-3)


def test_bad_hyperparameters_name_the_option() -> None:
    with pytest.raises(ValueError, match="hold"):
        weighting.make("igbv2", hold=0)
    with pytest.raises(ValueError, match="floor"):
        weighting.make("rlw", floor=1.5)
    with pytest.raises(ValueError, match="space"):
        weighting.make("igbv1", space="sqrt")
    with pytest.raises(ValueError, match="reward_samples"):
        weighting.make("igbv2", reward_samples=0)
    with pytest.raises(ValueError, match="known: none, rlw, igbv1, igbv2, si, grad_scale, uw, dwa"):
        weighting.make("gradnorm")


# ---------------------------------------------------------------------- IGBv2's learner
def lam_of(action: np.ndarray) -> Tensor:
    return floored_weights(torch.softmax(2.0 * torch.as_tensor(action, dtype=torch.float64), 0), 0.3)


def test_meta_sac_learns_a_bandit_that_rewards_one_weighting() -> None:
    """Reward = λ_2 − 1 (+ noise): the learnt weighting must beat random weights (mean λ_2 = 1) by far."""
    torch.set_num_threads(1)
    k = 10
    meta = MetaSAC(2 * k + 1, k, seed=0)
    rng = np.random.default_rng(0)
    state = np.zeros(2 * k + 1, np.float32)
    rewards = []
    for _ in range(200):
        action = meta.act(state)
        reward = float(lam_of(action)[2]) - 1.0 + 0.1 * rng.standard_normal()
        rewards.append(reward)
        meta.observe(state, action, reward, state)
    greedy = lam_of(meta.act(state, explore=False))
    random_mean = np.mean([float(lam_of(rng.uniform(-1, 1, k))[2]) for _ in range(2000)])
    assert random_mean == pytest.approx(1.0, abs=0.05)
    assert greedy[2] > 3.0 and int(greedy.argmax()) == 2
    assert np.mean(rewards[-50:]) > 1.0  # while still exploring, well above random's 0


def test_igbv2_learns_to_lift_the_task_that_declines_least() -> None:
    """Hand-made decline: task 1's loss falls 5× slower per unit of weight. The soft-min reward is raised by
    giving it more weight, and IGBv2 learns that through its own weights()/observe() interface."""
    torch.set_num_threads(1)
    w = weighting.make("igbv2", hold=1, reward_samples=1, warmup=10, seed=0)
    speed = torch.tensor([1.0, 0.2, 1.0, 1.0], dtype=torch.float64)
    loss = torch.ones(K, dtype=torch.float64)
    chosen = []
    for _ in range(250):
        lam = w.weights(loss, {"progress": 0.0})
        chosen.append(lam.clone())
        assert w.needs_after()
        w.observe(loss, loss * torch.exp(-0.01 * lam * speed))
    late = torch.stack(chosen[-50:]).mean(0)
    assert int(late.argmax()) == 1 and late[1] > 1.3
    scalars, vectors = w.stats()
    assert {"meta_reward", "meta_critic_loss", "meta_actor_loss", "meta_alpha"} <= set(scalars)
    assert vectors["lambda"].shape == (K,)


def test_igbv2_state_dict_round_trip_continues_identically() -> None:
    def run(w: Weighting, n: int, start: int) -> list[Tensor]:
        gen = torch.Generator().manual_seed(start)
        return drive(w, [torch.rand(K, generator=gen, dtype=torch.float64) + 0.5 for _ in range(n)],
                     {"success": np.full(K, 0.5), "progress": 0.3})

    a = small("igbv2")
    run(a, 20, 1)
    state = a.state_dict()
    b = small("igbv2")
    b.load_state_dict(state)
    torch.manual_seed(0)
    out_a = run(a, 20, 2)
    torch.manual_seed(0)
    out_b = run(b, 20, 2)
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b))


def test_correlation_with_failure_rate_is_reported() -> None:
    w = weighting.make("igbv1", hold=1, warmup=0)
    drive(w, [torch.ones(K)] * 5)
    # task 3 fails most and has the highest loss ratio → positive correlation
    drive(w, [torch.tensor([1.0, 1.0, 1.0, 5.0])] * 3, {"success": np.array([0.9, 0.8, 0.7, 0.0])})
    assert w.stats()[0]["corr_lambda_failure"] > 0.5


# ---------------------------------------------------------------------- composition with the combiners
def toy_task_loss(transform: Any = None) -> TaskLoss:
    """Three least-squares tasks on one shared parameter vector (per-task losses with very different scales);
    ``transform(loss, λ_k)`` turns a task's loss into its weighted loss for the reference computation."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(3, 5, 6, generator=gen) * torch.tensor([1.0, 3.0, 0.3])[:, None, None]
    b = torch.randn(3, 5, generator=gen)
    theta = nn.Parameter(torch.randn(6, generator=gen))
    params = {"theta": theta}

    def one(p: dict[str, Tensor], a: Tensor, y: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        loss = 0.5 * (a @ p["theta"] - y).pow(2).mean()
        if transform is not None:
            loss = transform(loss, k)
        return loss, loss.detach()

    def batched() -> tuple[Tensor, Tensor]:
        losses = torch.stack([one(params, A[k], b[k], LAM[k])[0] for k in range(3)])
        return losses, losses.detach()

    return TaskLoss(params, batched, one, (A, b, LAM))


LAM = torch.tensor([0.5, 2.0, 0.5])


@pytest.mark.parametrize("method", ["cagrad", "imgrad", "mgda", "pcgrad"])
@pytest.mark.parametrize("space", ["linear", "log"])
def test_weighted_direction_is_the_combiner_on_the_weighted_losses(method: str, space: str) -> None:
    """Weighting then combining == the same combiner on the losses λ_k L_k (or λ_k log(L_k+eps)) themselves."""
    eps = 1e-8

    def weighted(loss: Tensor, k: Tensor) -> Tensor:  # k: this task's λ
        return k * loss if space == "linear" else k * torch.log(loss + eps)

    reference = toy_task_loss(weighted)
    CombinedStep(make_combiner(method, seed=0), diag_every=0)(reference)
    expected = reference.params["theta"].grad.clone()

    task_loss = toy_task_loss()
    CombinedStep(make_combiner(method, seed=0), diag_every=0, weighting=FixedWeighting(LAM, space))(task_loss)
    got = task_loss.params["theta"].grad
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
    unweighted = toy_task_loss()
    CombinedStep(make_combiner(method, seed=0), diag_every=0)(unweighted)
    assert not torch.allclose(unweighted.params["theta"].grad, got, rtol=1e-3)  # it did change the direction


def test_plain_mean_with_weights_is_the_gradient_of_the_weighted_mean() -> None:
    task_loss = toy_task_loss()
    CombinedStep(make_combiner("mean"), plain=True, diag_every=1, weighting=FixedWeighting(LAM, "log"))(task_loss)
    reference = toy_task_loss(lambda loss, lam: lam * torch.log(loss + 1e-8))
    CombinedStep(make_combiner("mean"), plain=True, diag_every=0)(reference)
    assert torch.allclose(task_loss.params["theta"].grad, reference.params["theta"].grad, rtol=1e-5)


def test_nashmtl_is_invariant_to_loss_weights() -> None:
    """Nash-MTL's bargaining solution rescales with diag(λ): the direction is unchanged (references.md)."""
    plain, weighted = toy_task_loss(), toy_task_loss()
    CombinedStep(make_combiner("nashmtl", max_norm=0.0), diag_every=0)(plain)
    CombinedStep(make_combiner("nashmtl", max_norm=0.0), diag_every=0,
                 weighting=FixedWeighting(torch.tensor([0.2, 2.5, 0.3]), "linear"))(weighted)
    assert torch.allclose(plain.params["theta"].grad, weighted.params["theta"].grad, rtol=1e-5, atol=1e-8)


def test_gradient_scale_in_log_space() -> None:
    lam, losses = torch.tensor([1.0, 2.0]), torch.tensor([4.0, 0.5])
    assert gradient_scale(lam, losses, "log", 1e-8).tolist() == pytest.approx([0.25, 4.0])
    assert gradient_scale(lam, losses, "linear", 1e-8).tolist() == [1.0, 2.0]


# ---------------------------------------------------------------------- configuration and the CLI
def test_method_shorthand_and_config_errors() -> None:
    cfg = build_config("mt10_cpu", {"method": "igbv2"})
    assert (cfg.method, cfg.weighting) == ("mtsac", "igbv2")
    cfg = build_config("mt10_cpu", {"method": "imgrad", "weighting": "igbv1", **parse_set(["weighting.hold=7"])})
    assert (cfg.method, cfg.weighting, cfg.weighting_opts) == ("imgrad", "igbv1", {"hold": 7})
    with pytest.raises(ConfigError, match="--weighting: unknown weighting 'igb'; known: none, rlw, igbv1, igbv2, si, "
                                          "grad_scale, uw, dwa"):
        build_config("mt10_cpu", {"weighting": "igb"})
    with pytest.raises(ConfigError, match="--method: 'igbv2' is shorthand"):
        build_config("mt10_cpu", {"method": "igbv2", "weighting": "rlw"})
    with pytest.raises(ConfigError, match=r"--set weighting.hold: hold must be an integer >= 1"):
        build_config("mt10_cpu", {"weighting": "igbv2", **parse_set(["weighting.hold=0"])})
    with pytest.raises(ConfigError, match="--set weighting.tau: unknown option of igbv2"):
        build_config("mt10_cpu", {"weighting": "igbv2", **parse_set(["weighting.tau=1"])})
    with pytest.raises(ConfigError, match="--set weighted: SAC's actor loss can be negative"):
        build_config("mt10_cpu", {"weighting": "igbv1", "weighted": "critic,actor"})
    cfg = build_config("mt10_cpu", {"weighting": "rlw", "weighted": "actor", **parse_set(["weighting.space=linear"])})
    assert cfg.weighted == "actor"


def test_cli_imgrad_with_igbv2_on_mt10_logs_lambda_and_resumes(tmp_path: Path) -> None:
    """A short MT10 run as a user types it; λ per task reaches TensorBoard, the weighting state survives resume."""
    run = tmp_path / "run"
    base = ["--env", "mt10", "--config", "mt10_cpu", "--method", "imgrad", "--weighting", "igbv2",
            "--logdir", str(run), "--set", "batch_size=20", "--set", "eval_every=0", "--set", "checkpoint_every=30",
            "--set", "weighting.hold=5", "--set", "weighting.warmup=2", "--set", "weighting.batch_size=4", *TINY]
    assert main([*base, "--steps", "40"]) == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    saved = state["combined"]["critic"]["weighting"]
    assert saved["name"] == "igbv2" and saved["calls"] == 30 and saved["meta"]["steps"] >= 5
    assert state["combined"]["actor"]["weighting"] is None  # the critic is weighted by default
    assert main(["--logdir", str(run), "--resume", "--steps", "60", "--no-progress"]) == 0
    tags = tb_scalars(run)
    for tag in ("weighting/lambda/reach-v3", "weighting/lambda/window-close-v3", "weighting/meta_reward",
                "weighting/meta_critic_loss", "weighting/meta_actor_loss", "weighting/meta_alpha",
                "weighting/fallbacks", "weighting/meta_updates", "weighting/meta_policy_std",
                "weighting/grad_factor/reach-v3", "weighting/greedy_lambda/reach-v3", "weighting/p_entropy",
                "weighting/lambda_min", "weighting/lambda_max", "combiner/critic/direction_share/reach-v3"):
        assert tag in tags, tag
    lam = [v for s, v in tags["weighting/lambda/reach-v3"]]
    assert all(math.isfinite(v) and v >= 0.3 - 1e-6 for v in lam)
    assert json.loads((run / "summary.json").read_text())["final_step"] == 60
