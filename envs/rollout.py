"""Rollouts in worker processes, overlapped with the learner's update (architecture §7, §10).

:class:`AsyncCollector` steps the K task environments in ``W`` worker processes, each owning a share of the tasks,
and offers the interface of :class:`~envs.metaworld.MultiTaskVectorEnv` (:class:`~envs.metaworld.MultiTaskEnv`), so
the trainer and the evaluator use either unchanged.  The learner sends actions with :meth:`~AsyncCollector.step_async`,
runs its update while the workers simulate, and collects with :meth:`~AsyncCollector.step_wait`.

* **Identical results.**  Every sub-env is built by the same picklable builder as in the in-process env
  (:func:`envs.metaworld.env_factories`) and a seeded reset seeds sub-env i with ``seed + i`` whichever worker holds
  it, so for the same seed and actions the transitions are those of ``make_env`` (tested).
* **Balance.**  Each worker times every env it owns (step and reset).  Shares are planned longest-first onto the
  least-loaded worker.  Envs only move at a *seeded* reset, where an env's state depends on nothing but its builder
  and the seed, so moving one (rebuilding it in another worker) cannot change a result: the first seeded reset first
  times a few random steps of every env (calibration), later ones move envs when the measured plan cuts the slowest
  worker's time by more than ``REBALANCE_GAIN``.
* **Workers** (``envs/rollout_worker.py``) answer one request at a time over a pipe.
* **Faults.**  Every wait on a worker has a timeout.  A worker that dies or hangs (no answer within
  ``step_timeout_s``; it is killed) is restarted with its envs rebuilt and reset with a fresh seed, at most
  ``max_restarts`` times per collector; the rows of a step lost that way are marked in ``StepResult.lost``.  Past the
  limit, or when an env raises, :class:`WorkerError` names the worker, its tasks and what happened.  Workers ignore
  SIGINT/SIGTERM (a Ctrl-C reaches the whole process group: the learner decides when they stop), exit when the
  learner's end of their pipe closes, and are shut down by :meth:`~AsyncCollector.close`, garbage collection or
  interpreter exit.
* **Spawned**, not forked (no copy of a process holding torch threads or a CUDA context): as with any ``spawn``
  multiprocessing, a script that builds a collector must guard its entry point with ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import pickle
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from rl_mtl.envs.metaworld import (
    MultiTaskEnv,
    StepResult,
    TaskFactories,
    checked_actions,
    env_factories,
    make_env,
)
from rl_mtl.envs.rollout_worker import worker_main

log = logging.getLogger(__name__)

ROLLOUTS = ("sync", "async")
#: seconds a worker may take to answer a step (or reset, or call) before it counts as hung
STEP_TIMEOUT_S = 60.0
#: seconds a worker may take to start and build its envs (imports included; generous for a loaded machine)
START_TIMEOUT_S = 300.0
#: restarts of dead or hung workers per collector before a fault stops the run
MAX_RESTARTS = 3
#: random steps of every env timed at the first seeded reset, to plan the shares
CALIBRATION_STEPS = 20
#: timed steps an env needs before its measured cost replaces the previous estimate
MIN_TIMED_STEPS = 20
#: move envs only when the measured plan cuts the slowest worker's step time by this factor or more
REBALANCE_GAIN = 1.1
#: messages at least this large are sent from a helper thread, so a hung worker cannot block the learner
_LARGE_MESSAGE = 64 * 1024


class WorkerError(RuntimeError):
    """A rollout worker failed and was not restarted; the message names the worker, its tasks and what happened."""


def default_workers(num_tasks: int) -> int:
    """Workers for ``workers=0``: one per core the learner leaves free, at least one, at most one per task."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(num_tasks, cores - 1))


def plan_shards(costs: Sequence[float], workers: int) -> list[list[int]]:
    """Longest-processing-time plan: env ids by decreasing cost, each onto the least-loaded worker.

    costs: (K,) seconds per step of each env.  Returns ``workers`` sorted lists of env ids, none empty
    (requires ``1 <= workers <= K``); deterministic (ties go to the lower id and the lower worker).
    """
    if not 1 <= workers <= len(costs):
        raise ValueError(f"workers must be in [1, {len(costs)}] (one env at least each), got {workers}")
    loads = [0.0] * workers
    shards: list[list[int]] = [[] for _ in range(workers)]
    for env_id in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
        # an empty worker first, so every worker holds at least one env even when costs are zero
        target = min(range(workers), key=lambda w: (len(shards[w]) > 0, loads[w], w))
        shards[target].append(env_id)
        loads[target] += float(costs[env_id])
    return [sorted(shard) for shard in shards]


def makespan(shards: Sequence[Sequence[int]], costs: Sequence[float]) -> float:
    """The slowest worker's summed env cost: the simulation time of one vector step."""
    return max(sum(float(costs[i]) for i in shard) for shard in shards)


def make_rollout_env(
    name: str,
    seed: int,
    *,
    rollout: str = "sync",
    workers: int = 0,
    vector_strategy: str = "sync",
    **env_kwargs: Any,
) -> MultiTaskEnv:
    """The training env: ``sync`` → :func:`~envs.metaworld.make_env` in this process (``vector_strategy`` applies),
    ``async`` → an :class:`AsyncCollector` with ``workers`` processes (0 = :func:`default_workers`)."""
    if rollout not in ROLLOUTS:
        raise ValueError(f"rollout must be one of {ROLLOUTS}, got {rollout!r}")
    if rollout == "sync":
        return make_env(name, seed, vector_strategy=vector_strategy, **env_kwargs)
    if vector_strategy != "sync":
        raise ValueError("async rollouts run their own worker processes; vector_strategy must stay 'sync'")
    return AsyncCollector(env_factories(name, seed, **env_kwargs), workers, seed=seed)


@dataclasses.dataclass
class _Worker:
    """The learner's handle on one worker process."""

    index: int
    ids: list[int]
    process: BaseProcess
    conn: Connection


class _Fault(Exception):
    """A worker died or hung (restartable), as opposed to an env raising (a :class:`WorkerError` at once)."""

    def __init__(self, worker: _Worker, what: str) -> None:
        super().__init__(what)
        self.worker = worker
        self.what = what


def _send_quietly(conn: Connection, data: bytes) -> None:
    """``conn.send_bytes`` for a helper thread: a worker killed meanwhile is reported by the answer's wait."""
    try:
        conn.send_bytes(data)
    except (OSError, ValueError):
        pass


def _shutdown(workers: list[_Worker]) -> None:
    """Ask every worker to exit, then kill the ones still running after 5 s; idempotent."""
    for w in workers:
        try:
            w.conn.send(("close", None))
        except (OSError, ValueError):
            pass
    for w in workers:
        w.process.join(timeout=5.0)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5.0)
        w.conn.close()
    workers.clear()


class AsyncCollector:
    """K task envs stepping in ``workers`` processes; the interface and results of :class:`MultiTaskVectorEnv`.

    ``seed`` only derives the seeds of restarted workers' envs (runs stay reproducible).  ``workers=0`` picks
    :func:`default_workers`; more workers than tasks are not started.
    """

    def __init__(
        self,
        factories: TaskFactories,
        workers: int = 0,
        *,
        seed: int = 0,
        step_timeout_s: float = STEP_TIMEOUT_S,
        start_timeout_s: float = START_TIMEOUT_S,
        max_restarts: int = MAX_RESTARTS,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = one per free core), got {workers}")
        self.name = factories.name
        self.task_names = list(factories.task_names)
        self.num_tasks = len(self.task_names)
        self.max_episode_steps = factories.max_episode_steps
        self.terminate_on_success = factories.terminate_on_success
        self.num_workers = min(workers or default_workers(self.num_tasks), self.num_tasks)
        self.step_timeout_s = float(step_timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.max_restarts = int(max_restarts)
        self.restarts = 0
        self._builders = factories.builders
        self._meta = (self.task_names, self.max_episode_steps, self.terminate_on_success)
        self._seed = int(seed)
        self._ctx = mp.get_context("spawn")
        self._costs = np.ones(self.num_tasks)  # seconds per step of each env; equal until measured
        self._calibrated = False
        self._waiting = False
        self._deadline = 0.0
        self._closed = False
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        try:
            for index, ids in enumerate(plan_shards(self._costs, self.num_workers)):
                self._workers.append(self._start(index, ids))
            info = [self._answer(w, self.start_timeout_s, "start") for w in list(self._workers)][0]
        except _Fault as fault:
            raise self._fail(fault.worker, fault.what) from None
        except BaseException:
            self.close()
            raise
        self.obs_dim = int(info["obs_dim"])
        self.action_dim = int(info["action_dim"])
        self.action_low = np.asarray(info["action_low"], dtype=np.float32)
        self.action_high = np.asarray(info["action_high"], dtype=np.float32)
        self._obs = np.zeros((self.num_tasks, self.obs_dim), dtype=np.float32)  # last obs of each row handed out

    # ------------------------------------------------------------------ the MultiTaskEnv interface
    def reset(self, seed: int | None = None) -> np.ndarray:
        """New episodes in every task; (K, obs_dim).  A seeded reset may first rebalance the workers' shares."""
        self._check_idle()
        if seed is not None:
            self._balance()
        answers = self._request_all("reset", {w.index: seed for w in self._workers})
        return self._gather_obs(answers)

    def reset_tasks(self, mask: np.ndarray) -> np.ndarray:
        """Reset only the rows where ``mask`` (K,) is True; the full (K, obs_dim) obs."""
        self._check_idle()
        mask = np.asarray(mask, dtype=bool).reshape(self.num_tasks)
        payloads = {w.index: mask[w.ids].copy() for w in self._workers if mask[w.ids].any()}
        answers = self._request_all("reset_tasks", payloads)
        return self._gather_obs(answers)

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every task once with ``actions`` (K, A), clipped to the action space."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        """Send ``actions`` (K, A) to the workers and return at once; collect with :meth:`step_wait`."""
        self._check_idle()
        actions = checked_actions(actions, self.num_tasks, self.action_dim, self.action_low, self.action_high)
        self._deadline = time.monotonic() + self.step_timeout_s
        for w in self._workers:
            self._send(w, "step", actions[w.ids])
        self._waiting = True

    def step_wait(self) -> StepResult:
        """The step sent by :meth:`step_async`; a worker lost on the way is restarted and its rows marked ``lost``."""
        if not self._waiting:
            raise RuntimeError("step_wait() called without a pending step_async()")
        self._waiting = False
        parts: list[tuple[list[int], StepResult]] = []
        lost: list[tuple[list[int], np.ndarray]] = []
        for w in list(self._workers):
            try:
                parts.append((w.ids, self._answer(w, max(self._deadline - time.monotonic(), 0.0), "step")))
            except _Fault as fault:
                lost.append((w.ids, self._restart(fault)))
        return self._assemble(parts, lost)

    def rng_state(self) -> list[Any]:
        """Every env's goal-sampling RNG snapshot (Meta-World checkpoints), in task order."""
        self._check_idle()
        answers = self._request_all("rng_state", {w.index: None for w in self._workers})
        by_id = {i: s for w in self._workers for i, s in zip(w.ids, answers[w.index], strict=True)}
        return [by_id[i] for i in range(self.num_tasks)]

    def set_rng_state(self, state: list[Any]) -> None:
        """Restore a :meth:`rng_state` snapshot (each worker gets its envs' entries)."""
        self._check_idle()
        if len(state) != self.num_tasks:
            raise ValueError(f"rng state has {len(state)} entries for {self.num_tasks} tasks")
        self._request_all("set_rng_state", {w.index: [state[i] for i in w.ids] for w in self._workers})

    def get_state(self) -> list[dict[str, Any]]:
        """Every env's exact snapshot (:meth:`MultiTaskVectorEnv.get_state` rows), in task order, from the workers."""
        self._check_idle()
        answers = self._request_all("get_state", {w.index: None for w in self._workers})
        by_id = {i: s for answer in answers.values() for i, s in answer.items()}
        return [by_id[i] for i in range(self.num_tasks)]

    def set_state(self, state: Sequence[Any]) -> None:
        """Restore a :meth:`get_state` snapshot into whichever worker holds each env."""
        self._check_idle()
        if len(state) != self.num_tasks:
            raise ValueError(f"env state has {len(state)} rows for {self.num_tasks} tasks")
        self._request_all("set_state", {w.index: {i: state[i] for i in w.ids} for w in self._workers})

    def close(self) -> None:
        """Shut every worker down (idempotent; also run on garbage collection and at interpreter exit)."""
        self._closed = True
        self._waiting = False
        self._finalizer()

    def __enter__(self) -> AsyncCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"AsyncCollector({self.name!r}, K={self.num_tasks}, workers={self.num_workers}, "
                f"shares={self.shares()}, restarts={self.restarts})")

    # ------------------------------------------------------------------ shares and their balance
    def shares(self) -> list[list[int]]:
        """The env ids each worker holds, by worker."""
        return [list(w.ids) for w in self._workers]

    def step_costs_ms(self) -> np.ndarray:
        """(K,) the current estimate of each env's milliseconds per step (1 ms each until measured)."""
        return 1e3 * self._costs

    def rebalance(self, shards: Sequence[Sequence[int]]) -> None:
        """Move envs so that worker w holds ``shards[w]``.  Only call it before a seeded reset: moved envs are
        rebuilt, so the episodes in progress and any unseeded RNG state of the moved envs are lost."""
        self._check_idle()
        if sorted(i for s in shards for i in s) != list(range(self.num_tasks)) or len(shards) != len(self._workers):
            raise ValueError(f"shares must split the {self.num_tasks} env ids over {len(self._workers)} workers")
        payloads = {}
        for w, new in zip(self._workers, shards, strict=True):
            remove = sorted(set(w.ids) - set(new))
            add = [(i, self._builders[i]) for i in sorted(set(new) - set(w.ids))]
            w.ids = sorted(new)  # a worker restarted during the move builds its new share
            if remove or add:
                payloads[w.index] = (remove, add)
        self._request_all("assign", payloads)
        log.info("rollout shares rebalanced: %s (estimated ms per env: %s)", self.shares(),
                 np.round(self.step_costs_ms(), 3).tolist())

    def _balance(self) -> None:
        """At a seeded reset: measure the envs' step costs (calibrating the first time) and move envs if that
        cuts the slowest worker's time by ``REBALANCE_GAIN``."""
        if self.num_workers == 1:
            return
        if not self._calibrated:
            self._request_all("calibrate", {w.index: CALIBRATION_STEPS for w in self._workers})
            self._calibrated = True
        answers = self._request_all("costs", {w.index: None for w in self._workers})
        for measured in answers.values():
            for env_id, (seconds, steps) in measured.items():
                if steps >= MIN_TIMED_STEPS:
                    self._costs[env_id] = seconds
        plan = plan_shards(self._costs, self.num_workers)
        if makespan(self.shares(), self._costs) > REBALANCE_GAIN * makespan(plan, self._costs):
            self.rebalance(self._match(plan))

    def _match(self, plan: list[list[int]]) -> list[list[int]]:
        """Order ``plan``'s shares so that each worker keeps as many of its envs as it can (fewest rebuilds)."""
        free = list(range(len(plan)))
        out: list[list[int]] = []
        for w in self._workers:
            best = max(free, key=lambda s: (len(set(plan[s]) & set(w.ids)), -s))
            free.remove(best)
            out.append(plan[best])
        return out

    # ------------------------------------------------------------------ requests, faults, restarts
    def _start(self, index: int, ids: list[int]) -> _Worker:
        parent, child = self._ctx.Pipe()
        items = [(i, self._builders[i]) for i in ids]
        process = self._ctx.Process(target=worker_main, args=(child, self._meta, items),
                                    name=f"rollout-worker-{index}", daemon=True)
        process.start()
        child.close()  # the worker holds the only other end: its death reads as EOF here
        return _Worker(index, list(ids), process, parent)

    def _send(self, w: _Worker, command: str, payload: Any) -> None:
        """Send a request; a large one from a helper thread so that a hung worker surfaces as a timeout."""
        data = pickle.dumps((command, payload), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            if len(data) < _LARGE_MESSAGE:
                w.conn.send_bytes(data)  # the worker read every earlier request: this fits the socket buffer
                return
            sender = threading.Thread(target=_send_quietly, args=(w.conn, data), daemon=True)
            sender.start()
            sender.join(self.step_timeout_s)
        except (OSError, ValueError):
            pass  # a dead worker: the answer's wait reports it

    def _answer(self, w: _Worker, timeout: float, command: str) -> Any:
        """The answer to ``w``'s pending request; :class:`_Fault` if it dies or stays silent for ``timeout`` s."""
        ready = wait([w.conn, w.process.sentinel], timeout)
        if w.conn in ready:
            try:
                status, payload = w.conn.recv()
            except (EOFError, OSError):
                ready = [w.process.sentinel]
            else:
                if status == "error":
                    raise self._fail(w, f"raised during {command}: {payload.strip()}")
                return payload
        if ready:
            w.process.join(timeout=5.0)
            raise _Fault(w, f"died with exit code {w.process.exitcode} during {command}")
        raise _Fault(w, f"did not answer {command} within {timeout:.3g} s (hung); killed it")

    def _request_all(self, command: str, payloads: dict[int, Any]) -> dict[int, Any]:
        """Send ``payloads[w]`` to each worker named in it, then gather the answers.  A worker that dies or hangs
        is restarted (envs rebuilt and freshly reset) and asked again: every request but a step may be repeated."""
        deadline = time.monotonic() + self.step_timeout_s
        targets = [w for w in self._workers if w.index in payloads]
        for w in targets:
            self._send(w, command, payloads[w.index])
        answers: dict[int, Any] = {}
        for w in targets:
            try:
                answers[w.index] = self._answer(w, max(deadline - time.monotonic(), 0.0), command)
            except _Fault as fault:
                while w.index not in answers:  # each fault of the repeated request is one more restart
                    self._restart(fault)
                    fresh = self._workers[w.index]
                    self._send(fresh, command, payloads[w.index])
                    try:
                        answers[w.index] = self._answer(fresh, self.step_timeout_s, command)
                    except _Fault as again:
                        fault = _Fault(again.worker, f"{again.what} right after a restart")
        return answers

    def _restart(self, fault: _Fault) -> np.ndarray:
        """Replace a dead or hung worker by a fresh one holding the same envs, reset with a new seed; the reset
        obs of its rows.  A replacement that dies or hangs while it starts counts as one more restart and is
        replaced in turn.  Raises :class:`WorkerError` past ``max_restarts``."""
        w, what = fault.worker, fault.what
        while True:
            if self.restarts >= self.max_restarts:
                raise self._fail(w, f"{what}; not restarted: the {self.max_restarts} restart(s) allowed "
                                    "are used up")
            if w.process.is_alive():
                w.process.kill()
            w.process.join(timeout=5.0)
            w.conn.close()
            self.restarts += 1
            seed = int(np.random.SeedSequence([self._seed, self.restarts]).generate_state(1)[0] % 2**31)
            log.warning("%s; restarting it with its envs reseeded (seed %d, restart %d of %d)",
                        self._describe(w, what), seed, self.restarts, self.max_restarts)
            fresh = self._start(w.index, w.ids)
            self._workers[w.index] = fresh
            try:
                self._answer(fresh, self.start_timeout_s, "start")
                self._send(fresh, "reset", seed)
                return np.asarray(self._answer(fresh, self.step_timeout_s, "reset"), dtype=np.float32)
            except _Fault as again:
                w, what = again.worker, f"{again.what} while restarting"

    def _fail(self, w: _Worker, what: str) -> WorkerError:
        """Close the collector (other workers may hold answers nobody will read) and return the error to raise."""
        message = self._describe(w, what)
        self.close()
        return WorkerError(message)

    def _describe(self, w: _Worker, what: str) -> str:
        tasks = ", ".join(self.task_names[i] for i in w.ids)
        return f"rollout worker {w.index} (pid {w.process.pid}; tasks {tasks}) {what}"

    # ------------------------------------------------------------------ assembling answers
    def _gather_obs(self, answers: dict[int, Any]) -> np.ndarray:
        """The (K, obs_dim) obs from the workers that answered; unchanged rows for the others."""
        for w in self._workers:
            if w.index in answers:
                self._obs[w.ids] = answers[w.index]
        return self._obs.copy()

    def _assemble(self, parts: list[tuple[list[int], StepResult]],
                  lost: list[tuple[list[int], np.ndarray]]) -> StepResult:
        """One (K-row) :class:`StepResult` from the workers' rows; lost rows end their episode, without statistics."""
        k = self.num_tasks
        out = StepResult(
            obs=np.empty((k, self.obs_dim), np.float32), next_obs=self._obs.copy(), reward=np.zeros(k, np.float32),
            terminated=np.zeros(k, bool), truncated=np.ones(k, bool), success=np.zeros(k, bool),
            done=np.ones(k, bool), episode_return=np.full(k, np.nan), episode_success=np.zeros(k, bool),
            episode_length=np.full(k, -1, np.int64))
        for ids, part in parts:
            for field in dataclasses.fields(StepResult):
                if field.name != "lost":
                    getattr(out, field.name)[ids] = getattr(part, field.name)
        if lost:
            out.lost = np.zeros(k, bool)
            for ids, obs in lost:
                out.obs[ids] = obs
                out.lost[ids] = True
        self._obs = out.obs.copy()
        return out

    def _check_idle(self) -> None:
        if self._closed:
            raise RuntimeError("the collector is closed")
        if self._waiting:
            raise RuntimeError("a step_async() is pending: call step_wait() first")
