"""Rollouts in worker processes (``envs/rollout.py``) and the overlapped training loop: identical transitions and
evaluations to the in-process env, balance, worker faults (death, hang, env error), clean shutdown, the one step of
data staleness, the acting policy's CPU copy, the step transfer, and ``--rollout async`` runs from the CLI."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from metaworld.policies import ENV_POLICY_MAP

from rl_mtl.agents.networks import Actor
from rl_mtl.envs.metaworld import MultiTaskVectorEnv, StepResult, TaskFactories, build_vector_env, env_factories
from rl_mtl.envs.rollout import AsyncCollector, WorkerError, makespan, plan_shards
from rl_mtl.acting import ActingPolicy
from rl_mtl.config import build_config
from rl_mtl.evaluate import evaluate_detailed
from rl_mtl.train import main
from rl_mtl.trainer import Trainer
from rl_mtl.transfer import StepTransfer

ROOT = Path(__file__).resolve().parent.parent
STEPS = 50  # episode length of the MT10 envs here: short enough to see autoresets, long enough for successes
FIELDS = [f for f in StepResult.__dataclass_fields__ if f != "lost"]
TINY = ["--config", "mt10_cpu", "--env", "mt1:reach-v3", "--set", "hidden_sizes=16,16", "--set", "batch_size=16",
        "--set", "warmup_steps=10", "--set", "eval_episodes=1", "--set", "max_episode_steps=20",
        "--set", "log_every=10", "--set", "torch_threads=1", "--no-progress"]
#: the scripted policies warn that their gains exceed the action bounds (the env clips): noise here
pytestmark = pytest.mark.filterwarnings("ignore:Constant.*too high:UserWarning")


@pytest.fixture(scope="module")
def mt10() -> TaskFactories:
    """MT10's builders with short episodes (the goals are drawn once here, ~10 s)."""
    return env_factories("mt10", 0, max_episode_steps=STEPS)


@pytest.fixture(scope="module")
def sync_env(mt10: TaskFactories) -> Iterator[MultiTaskVectorEnv]:
    with build_vector_env(mt10) as env:
        yield env


@pytest.fixture(scope="module")
def collector(mt10: TaskFactories) -> Iterator[AsyncCollector]:
    """Three workers over the ten tasks (uneven shares on purpose)."""
    with AsyncCollector(mt10, 3) as env:
        yield env


def _actions(seed: int, steps: int, k: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (steps, k, 4)).astype(np.float32)


def _assert_same_step(a: StepResult, b: StepResult, rows: np.ndarray | slice = slice(None)) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name)[rows], getattr(b, name)[rows], err_msg=name)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], seconds: float = 15.0) -> list[int]:
    """The pids still alive after waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


# ---------------------------------------------------------------------------------------------------------------
# identical results
def test_plan_shards_balances_measured_costs() -> None:
    costs = [0.5, 0.9, 0.9, 0.5, 0.3, 0.3, 0.3, 0.6, 0.3, 0.3]  # ms per step of the MT10 tasks on this CPU
    for workers in (1, 2, 3, 10):
        shards = plan_shards(costs, workers)
        assert sorted(i for s in shards for i in s) == list(range(10)) and all(shards)
        assert makespan(shards, costs) <= sum(costs) / workers + max(costs)
    assert plan_shards(costs, 2) == plan_shards(costs, 2)
    contiguous = [list(range(5)), list(range(5, 10))]
    assert makespan(plan_shards(costs, 2), costs) < 0.85 * makespan(contiguous, costs)
    with pytest.raises(ValueError, match="workers"):
        plan_shards(costs, 11)


def test_async_matches_sync_transitions(sync_env: MultiTaskVectorEnv, collector: AsyncCollector) -> None:
    """Same seed and actions → the same transitions, across autoresets, masked resets, unseeded resets."""
    assert (collector.task_names, collector.obs_dim, collector.action_dim) == (
        sync_env.task_names, sync_env.obs_dim, sync_env.action_dim)
    np.testing.assert_array_equal(collector.reset(seed=3), sync_env.reset(seed=3))
    assert not np.allclose(collector.step_costs_ms(), 1.0), "the first seeded reset measures the step costs"
    for act in _actions(0, 2 * STEPS + 2):
        collector.step_async(act)
        expected = sync_env.step(act)
        result = collector.step_wait()
        assert result.lost is None
        _assert_same_step(result, expected)
    mask = np.zeros(10, dtype=bool)
    mask[[1, 6, 8]] = True
    np.testing.assert_array_equal(collector.reset_tasks(mask), sync_env.reset_tasks(mask))
    np.testing.assert_array_equal(collector.reset(), sync_env.reset())
    _assert_same_step(collector.step(_actions(1, 1)[0]), sync_env.step(_actions(1, 1)[0]))
    # goal RNG snapshots travel between the two kinds of env
    state = sync_env.rng_state()
    collector.set_rng_state(state)
    np.testing.assert_array_equal(collector.reset(), sync_env.reset())


def test_moving_envs_between_workers_changes_nothing(sync_env: MultiTaskVectorEnv, collector: AsyncCollector) -> None:
    before = collector.shares()
    moved = [[0, 1, 2, 3, 4, 5, 6, 7], [8], [9]]
    collector.rebalance(moved)
    assert collector.shares() == moved
    np.testing.assert_array_equal(collector.reset(seed=11), sync_env.reset(seed=11))
    for act in _actions(2, STEPS + 1):
        _assert_same_step(collector.step(act), sync_env.step(act))
    collector.rebalance(before)
    with pytest.raises(ValueError, match="split the 10 env ids"):
        collector.rebalance([[0, 1], [2], [3]])


class _Expert:
    """Meta-World's scripted policies, row k = task k: many episodes succeed and are cut early."""

    def __init__(self, names: list[str]) -> None:
        self.policies = [ENV_POLICY_MAP[n]() for n in names]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.stack([p.get_action(o[:39]) for p, o in zip(self.policies, obs, strict=True)])


def test_evaluation_identical_sync_and_async(sync_env: MultiTaskVectorEnv, collector: AsyncCollector) -> None:
    """The evaluator on the collector: the same per-task numbers, and the training goal sequence is restored."""
    policy = _Expert(sync_env.task_names)
    sync_env.reset(seed=5)
    collector.reset(seed=5)
    a = evaluate_detailed(policy, env=sync_env, episodes=2, seed=1)
    b = evaluate_detailed(policy, env=collector, episodes=2, seed=1)
    assert a == b and 0.0 < a.success_rate["mean"] < 1.0
    np.testing.assert_array_equal(collector.reset(), sync_env.reset())


# ---------------------------------------------------------------------------------------------------------------
# faults and shutdown
def test_killed_worker_is_restarted_then_the_limit_stops(mt10: TaskFactories, sync_env: MultiTaskVectorEnv,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    env = AsyncCollector(mt10, 2, max_restarts=1)
    try:
        sync_env.reset(seed=4)
        env.reset(seed=4)
        acts = _actions(3, 3)
        _assert_same_step(env.step(acts[0]), sync_env.step(acts[0]))
        victim = env._workers[1]
        ids, pid = np.array(victim.ids), victim.process.pid
        os.kill(pid, signal.SIGKILL)
        with caplog.at_level("WARNING", logger="rl_mtl.envs.rollout"):
            result = env.step(acts[1])
        expected = sync_env.step(acts[1])
        others = np.setdiff1d(np.arange(10), ids)
        assert result.lost is not None and result.lost[ids].all() and not result.lost[others].any()
        _assert_same_step(result, expected, others)  # the other worker's tasks are untouched
        assert result.done[ids].all() and np.isnan(result.episode_return[ids]).all()
        assert env.restarts == 1 and not _alive(pid)
        names = ", ".join(env.task_names[i] for i in ids)
        assert f"rollout worker 1 (pid {pid}; tasks {names}) died with exit code -9 during step" in caplog.text
        assert env.step(acts[2]).lost is None  # the restarted worker steps on
        # a second death is past max_restarts=1: a clear error, and every worker is shut down
        pids = [w.process.pid for w in env._workers]
        os.kill(env._workers[0].process.pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"rollout worker 0 \(pid \d+; tasks reach-v3.*\) died with exit "
                                              r"code -9 during step; not restarted: the 1 restart\(s\) allowed"):
            env.step(acts[0])
        assert _wait_gone(pids) == []
        with pytest.raises(RuntimeError, match="closed"):
            env.reset()
    finally:
        env.close()


def test_hung_worker_times_out_and_is_replaced(mt10: TaskFactories) -> None:
    env = AsyncCollector(mt10, 2, step_timeout_s=4.0)
    try:
        env.reset(seed=0)
        victim = env._workers[0]
        pid = victim.process.pid
        os.kill(pid, signal.SIGSTOP)  # alive but silent
        t0 = time.monotonic()
        result = env.step(_actions(0, 1)[0])
        assert time.monotonic() - t0 < 60
        assert result.lost is not None and result.lost[victim.ids].all() and env.restarts == 1
        assert _wait_gone([pid]) == [], "the hung worker is killed"
        assert env.step(_actions(1, 1)[0]).lost is None
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        env.close()


def test_env_error_is_named_and_collector_gc_stops_workers() -> None:
    env = AsyncCollector(env_factories("mt1:reach-v3", 0, max_episode_steps=10), 1)
    pids = [w.process.pid for w in env._workers]
    env.reset(seed=0)
    with pytest.raises(WorkerError, match=r"rollout worker 0 \(pid \d+; tasks reach-v3\) raised during "
                                          r"set_rng_state: ValueError: .*no checkpoint found"):
        env.set_rng_state([("bogus", {})])
    assert _wait_gone(pids) == []
    # a collector dropped without close() shuts its workers down too
    env = AsyncCollector(env_factories("mt1:reach-v3", 0, max_episode_steps=10), 1)
    pids = [w.process.pid for w in env._workers]
    del env
    gc.collect()
    assert _wait_gone(pids) == []


# ---------------------------------------------------------------------------------------------------------------
# the learner side: acting policy, transfers, staleness
def test_cpu_copy_acts_like_the_learner_and_lags_until_refreshed() -> None:
    torch.manual_seed(0)
    actor = Actor(12, 4, 3, (16, 16))
    obs = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
    learner, copy = ActingPolicy(actor, 3, 12, mode="learner"), ActingPolicy(actor, 3, 12, mode="cpu_copy")
    assert ActingPolicy(actor, 3, 12).mode == "learner", "a CPU learner acts with its own actor"
    torch.manual_seed(1)
    a = learner.act(obs)
    torch.manual_seed(1)
    np.testing.assert_array_equal(copy.act(obs), a)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.5)  # an update
    torch.manual_seed(1)
    np.testing.assert_array_equal(copy.act(obs), a)  # not refreshed yet: one update stale
    copy.refresh()
    torch.manual_seed(1)
    b = learner.act(obs)
    torch.manual_seed(1)
    np.testing.assert_array_equal(copy.act(obs), b)
    assert not np.array_equal(a, b)


def _transfer_round_trip(device: torch.device) -> None:
    rng = np.random.default_rng(0)
    k, d, a = 3, 5, 2
    transfer = StepTransfer(k, d, a, device)
    for _ in range(3):  # both pinned buffers, reused
        step = dict(obs=rng.normal(size=(k, d)).astype(np.float32), action=rng.normal(size=(k, a)).astype(np.float32),
                    reward=rng.normal(size=k).astype(np.float32), next_obs=rng.normal(size=(k, d)).astype(np.float32),
                    terminated=rng.uniform(size=k) < 0.5, act_obs=rng.normal(size=(k, d)).astype(np.float32))
        moved = transfer(**step)
        for name, value in step.items():
            tensor = getattr(moved, name)
            assert tensor.device.type == device.type
            np.testing.assert_array_equal(tensor.cpu().numpy(), value, err_msg=name)


def test_step_transfer_round_trip_cpu() -> None:
    _transfer_round_trip(torch.device("cpu"))


def _staleness(tmp_path: Path, rollout: str) -> list[tuple[int, int]]:
    """(loop step, transitions in the replay) at every update of a short run."""
    cfg = build_config("mt10_cpu", {"env": "mt1:reach-v3", "steps": 25, "warmup_steps": 10, "batch_size": 16,
                                    "hidden_sizes": [16, 16], "eval_every": 0, "eval_episodes": 1,
                                    "max_episode_steps": 20, "torch_threads": 1, "rollout": rollout,
                                    "workers": 1, "checkpoint_every": 0})
    trainer = Trainer(cfg, tmp_path / rollout, progress=False)
    seen: list[tuple[int, int]] = []
    update = trainer.agent.update

    def recording(batch):  # type: ignore[no-untyped-def]
        seen.append((trainer.step, len(trainer.replay)))
        return update(batch)

    trainer.agent.update = recording  # type: ignore[method-assign]
    trainer.run()
    return seen


def test_overlapped_update_lags_the_data_by_one_step(tmp_path: Path) -> None:
    """Serial: the update of loop step t sees transitions 0..t; overlapped: 0..t-1 (t is still being simulated)."""
    serial, overlapped = _staleness(tmp_path, "sync"), _staleness(tmp_path, "async")
    assert [s for s, _ in serial] == [s for s, _ in overlapped] == list(range(10, 25))
    assert all(n == s + 1 for s, n in serial)
    assert all(n == s for s, n in overlapped)


def test_run_stops_with_a_checkpoint_when_a_worker_cannot_be_restarted(tmp_path: Path) -> None:
    cfg = build_config("mt10_cpu", {"env": "mt1:reach-v3", "steps": 40, "warmup_steps": 5, "batch_size": 16,
                                    "hidden_sizes": [16, 16], "eval_every": 0, "eval_episodes": 1,
                                    "max_episode_steps": 20, "torch_threads": 1, "rollout": "async", "workers": 1})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert isinstance(trainer.env, AsyncCollector)
    trainer.env.max_restarts = 0
    pid = trainer.env._workers[0].process.pid
    update = trainer.agent.update

    def killing(batch):  # type: ignore[no-untyped-def]
        if trainer.step == 15:
            os.kill(pid, signal.SIGKILL)  # dies while stepping, during the overlapped update
        return update(batch)

    trainer.agent.update = killing  # type: ignore[method-assign]
    result = trainer.run()
    # the step in flight may have been answered before the kill: then the next one finds the worker dead
    assert result["failed"] and result["step"] in (15, 16)
    assert f"rollout worker 0 (pid {pid}; tasks reach-v3) died with exit code -9 during step" in result["error"]
    assert "--resume" in result["error"]
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert saved["step"] == result["step"]


# ---------------------------------------------------------------------------------------------------------------
# the command line
def test_cli_async_run_and_resume_sync(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main([*TINY, "--rollout", "async", "--workers", "1", "--device", "cpu", "--steps", "30",
                 "--logdir", str(run), "--set", "eval_every=20", "--set", "checkpoint_every=10"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_step"] == 30 and [h["step"] for h in summary["history"]] == [20, 30]
    assert "perf/worker_restarts" in (run / "metrics.csv").read_text()
    assert "rollout: async" in (run / "config.yaml").read_text()
    # the rollout is not part of a run's identity: resume it in process
    assert main(["--logdir", str(run), "--resume", "--steps", "40", "--rollout", "sync", "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["final_step"] == 40


@pytest.mark.parametrize(("args", "message"), [
    (["--rollout", "fast"], "--rollout: 'fast' is not one of sync, async"),
    (["--workers", "-1"], "--workers: must be an integer >= 0, got -1"),
    (["--rollout", "async", "--set", "vector_strategy=async"], "--rollout: async rollouts run their own worker"),
])
def test_bad_rollout_options_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                       message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([*TINY, *args, "--logdir", str(tmp_path / "run")])
    assert info.value.code == 2 and message in capsys.readouterr().err


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def test_ctrl_c_checkpoints_and_shuts_every_worker_down(tmp_path: Path) -> None:
    """Ctrl-C at a terminal signals the whole process group: workers ignore it, the learner checkpoints and
    closes them, nothing is left behind."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rl_mtl.train", *TINY, "--rollout", "async", "--workers", "1", "--steps", "100000",
           "--logdir", str(run), "--set", "eval_every=0", "--set", "checkpoint_every=0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        metrics, deadline = run / "metrics.csv", time.time() + 240
        while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 2000):
            time.sleep(0.5)
        workers = _descendants(proc.pid)
        assert workers, "the run's worker process"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in out + err
    assert (run / "checkpoints" / "last.pt").is_file()
    assert _wait_gone(workers) == []


# ---------------------------------------------------------------------------------------------------------------
# CUDA (skipped without it)
def _cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") != ""


@pytest.mark.skipif(not _cuda(), reason="no CUDA on this machine")
def test_cuda_transfer_acting_and_async_run(tmp_path: Path) -> None:
    _transfer_round_trip(torch.device("cuda"))
    torch.manual_seed(0)
    actor = Actor(12, 4, 3, (16, 16)).cuda()
    auto = ActingPolicy(actor, 3, 12)
    assert auto.mode in ("learner", "cpu_copy")
    copy = ActingPolicy(actor, 3, 12, mode="cpu_copy")
    obs = np.zeros((3, 12), dtype=np.float32)
    assert copy.act(obs).shape == (3, 4) and auto.act(obs).shape == (3, 4)
    assert main([*TINY, "--rollout", "async", "--workers", "1", "--device", "cuda", "--steps", "30",
                 "--logdir", str(tmp_path / "run"), "--set", "eval_every=0"]) == 0
