"""Tests of the multi-task SAC: replay layout, networks, and the per-task losses against plain SAC."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

from rl_mtl.agents import MTSAC, Actor, Batch, MultiTaskReplay, SACConfig, TwinCritic
from rl_mtl.agents.mtsac import TaskLoss

K, N_PER, OBS, ACT = 3, 8, 5, 2
HIDDEN = (32, 32)


def make_agent(seed: int = 0, **overrides: object) -> MTSAC:
    torch.manual_seed(seed)
    cfg = SACConfig(hidden_sizes=HIDDEN, **overrides)
    return MTSAC(OBS, ACT, K, cfg)


def make_batch(seed: int = 0, terminated: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(K, N_PER, OBS, generator=g),
        action=torch.rand(K, N_PER, ACT, generator=g) * 2 - 1,
        reward=torch.rand(K, N_PER, generator=g),
        next_obs=torch.randn(K, N_PER, OBS, generator=g),
        terminated=torch.full((K, N_PER), float(terminated)),
        task=torch.arange(K)[:, None].expand(K, N_PER).contiguous(),
    )


def fill(replay: MultiTaskReplay, steps: int, terminated: bool = False) -> None:
    for t in range(steps):
        obs = np.stack([np.full(OBS, 100 * k + t, dtype=np.float32) for k in range(replay.num_tasks)])
        replay.add(obs, np.zeros((replay.num_tasks, ACT)), np.arange(replay.num_tasks) + t, obs + 1,
                   np.full(replay.num_tasks, terminated))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- replay
def test_replay_stratified_layout() -> None:
    rb = MultiTaskReplay(K, OBS, ACT, capacity_per_task=10, device="cpu", seed=0)
    fill(rb, 6)
    assert len(rb) == 6
    b = rb.sample(K * N_PER)
    assert b.obs.shape == (K, N_PER, OBS) and b.next_obs.shape == (K, N_PER, OBS)
    assert b.action.shape == (K, N_PER, ACT)
    assert b.reward.shape == b.terminated.shape == b.task.shape == (K, N_PER)
    assert b.terminated.dtype == torch.float32 and b.task.dtype == torch.long
    for k in range(K):
        assert torch.all(b.task[k] == k)
        assert torch.all((b.obs[k, :, 0] // 100) == k)  # every row of stratum k is task k's
    flat = b.flatten()
    assert flat.obs.shape == (K * N_PER, OBS) and flat.task.shape == (K * N_PER,)
    assert flat.obs.data_ptr() == b.obs.data_ptr()  # a view, no copy


def test_replay_ring_wraps() -> None:
    rb = MultiTaskReplay(K, OBS, ACT, capacity_per_task=4, device="cpu", seed=0)
    fill(rb, 7)
    assert len(rb) == 4
    stored = sorted(rb.obs[0, :, 0].tolist())
    assert stored == [3.0, 4.0, 5.0, 6.0]  # the three oldest were overwritten
    assert rb.memory_bytes == 4 * K * (2 * OBS + ACT + 1) * 4 + 4 * K


def test_replay_deterministic_and_state_round_trip() -> None:
    a = MultiTaskReplay(K, OBS, ACT, 16, "cpu", seed=3)
    b = MultiTaskReplay(K, OBS, ACT, 16, "cpu", seed=3)
    fill(a, 9)
    fill(b, 9)
    assert torch.equal(a.sample(12).obs, b.sample(12).obs)
    state = a.state_dict(include_data=True)
    expected = a.sample(12)
    c = MultiTaskReplay(K, OBS, ACT, 16, "cpu", seed=99)
    c.load_state_dict(state)
    got = c.sample(12)
    assert len(c) == 9 and torch.equal(got.obs, expected.obs) and torch.equal(got.reward, expected.reward)
    d = MultiTaskReplay(K, OBS, ACT, 16, "cpu", seed=99)
    d.load_state_dict(a.state_dict(include_data=False))
    assert len(d) == 0 and "data" not in a.state_dict()


def test_replay_truncation_is_not_termination() -> None:
    rb = MultiTaskReplay(K, OBS, ACT, 4, "cpu", seed=0)
    fill(rb, 4, terminated=False)  # a time-limit truncation is added as terminated=False
    b = rb.sample(K * 2)
    assert torch.all(b.terminated == 0.0)
    agent = make_agent()
    bootstrapped = agent.critic_targets(make_batch(terminated=False), torch.zeros(K, N_PER, ACT))
    cut = agent.critic_targets(make_batch(terminated=True), torch.zeros(K, N_PER, ACT))
    assert torch.allclose(cut, make_batch().reward)
    assert not torch.allclose(bootstrapped, cut)


@pytest.mark.parametrize("batch_size", [0, -3, 4, 7])
def test_replay_bad_batch_size(batch_size: int) -> None:
    rb = MultiTaskReplay(K, OBS, ACT, 4, "cpu", seed=0)
    fill(rb, 2)
    with pytest.raises(ValueError, match=r"batch_size.*K=3"):
        rb.sample(batch_size)


# ---------------------------------------------------------------------------------------------- networks
def test_actor_log_prob_matches_change_of_variables() -> None:
    torch.manual_seed(0)
    actor = Actor(OBS, ACT, K, HIDDEN).double()
    obs = torch.randn(K, N_PER, OBS, dtype=torch.float64)
    task = torch.arange(K)[:, None].expand(K, N_PER)
    noise = torch.randn(K, N_PER, ACT, dtype=torch.float64)
    action, log_prob, mean_action = actor(obs, task, noise)
    mean, log_std = actor.gaussian(obs, task)
    assert log_std.min() >= -20.0 and log_std.max() <= 2.0
    u = mean + log_std.exp() * noise
    density = torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2)
    assert torch.allclose(log_prob, density.sum(-1), atol=1e-9)
    assert torch.allclose(action, torch.tanh(u)) and torch.allclose(mean_action, torch.tanh(mean))
    # the stable form stays finite where 1 − tanh² underflows
    big = actor(obs, task, torch.full_like(noise, 1e4))[1]
    assert torch.isfinite(big).all()


@pytest.mark.parametrize("arch", ["shared", "multihead"])
def test_networks_accept_both_layouts(arch: str) -> None:
    torch.manual_seed(0)
    actor, critic = Actor(OBS, ACT, K, HIDDEN, arch), TwinCritic(OBS, ACT, K, HIDDEN, arch)
    b = make_batch()
    noise = torch.randn(K, N_PER, ACT)
    a3, lp3, _ = actor(b.obs, b.task, noise)
    a2, lp2, _ = actor(b.obs.reshape(-1, OBS), b.task.reshape(-1), noise.reshape(-1, ACT))
    assert a3.shape == (K, N_PER, ACT) and lp3.shape == (K, N_PER)
    assert torch.allclose(a3.reshape(-1, ACT), a2, atol=1e-6) and torch.allclose(lp3.reshape(-1), lp2, atol=1e-5)
    q1, q2 = critic(b.obs, b.action, b.task)
    q1f, _ = critic(b.obs.flatten(0, 1), b.action.flatten(0, 1), b.task.flatten(0, 1))
    assert q1.shape == q2.shape == (K, N_PER) and torch.allclose(q1.reshape(-1), q1f, atol=1e-6)


def test_multihead_task_output_depends_only_on_its_head() -> None:
    torch.manual_seed(0)
    critic = TwinCritic(OBS, ACT, K, HIDDEN, "multihead")
    b = make_batch()
    before = critic(b.obs, b.action, b.task)[0]
    with torch.no_grad():
        critic.q1.head.weight[1].add_(1.0)
        critic.q1.head.bias[1].add_(1.0)
    after = critic(b.obs, b.action, b.task)[0]
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.allclose(before[1], after[1])


# ---------------------------------------------------------------------------------------------- losses
def plain_critic_loss(agent: MTSAC, flat: Batch, noise: torch.Tensor) -> torch.Tensor:
    """CleanRL-style single-task critic loss on a flat batch with α = 1."""
    with torch.no_grad():
        next_a, next_lp, _ = agent.actor(flat.next_obs, flat.task, noise)
        tq1, tq2 = agent.critic_target(flat.next_obs, next_a, flat.task)
        y = flat.reward + agent.cfg.gamma * (1 - flat.terminated) * (torch.min(tq1, tq2) - 1.0 * next_lp)
    q1, q2 = agent.critic(flat.obs, flat.action, flat.task)
    return torch.nn.functional.mse_loss(q1, y) + torch.nn.functional.mse_loss(q2, y)


def plain_actor_loss(agent: MTSAC, flat: Batch, noise: torch.Tensor) -> torch.Tensor:
    a, lp, _ = agent.actor(flat.obs, flat.task, noise)
    q1, q2 = agent.critic(flat.obs, a, flat.task)
    return (1.0 * lp - torch.min(q1, q2)).mean()


@pytest.mark.parametrize("arch", ["shared", "multihead"])
def test_per_task_losses_reduce_to_plain_sac(arch: str) -> None:
    # float64 so that 1e-6 is a statement about the maths, not about float32 rounding of losses ~1e2
    agent = make_agent(arch=arch).double()
    b = make_batch()
    terminated = (torch.rand(K, N_PER) < 0.3).double()
    b = Batch(b.obs.double(), b.action.double(), b.reward.double(), b.next_obs.double(), terminated, b.task)
    noise = torch.randn(K, N_PER, ACT, dtype=torch.float64)
    per_task = agent.critic_losses(b, noise=noise)
    assert per_task.shape == (K,)
    plain = plain_critic_loss(agent, b.flatten(), noise.flatten(0, 1))
    assert torch.allclose(per_task.mean(), plain, atol=1e-6, rtol=0)
    actor_per_task = agent.actor_losses(b, noise=noise)
    assert actor_per_task.shape == (K,)
    assert torch.allclose(actor_per_task.mean(), plain_actor_loss(agent, b.flatten(), noise.flatten(0, 1)),
                          atol=1e-6, rtol=0)


def test_actor_loss_leaves_critic_without_gradient() -> None:
    agent = make_agent()
    agent.actor_losses(make_batch()).mean().backward()
    assert all(p.grad is None for p in agent.critic.parameters())
    assert all(p.grad is not None for p in agent.actor.parameters())


def test_alpha_losses_are_per_task() -> None:
    agent = make_agent()
    log_prob = torch.randn(K, N_PER)
    losses = agent.alpha_losses(log_prob)
    for k in range(K):
        (g,) = torch.autograd.grad(losses[k], agent.log_alpha, retain_graph=True)
        assert g[k] != 0 and torch.count_nonzero(g) == 1
    shared = make_agent(shared_alpha=True)
    assert shared.log_alpha.shape == (1,) and shared.alpha.shape == (K,)
    shared.update(make_batch())
    assert shared.log_alpha.shape == (1,) and torch.all(shared.alpha == shared.alpha[0])


# ---------------------------------------------------------------------------------------------- the update
def test_update_changes_all_parameters_and_reports_metrics() -> None:
    agent = make_agent()
    actor0, critic0, alpha0 = snapshot(agent.actor), snapshot(agent.critic), agent.log_alpha.detach().clone()
    metrics = agent.update(make_batch())
    assert not same(actor0, snapshot(agent.actor)) and not same(critic0, snapshot(agent.critic))
    assert not torch.equal(alpha0, agent.log_alpha.detach())
    for key in ("loss/critic", "loss/actor", "loss/alpha", "alpha", "q_mean", "entropy"):
        assert metrics[key].shape == (K,) and not metrics[key].requires_grad
    assert float(metrics["skipped_steps"]) == 0 and agent.num_updates == 1


def test_critic_and_actor_steps_touch_only_their_parameters() -> None:
    agent = make_agent()
    b = make_batch()
    actor0, critic0 = snapshot(agent.actor), snapshot(agent.critic)
    agent._step("critic", TaskLoss(dict(agent.critic.named_parameters()),
                                   lambda: (agent.critic_losses(b), torch.zeros(K))), agent.critic_optimizer)
    assert same(actor0, snapshot(agent.actor)) and not same(critic0, snapshot(agent.critic))
    critic1 = snapshot(agent.critic)
    agent.critic_optimizer.zero_grad(set_to_none=True)
    agent._step("actor", TaskLoss(dict(agent.actor.named_parameters()),
                                  lambda: (agent.actor_losses(b), torch.zeros(K))), agent.actor_optimizer)
    assert same(critic1, snapshot(agent.critic)) and not same(actor0, snapshot(agent.actor))
    assert all(p.grad is None for p in agent.critic.parameters())


def test_target_moves_by_tau() -> None:
    agent = make_agent(tau=0.1)
    target0 = snapshot(agent.critic_target)
    agent.update(make_batch())
    critic = snapshot(agent.critic)
    for k, old in target0.items():
        assert torch.allclose(agent.critic_target.state_dict()[k], old + 0.1 * (critic[k] - old), atol=1e-7)
    assert all(not p.requires_grad for p in agent.critic_target.parameters())


def test_update_every_counters() -> None:
    agent = make_agent(actor_update_every=2, target_update_every=3)
    keys = [set(agent.update(make_batch(i))) for i in range(4)]
    assert "loss/actor" in keys[0] and "loss/actor" not in keys[1] and "loss/actor" in keys[2]
    assert agent.num_updates == 4


def test_same_seed_same_losses() -> None:
    def run() -> list[torch.Tensor]:
        agent = make_agent(seed=7)
        rb = MultiTaskReplay(K, OBS, ACT, 32, "cpu", seed=7)
        g = np.random.default_rng(7)
        for _ in range(32):
            rb.add(g.normal(size=(K, OBS)), g.uniform(-1, 1, (K, ACT)), g.normal(size=K), g.normal(size=(K, OBS)),
                   g.uniform(size=K) < 0.1)
        torch.manual_seed(7)
        return [agent.update(rb.sample(K * N_PER))["loss/critic"] for _ in range(20)]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_nan_reward_skips_critic_step() -> None:
    agent = make_agent()
    b = make_batch()
    reward = b.reward.clone()
    reward[1, 2] = float("nan")
    critic0, opt0 = snapshot(agent.critic), agent.critic_optimizer.state_dict()
    metrics = agent.update(Batch(b.obs, b.action, reward, b.next_obs, b.terminated, b.task))
    assert same(critic0, snapshot(agent.critic))
    assert agent.critic_optimizer.state_dict()["state"] == opt0["state"] == {}
    assert agent.skipped_steps == 1 and float(metrics["skipped_steps"]) == 1.0
    assert all(torch.isfinite(p).all() for p in agent.parameters())


def test_grad_clip_runs() -> None:
    agent = make_agent(grad_clip=0.5)
    agent.update(make_batch())
    assert agent.skipped_steps == 0


def test_full_state_round_trip() -> None:
    agent = make_agent(seed=1)
    agent.update(make_batch())
    buffer = io.BytesIO()
    torch.save(agent.full_state_dict(), buffer)
    buffer.seek(0)
    other = make_agent(seed=2)
    other.load_full_state_dict(torch.load(buffer, weights_only=True))
    assert same(snapshot(agent), snapshot(other)) and other.num_updates == 1
    torch.manual_seed(5)
    m1 = agent.update(make_batch(1))
    torch.manual_seed(5)
    m2 = other.update(make_batch(1))
    assert torch.equal(m1["loss/actor"], m2["loss/actor"]) and same(snapshot(agent), snapshot(other))
    third = make_agent(seed=3)
    third.load_full_state_dict(agent.full_state_dict())  # in memory: the optimiser state must not be shared

    def first_exp_avg(a: MTSAC) -> torch.Tensor:
        return next(iter(a.critic_optimizer.state.values()))["exp_avg"]

    assert first_exp_avg(third).data_ptr() != first_exp_avg(agent).data_ptr()


def test_act_shapes_and_determinism() -> None:
    agent = make_agent(arch="multihead")
    obs, task = np.random.default_rng(0).normal(size=(4, OBS)), np.array([0, 1, 2, 0])
    a = agent.act(obs, task, deterministic=True)
    assert a.shape == (4, ACT) and isinstance(a, np.ndarray) and np.all(np.abs(a) < 1)
    assert np.array_equal(a, agent.act(obs, task, deterministic=True))


def test_reducer_is_the_single_seam() -> None:
    agent = make_agent()
    seen: list[tuple[int, ...]] = []

    def recording(task_loss: TaskLoss) -> tuple[torch.Tensor, torch.Tensor]:
        losses, aux = task_loss.batched()
        seen.append(tuple(losses.shape))
        # the functional form gives the same per-task losses as the batched one
        redo = torch.stack([task_loss.fn({k: v.detach() for k, v in task_loss.params.items()},
                                         *(x[i] for x in task_loss.inputs))[0] for i in range(K)])
        torch.testing.assert_close(redo, losses.detach(), rtol=1e-5, atol=1e-5)
        losses.sum().backward(inputs=list(task_loss.params.values()))
        return losses.detach(), aux.detach()

    agent.reducers["critic"] = recording
    agent.reducers["actor"] = recording
    agent.update(make_batch())
    assert seen == [(K,), (K,)]


@pytest.mark.parametrize(
    ("field", "value"),
    [("gamma", 1.0), ("tau", 0.0), ("arch", "moe"), ("hidden_sizes", ()), ("actor_lr", -1.0),
     ("init_alpha", 0.0), ("log_std_max", -30.0), ("actor_update_every", 0), ("grad_clip", -1.0)],
)
def test_config_validation_names_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SACConfig(**{field: value})


# ---------------------------------------------------------------------------------------------- torch.func
@pytest.mark.parametrize("arch", ["shared", "multihead"])
def test_vmap_grad_over_tasks(arch: str) -> None:
    agent = make_agent(arch=arch)
    b = make_batch()
    noise = torch.randn(K, N_PER, ACT)
    target = agent.critic_targets(b, noise)
    params = {k: v.detach() for k, v in agent.critic.named_parameters()}

    def task_critic_loss(
        p: dict[str, torch.Tensor], obs: torch.Tensor, action: torch.Tensor, task: torch.Tensor, tgt: torch.Tensor
    ) -> torch.Tensor:
        return agent.critic_loss_fn(obs, action, task, tgt, params=p)[0]

    per_task = vmap(grad(task_critic_loss), in_dims=(None, 0, 0, 0, 0))(params, b.obs, b.action, b.task, target)
    losses = agent.critic_losses(b, target=target)
    for k in range(K):
        ref = torch.autograd.grad(losses[k], list(agent.critic.parameters()), retain_graph=True)
        for (name, g), r in zip(per_task.items(), ref):
            assert g.shape == (K, *r.shape)
            assert torch.allclose(g[k], r, atol=1e-6), name

    actor_params = {k: v.detach() for k, v in agent.actor.named_parameters()}
    alpha = agent.alpha.detach()

    def task_actor_loss(
        p: dict[str, torch.Tensor], obs: torch.Tensor, task: torch.Tensor, a: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        return agent.actor_loss_fn(obs, task, a, eps, params=p)[0]

    actor_grads = vmap(grad(task_actor_loss), in_dims=(None, 0, 0, 0, 0))(actor_params, b.obs, b.task, alpha, noise)
    mean_grad = torch.autograd.grad(agent.actor_losses(b, noise).mean(), list(agent.actor.parameters()))
    for g, r in zip(actor_grads.values(), mean_grad):
        assert torch.allclose(g.mean(0), r, atol=1e-6)
    assert math.isfinite(float(sum(g.abs().sum() for g in actor_grads.values())))
