"""The rollout worker process (``envs/rollout.py`` drives it): a share of the tasks' envs, timed, answering requests.

A worker builds its envs from their picklable builders, steps them as a
:class:`~envs.metaworld.MultiTaskVectorEnv` over its share (seeded by benchmark id, so its rows equal the full
env's), times every env's step and reset for the balance, and answers ``(command, payload)`` requests with
``("ok", result)`` or ``("error", message)``.  It ignores SIGINT/SIGTERM (the learner decides when it stops) and
exits on ``close`` or when the learner's end of the pipe closes.
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np

from rl_mtl.envs.metaworld import MultiTaskVectorEnv


class TimedEnv(gym.Wrapper):
    """Adds up the wall time its env spends in ``step`` and ``reset`` (the env's share of a vector step)."""

    #: not part of the env's state: snapshots (``envs/env_state.py``) look through it, so a worker's env and an
    #: in-process one exchange them (a run may resume with another ``rollout``)
    state_transparent = True

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.seconds = 0.0
        self.steps = 0

    def step(self, action: Any) -> Any:
        t0 = time.perf_counter()
        out = self.env.step(action)
        self.seconds += time.perf_counter() - t0
        self.steps += 1
        return out

    def reset(self, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self.env.reset(**kwargs)
        self.seconds += time.perf_counter() - t0
        return out


class Shard:
    """The envs one worker owns (benchmark id → env), stepped as a :class:`MultiTaskVectorEnv` in id order."""

    def __init__(self, task_names: Sequence[str], max_episode_steps: int, terminate_on_success: bool) -> None:
        self.task_names = list(task_names)
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        self.envs: dict[int, TimedEnv] = {}
        self.vec: MultiTaskVectorEnv | None = None

    def assign(self, remove: Sequence[int], add: Sequence[tuple[int, Callable[[], gym.Env]]]) -> dict[str, Any]:
        """Drop envs ``remove`` and build ``add`` (idempotent, so a retried request is harmless); the spaces."""
        for env_id in remove:
            env = self.envs.pop(env_id, None)
            if env is not None:
                env.close()
        for env_id, build in add:
            if env_id not in self.envs:
                self.envs[env_id] = TimedEnv(build())
        ids = sorted(self.envs)
        # the vector env only holds the built envs: rebuilding it does not touch them
        sync = gym.vector.SyncVectorEnv([(lambda e=self.envs[i]: e) for i in ids],
                                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.vec = MultiTaskVectorEnv(sync, [self.task_names[i] for i in ids], env_ids=ids,
                                      max_episode_steps=self.max_episode_steps,
                                      terminate_on_success=self.terminate_on_success)
        return {"obs_dim": self.vec.obs_dim, "action_dim": self.vec.action_dim,
                "action_low": self.vec.action_low, "action_high": self.vec.action_high}

    def calibrate(self, steps: int) -> None:
        """Time ``steps`` uniform random steps of every env (from a fresh episode; the timers restart after it)."""
        assert self.vec is not None
        self.vec.reset()
        for env in self.envs.values():
            env.seconds, env.steps = 0.0, 0
        rng = np.random.default_rng(0)
        for _ in range(steps):
            self.vec.step(rng.uniform(-1.0, 1.0, (self.vec.num_tasks, self.vec.action_dim)).astype(np.float32))

    def costs(self) -> dict[int, tuple[float, int]]:
        """Seconds per step and timed steps of every env since the last call (the timers restart)."""
        out = {i: (env.seconds / max(env.steps, 1), env.steps) for i, env in self.envs.items()}
        for env in self.envs.values():
            env.seconds, env.steps = 0.0, 0
        return out

    def handle(self, command: str, payload: Any) -> Any:
        """Run one request of the collector."""
        assert self.vec is not None
        if command == "step":
            return self.vec.step(payload)
        if command == "reset":
            return self.vec.reset(seed=payload)
        if command == "reset_tasks":
            return self.vec.reset_tasks(payload)
        if command == "rng_state":
            return self.vec.rng_state()
        if command == "set_rng_state":
            return self.vec.set_rng_state(payload)
        if command == "get_state":
            return dict(zip(self.vec.env_ids, self.vec.get_state(), strict=True))
        if command == "set_state":
            return self.vec.set_state([payload[i] for i in self.vec.env_ids])
        if command == "assign":
            return self.assign(*payload)
        if command == "calibrate":
            return self.calibrate(payload)
        if command == "costs":
            return self.costs()
        raise ValueError(f"unknown worker command {command!r}")

    def close(self) -> None:
        """Close every env of the share."""
        for env in self.envs.values():
            env.close()


def worker_main(conn: Connection, meta: tuple[Any, ...], items: list[tuple[int, Callable[[], gym.Env]]]) -> None:
    """A worker's loop: build its envs, then answer requests ``(command, payload)`` with ``("ok" | "error", x)``."""
    # Ctrl-C reaches the whole process group; the learner checkpoints and then closes the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    shard = Shard(*meta)
    try:
        conn.send(("ok", shard.assign((), items)))
        while True:
            try:
                command, payload = conn.recv()
            except (EOFError, OSError):
                break  # the learner is gone
            if command == "close":
                break
            try:
                answer: tuple[str, Any] = ("ok", shard.handle(command, payload))
            except Exception as exc:  # reported to the learner, which stops with the message
                answer = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
            conn.send(answer)
    except Exception as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"))
        except (OSError, EOFError):
            pass
    finally:
        shard.close()
        conn.close()
