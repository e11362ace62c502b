"""Per-task gradients, the combined update inside multi-task SAC, and every method on real MT10 training."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from rl_mtl.agents import MTSAC, Batch, SACConfig, TaskLoss
from rl_mtl.combiners import make, names
from rl_mtl.config import METHODS, build_config, parse_set
from rl_mtl.pertask import gram, per_task_gradients, write_direction
from rl_mtl.routing import CombinedStep, build_steps
from rl_mtl.train import main

K, N, OBS, ACT = 4, 6, 11, 3


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    task = torch.arange(K)[:, None].expand(K, N)
    return Batch(obs=torch.randn(K, N, OBS, generator=g), action=torch.rand(K, N, ACT, generator=g) * 2 - 1,
                 reward=torch.rand(K, N, generator=g), next_obs=torch.randn(K, N, OBS, generator=g),
                 terminated=torch.zeros(K, N), task=task)


def make_agent(arch: str = "shared", seed: int = 0) -> MTSAC:
    torch.manual_seed(seed)
    return MTSAC(OBS, ACT, K, SACConfig(hidden_sizes=(16, 16), arch=arch), "cpu")


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def capture(agent: MTSAC, name: str) -> TaskLoss:
    """The TaskLoss the agent hands to its ``name`` reducer during one update."""
    seen: list[TaskLoss] = []
    original = agent.reducers[name]

    def spy(task_loss: TaskLoss) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(task_loss)
        return original(task_loss)

    agent.reducers[name] = spy
    agent.update(make_batch())
    agent.reducers[name] = original
    return seen[0]


@pytest.mark.parametrize("arch", ["shared", "multihead"])
@pytest.mark.parametrize("part", ["critic", "actor"])
def test_pertask_gradients_equal_k_backward_passes(arch: str, part: str) -> None:
    agent = make_agent(arch)
    task_loss = capture(agent, part)
    params = {k: v.detach() for k, v in task_loss.params.items()}
    G, losses, aux = per_task_gradients(task_loss.fn, params, task_loss.inputs)
    batched_losses, batched_aux = task_loss.batched()
    torch.testing.assert_close(losses, batched_losses.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aux, batched_aux.detach(), rtol=1e-5, atol=1e-5)
    assert G.shape == (K, sum(p.numel() for p in params.values()))
    for k in range(K):
        leaf = {name: p.clone().requires_grad_(True) for name, p in params.items()}
        loss_k = task_loss.fn(leaf, *(x[k] for x in task_loss.inputs))[0]
        grads = torch.autograd.grad(loss_k, list(leaf.values()), allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, leaf.values())])
        torch.testing.assert_close(G[k], flat, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(losses[k], loss_k.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gram(G), (G @ G.T).double())


def test_write_direction_of_mean_weights_equals_plain_gradient() -> None:
    agent = make_agent()
    task_loss = capture(agent, "critic")
    params = list(task_loss.params.values())
    G = per_task_gradients(task_loss.fn, {k: v.detach() for k, v in task_loss.params.items()}, task_loss.inputs)[0]
    plain = torch.autograd.grad(task_loss.batched()[0].mean(), params)
    write_direction(torch.full((K,), 1.0 / K), G, params)
    for p, g in zip(params, plain):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def mean_by_per_task_gradients(task_loss: TaskLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """d = (1/K) Σ_k g_k through the vmap path (the ``mean`` combiner itself needs no Gram)."""
    params = {k: v.detach() for k, v in task_loss.params.items()}
    G, losses, aux = per_task_gradients(task_loss.fn, params, task_loss.inputs)
    write_direction(torch.full((G.shape[0],), 1.0 / G.shape[0]), G, list(task_loss.params.values()))
    return losses, aux


@pytest.mark.parametrize("route", ["per_task_mean", "cagrad_c0"])
def test_combined_mean_update_equals_plain_update(route: str) -> None:
    """Weights 1/K through per-task gradients move the parameters exactly like plain MTSAC (to 1e-6)."""
    plain, combined = make_agent(), make_agent()
    for part in ("critic", "actor"):
        combined.reducers[part] = (mean_by_per_task_gradients if route == "per_task_mean"
                                   else CombinedStep(make("cagrad", c=0.0), diag_every=1))
    for seed in range(3):
        torch.manual_seed(100 + seed)
        plain.update(make_batch(seed))
        torch.manual_seed(100 + seed)
        combined.update(make_batch(seed))
    for a, b in zip(snapshot(plain), snapshot(combined)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", [n for n in names() if n != "mean"])
def test_combined_steps_touch_only_their_parameters(method: str) -> None:
    agent = make_agent()
    steps = build_steps(method, {}, "critic,actor", diag_every=1, seed=0)
    agent.reducers.update(steps)
    actor0, critic0 = snapshot(agent.actor), snapshot(agent.critic)
    b = make_batch()
    critic_inputs = (b.obs, b.action, b.task, agent.critic_targets(b))
    agent._step("critic", TaskLoss(dict(agent.critic.named_parameters()), lambda: agent.critic_loss_fn(*critic_inputs),
                                   agent._critic_task_loss, critic_inputs), agent.critic_optimizer)
    assert all(torch.equal(x, y) for x, y in zip(actor0, snapshot(agent.actor)))
    assert not all(torch.equal(x, y) for x, y in zip(critic0, snapshot(agent.critic)))
    critic1 = snapshot(agent.critic)
    agent.critic_optimizer.zero_grad(set_to_none=True)
    actor_inputs = (b.obs, b.task, agent.alpha.detach(), torch.randn_like(b.action))
    agent._step("actor", TaskLoss(dict(agent.actor.named_parameters()), lambda: agent.actor_loss_fn(*actor_inputs),
                                  agent._actor_task_loss, actor_inputs), agent.actor_optimizer)
    assert all(torch.equal(x, y) for x, y in zip(critic1, snapshot(agent.critic)))
    assert all(p.grad is None for p in agent.critic.parameters())
    scalars, vectors = steps["critic"].pop_stats()
    assert {"solver_ms", "fallback"} <= set(scalars) and vectors["progress"].shape == (K,)
    if make(method).needs_gram:
        assert {"imbalance_ratio", "cos_theta", "min_cos_dk", "pareto_failure_rate", "d_norm"} <= set(scalars)
        assert vectors["grad_norm"].shape == (K,) and vectors["weight"].shape == (K,)


def test_famo_logits_move_after_each_critic_step() -> None:
    agent = make_agent()
    agent.reducers.update(build_steps("famo", {}, "auto", diag_every=0, seed=0))
    famo = agent.reducers["critic"].combiner
    agent.update(make_batch(0))
    first = famo.logits.copy()
    agent.update(make_batch(1))
    assert first.shape == (K,) and not (famo.logits == first).all()
    assert agent.reducers["actor"].plain  # FAMO reweights only the critic, as in its reference


def test_nonfinite_gradient_never_corrupts_weights() -> None:
    agent = make_agent()
    agent.reducers.update(build_steps("imgrad", {}, "auto", diag_every=1, seed=0))
    before = snapshot(agent.critic)
    bad = make_batch()
    bad.reward[1, 2] = float("nan")
    agent.update(bad)
    assert all(torch.equal(x, y) for x, y in zip(before, snapshot(agent.critic)))
    assert agent.skipped_steps >= 1
    agent.update(make_batch(3))  # and training goes on
    assert not all(torch.equal(x, y) for x, y in zip(before, snapshot(agent.critic)))


def test_combined_step_state_roundtrip() -> None:
    agent = make_agent()
    steps = build_steps("nashmtl", {}, "auto", diag_every=1, seed=0)
    agent.reducers.update(steps)
    agent.update(make_batch())
    fresh = build_steps("nashmtl", {}, "auto", diag_every=1, seed=0)
    for part in steps:
        fresh[part].load_state_dict(copy.deepcopy(steps[part].state_dict()))
        assert fresh[part].calls == steps[part].calls
        assert str(fresh[part].combiner.state_dict()) == str(steps[part].combiner.state_dict())


def test_set_combiner_options_reach_the_combiner() -> None:
    cfg = build_config("mt10_cpu", {"method": "cagrad", **parse_set(["combiner.c=0.5", "combine=critic"])})
    steps = build_steps(cfg.method, cfg.combiner, cfg.combine, cfg.diag_every, cfg.seed)
    assert steps["critic"].combiner.c == 0.5 and steps["actor"].plain


# ---------------------------------------------------------------------- real MT10 training, every method
@pytest.fixture(scope="module")
def mt10_env():
    from rl_mtl.envs.metaworld import make_env

    env = make_env("mt10", seed=0, max_episode_steps=20)
    yield env
    env.close()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_mt10(method: str, mt10_env, tmp_path: Path) -> None:
    """A short real MT10 run per method (one shared env build): losses, diagnostics and evaluation logged."""
    from rl_mtl.trainer import Trainer

    cfg = build_config("mt10_cpu", {"method": method, **parse_set([
        "steps=24", "warmup_steps=8", "batch_size=20", "hidden_sizes=16,16", "eval_every=0", "eval_episodes=1",
        "max_episode_steps=20", "log_every=8", "diag_every=2", "checkpoint_every=0"])})
    trainer = Trainer(cfg, tmp_path / method, progress=False, env=mt10_env)
    result = trainer.run()
    assert 0.0 <= result["mean"] <= 1.0
    keys = (tmp_path / method / "metrics.csv").read_text()
    for key in ("loss/critic/mean", "loss/actor/mean", "progress/critic/reach-v3", "combiner/critic/imbalance_ratio",
                "combiner/critic/cos_theta", "combiner/critic/pareto_failure_rate", "combiner/actor/min_cos_dk",
                "combiner/critic/grad_norm/push-v3"):
        assert key in keys, key


@pytest.mark.parametrize("method", ["imgrad", "famo"])
def test_cli_method_run_and_resume_restores_combiner_state(method: str, tmp_path: Path) -> None:
    """From the CLI: a run with combiner options, then --resume restores the combiner's state (FAMO logits)."""
    run = tmp_path / method
    common = ["--env", "mt10", "--config", "mt10_cpu", "--method", method, "--logdir", str(run), "--no-progress",
              "--set", "batch_size=20", "--set", "hidden_sizes=16,16", "--set", "warmup_steps=5",
              "--set", "eval_every=0", "--set", "eval_episodes=1", "--set", "max_episode_steps=20",
              "--set", "log_every=5", "--set", "checkpoint_every=10", "--set", "torch_threads=1"]
    extra = ["--set", "combiner.c=0.5", "--set", "combiner.form=eqn9"] if method == "imgrad" else []
    assert main([*common, *extra, "--steps", "15"]) == 0
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert saved["config"]["combiner"] == ({"c": 0.5, "form": "eqn9"} if method == "imgrad" else {})
    state = saved["combined"]["critic"]
    assert state["calls"] == 10
    from rl_mtl.trainer import Trainer

    cfg = build_config(base=saved["config"])
    trainer = Trainer(cfg, run, resume=True, progress=False)
    try:
        restored = trainer.combined["critic"]
        assert restored.calls == 10
        assert str(restored.combiner.state_dict()) == str(state["combiner"])
        if method == "famo":
            assert any(abs(x) > 0 for x in restored.combiner.logits)
    finally:
        trainer.close()
