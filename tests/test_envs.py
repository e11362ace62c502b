"""Meta-World env builders: shapes, task order, one-hot, same-step autoreset, episode statistics, determinism."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from metaworld.policies import ENV_POLICY_MAP

from rl_mtl.envs import MultiTaskVectorEnv, StepResult, make_env, parse_env_name

MT10_TASKS = [
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
]
STEPS = 5
#: the scripted policies warn that their gains exceed the action bounds (the env clips): noise here
pytestmark = pytest.mark.filterwarnings("ignore:Constant.*too high:UserWarning")


@pytest.fixture(scope="module")
def mt10() -> Iterator[MultiTaskVectorEnv]:
    """MT10 with one-hot and 5-step episodes, shared by the module (a build costs ~10 s)."""
    with make_env("mt10", 0, max_episode_steps=STEPS) as env:
        yield env


def _random_actions(seed: int, steps: int, k: int) -> np.ndarray:
    """(steps, k, 4) uniform actions in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(steps, k, 4)).astype(np.float32)


def test_mt10_shapes_and_task_order(mt10: MultiTaskVectorEnv) -> None:
    assert mt10.num_tasks == 10
    assert mt10.task_names == MT10_TASKS
    assert (mt10.obs_dim, mt10.action_dim) == (49, 4)
    np.testing.assert_array_equal(mt10.action_low, -np.ones(4))
    np.testing.assert_array_equal(mt10.action_high, np.ones(4))
    obs = mt10.reset(seed=0)
    assert obs.shape == (10, 49) and obs.dtype == np.float32


def test_one_hot_rows(mt10: MultiTaskVectorEnv) -> None:
    obs = mt10.reset(seed=0)
    np.testing.assert_array_equal(obs[:, 39:], np.eye(10, dtype=np.float32))
    result = mt10.step(np.zeros((10, 4), dtype=np.float32))
    np.testing.assert_array_equal(result.obs[:, 39:], np.eye(10, dtype=np.float32))


def test_truncation_is_not_termination_and_next_obs_is_true_final(mt10: MultiTaskVectorEnv) -> None:
    actions = _random_actions(1, STEPS, 10)
    prev = mt10.reset(seed=3)
    rewards = np.zeros(10)
    for t in range(STEPS):
        result = mt10.step(actions[t])
        rewards += result.reward.astype(np.float64)
        # Meta-World stacks the previous frame in obs[18:36]: the successor must continue the previous obs
        np.testing.assert_allclose(result.next_obs[:, 18:36], prev[:, :18], atol=1e-6)
        if t < STEPS - 1:
            assert not result.done.any()
            np.testing.assert_array_equal(result.next_obs, result.obs)
            assert np.isnan(result.episode_return).all() and (result.episode_length == -1).all()
        prev = result.obs
    assert result.truncated.all() and not result.terminated.any() and result.done.all()
    # obs is already the reset obs of the next episode (frame stack reset), next_obs the true last one
    np.testing.assert_array_equal(result.obs[:, 18:36], result.obs[:, :18])
    assert np.abs(result.next_obs - result.obs).max(axis=1).min() > 0
    assert (result.episode_length == STEPS).all()
    np.testing.assert_allclose(result.episode_return, rewards, rtol=1e-5)
    assert result.reward.dtype == np.float32
    # the next episode's statistics start from zero
    nxt = mt10.step(actions[0])
    assert (nxt.episode_length == -1).all()


def test_no_one_hot_and_same_seed_same_trajectory(mt10: MultiTaskVectorEnv) -> None:
    actions = _random_actions(2, 2 * STEPS + 1, 10)
    with make_env("mt10", 0, max_episode_steps=STEPS, one_hot=False) as plain:
        assert plain.obs_dim == 39 and plain.task_names == MT10_TASKS
        a = [plain.reset(seed=7)[:, :39]]
        b = [mt10.reset(seed=7)[:, :39]]
        for act in actions:
            ra, rb = plain.step(act), mt10.step(act)
            assert ra.obs.shape == (10, 39)
            a += [ra.obs, ra.next_obs, ra.reward]
            b += [rb.obs[:, :39], rb.next_obs[:, :39], rb.reward]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # reseeding a used env replays it exactly (Meta-World ignores reset's seed; MultiTaskVectorEnv.reset reseeds)
    first = mt10.reset(seed=7)
    mt10.step(actions[0])
    np.testing.assert_array_equal(mt10.reset(seed=7), first)


def test_step_async_wait_and_clipping(mt10: MultiTaskVectorEnv) -> None:
    mt10.reset(seed=0)
    with pytest.raises(RuntimeError):
        mt10.step_wait()
    mt10.step_async(np.full((10, 4), 5.0, dtype=np.float32))
    with pytest.raises(RuntimeError):
        mt10.step_async(np.zeros((10, 4)))
    clipped = mt10.step_wait()
    mt10.reset(seed=0)
    ones = mt10.step(np.ones((10, 4), dtype=np.float32))
    np.testing.assert_array_equal(clipped.obs, ones.obs)
    with pytest.raises(ValueError):
        mt10.step(np.zeros((9, 4)))


def test_reset_tasks_resets_only_masked_rows(mt10: MultiTaskVectorEnv) -> None:
    mt10.reset(seed=0)
    obs = mt10.step(_random_actions(4, 1, 10)[0]).obs
    mask = np.zeros(10, dtype=bool)
    mask[[2, 5]] = True
    after = mt10.reset_tasks(mask)
    np.testing.assert_array_equal(after[~mask], obs[~mask])
    assert (np.abs(after[mask] - obs[mask]).max(axis=1) > 0).all()


def test_parse_env_name() -> None:
    assert parse_env_name("mt10") == ("mt10", None)
    assert parse_env_name("MT50") == ("mt50", None)
    assert parse_env_name("mt1:reach-v3") == ("mt1", "reach-v3")
    with pytest.raises(ValueError, match="mt10.*mt50.*mt1:<task>"):
        parse_env_name("mt11")
    with pytest.raises(ValueError, match="reach-v3.*window-close-v3|window-close-v3.*reach-v3"):
        make_env("mt1:reach-v2", 0)


def test_mt1_single_task() -> None:
    with make_env("mt1:reach-v3", 0, max_episode_steps=3) as env:
        assert env.num_tasks == 1 and env.task_names == ["reach-v3"] and env.obs_dim == 40
        obs = env.reset(seed=0)
        assert obs.shape == (1, 40) and obs[0, 39] == 1.0
    with make_env("mt1:reach-v3", 0, one_hot=False) as env:
        assert env.obs_dim == 39


def _expert_episode(env: MultiTaskVectorEnv, seed: int, steps: int) -> list[StepResult]:
    """Run reach-v3's scripted expert for one episode (at most ``steps`` steps); the step results."""
    policy = ENV_POLICY_MAP["reach-v3"]()
    obs = env.reset(seed=seed)
    results = []
    for _ in range(steps):
        result = env.step(policy.get_action(obs[0, :39])[None])
        results.append(result)
        if result.done[0]:
            break
        obs = result.obs
    return results


def test_success_read_on_terminating_step() -> None:
    """With terminate_on_success the success flag of the last step lives in final_info: it must be read."""
    with make_env("mt1:reach-v3", 0, terminate_on_success=True) as env:
        results = _expert_episode(env, seed=0, steps=500)
    last = results[-1]
    assert last.terminated[0] and not last.truncated[0] and last.success[0]
    assert last.episode_success[0] and last.episode_length[0] == len(results)
    assert not any(r.success[0] for r in results[:-1])


def test_success_read_on_truncating_step() -> None:
    """An expert that holds the goal succeeds on the truncating step too; episode success is success at any step."""
    with make_env("mt1:reach-v3", 0, max_episode_steps=150) as env:
        results = _expert_episode(env, seed=0, steps=150)
    assert len(results) == 150
    last = results[-1]
    assert last.truncated[0] and not last.terminated[0]
    assert last.success[0] and last.episode_success[0] and last.episode_length[0] == 150
    assert any(r.success[0] for r in results[:-1])


def test_fixed_goals_repeat_and_async_matches_sync() -> None:
    actions = _random_actions(5, 7, 1)
    with make_env("mt1:reach-v3", 0, max_episode_steps=3) as free:
        goals = {tuple(free.reset(seed=1)[0, 36:39])} | {tuple(free.reset()[0, 36:39]) for _ in range(3)}
    assert len(goals) > 1, "without fixed goals every reset draws a new goal"
    with make_env("mt1:reach-v3", 0, max_episode_steps=3, fixed_goals=True) as sync:
        first = sync.reset(seed=1)
        s = [first] + [sync.step(a).next_obs for a in actions]
    with make_env("mt1:reach-v3", 0, max_episode_steps=3, fixed_goals=True, vector_strategy="async") as env:
        a = [env.reset(seed=1)]
        resets = []
        for act in actions:
            env.step_async(act)
            result = env.step_wait()
            a.append(result.next_obs)
            if result.done[0]:
                resets.append(result.obs)
    for x, y in zip(s, a, strict=True):
        np.testing.assert_array_equal(x, y)
    # one goal per task: every episode restarts from the same obs
    assert len(resets) == 2
    for obs in resets:
        np.testing.assert_array_equal(obs, first)
