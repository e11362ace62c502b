"""Meta-World 3 benchmarks (MT10, MT50, MT1) as one vector env with one sub-env per task (architecture §1, §7, §8).

Built the way Meta-World's gymnasium registration (``gym.make_vec("Meta-World/MT10", ...)``) builds it, from one
picklable builder per task (:func:`env_factories`), so that rollout workers holding a share of the tasks
(``envs/rollout.py``) build the very same sub-envs.  What the installed metaworld 3.1.1 / gymnasium 1.4 actually do,
and how this module handles it:

* Autoreset is **same-step** (``gym.vector.AutoresetMode.SAME_STEP``, pinned explicitly here and checked): on the
  step where an episode ends, the returned obs is already the reset obs of the next episode, the true last obs is
  ``info["final_obs"][i]`` (an object array, masked by ``info["_final_obs"]``) and that step's info, ``success``
  included, is under ``info["final_info"]`` (a dict of arrays with ``_key`` masks).  :class:`StepResult` resolves
  this: ``obs`` is what to act on next, ``next_obs`` the true successor for replay.
* ``num_goals`` sets a **module-global** in metaworld that outlives the call, so it is always passed explicitly and
  restored after the build.  ``num_goals=1`` freezes one goal per task (drawn from the seed).
* ``reset(seed=...)`` of a Meta-World env ignores the seed: its RNG is only set by ``env.seed(s)`` at build time.
  :meth:`MultiTaskVectorEnv.reset` therefore calls ``seed`` on every sub-env when given a seed, which makes a
  reused env replay exactly what a fresh env built with that seed does.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import gymnasium as gym
import metaworld
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

from rl_mtl.envs import env_state

#: accepted benchmark names; MT1 takes a task: ``mt1:<task>`` (e.g. ``mt1:reach-v3``)
ENV_NAMES: tuple[str, ...] = ("mt10", "mt50", "mt1:<task>")
#: every Meta-World v3 task name, in Meta-World's spelling (valid values of ``mt1:<task>``)
MT1_TASKS: tuple[str, ...] = tuple(ALL_V3_ENVIRONMENTS.keys())
#: state part of every Meta-World observation (the one-hot, when on, follows it)
STATE_DIM = 39

_REGISTERED = {"mt10": "Meta-World/MT10", "mt50": "Meta-World/MT50"}
#: goals per task Meta-World draws when goals are not fixed
_NUM_GOALS = 50
#: warnings that gymnasium raises on every Meta-World build and that say nothing actionable
_BUILD_NOISE = (".*precision lowered by casting.*", ".*maximum and minimum values are equal.*")


def parse_env_name(name: str) -> tuple[str, str | None]:
    """Split an env name into ``(benchmark, task)``: ``"mt10"`` → ``("mt10", None)``, ``"mt1:reach-v3"`` →
    ``("mt1", "reach-v3")``.  Raises ``ValueError`` naming the valid forms (and MT1 tasks)."""
    key = name.strip().lower()
    if key in _REGISTERED:
        return key, None
    if key.startswith("mt1:"):
        task = name.strip()[4:]
        if task in ALL_V3_ENVIRONMENTS:
            return "mt1", task
        raise ValueError(f"unknown MT1 task {task!r}; valid tasks: {', '.join(MT1_TASKS)}")
    raise ValueError(
        f"unknown env {name!r}; valid forms: {', '.join(ENV_NAMES)} "
        f"(e.g. 'mt1:reach-v3'; MT1 tasks: {', '.join(MT1_TASKS)})"
    )


@dataclasses.dataclass
class StepResult:
    """One vector step, one row per task (K rows).

    ``obs`` is the observation to act on next (after autoreset); ``next_obs`` the true successor of the step's
    observation, for replay (``final_obs`` where the episode ended).  ``episode_*`` are valid only where ``done``
    (NaN / −1 / False elsewhere); ``episode_success`` is success at any step of the episode.
    """

    obs: np.ndarray  # (K, obs_dim) float32
    next_obs: np.ndarray  # (K, obs_dim) float32
    reward: np.ndarray  # (K,) float32
    terminated: np.ndarray  # (K,) bool
    truncated: np.ndarray  # (K,) bool, time limit: not a termination
    success: np.ndarray  # (K,) bool, success flag of this step
    done: np.ndarray  # (K,) bool, terminated | truncated
    episode_return: np.ndarray  # (K,) float64, NaN where not done
    episode_success: np.ndarray  # (K,) bool, False where not done
    episode_length: np.ndarray  # (K,) int64, -1 where not done
    #: (K,) bool, rows whose step was lost to a rollout-worker restart (``envs/rollout.py``): their env was rebuilt
    #: and reset, so the row is a placeholder ending the episode (done, no statistics) — never store it.  None: none.
    lost: np.ndarray | None = None


def _masked_row(info: Mapping[str, Any], key: str, i: int) -> Any | None:
    """``info[key][i]`` if the vector info holds it for sub-env ``i`` (``_key`` mask set), else ``None``."""
    if key not in info:
        return None
    mask = info.get("_" + key)
    if mask is not None and not bool(mask[i]):
        return None
    return info[key][i]


def checked_actions(actions: np.ndarray, num_tasks: int, action_dim: int, low: np.ndarray, high: np.ndarray
                    ) -> np.ndarray:
    """``actions`` as float32 (K, A) clipped to the action space; ``ValueError`` naming the shapes otherwise."""
    actions = np.asarray(actions, dtype=np.float32)
    if actions.shape != (num_tasks, action_dim):
        raise ValueError(f"actions must have shape {(num_tasks, action_dim)}, got {actions.shape}")
    return np.clip(actions, low, high)


class MultiTaskVectorEnv:
    """K Meta-World tasks stepping together (env i = task i), with same-step autoreset resolved and per-task
    episode statistics (return, success at any step, length) tracked here.

    ``step_async`` / ``step_wait`` let a learner overlap simulation with its update; with the sync strategy
    ``step_async`` does the work and ``step_wait`` only returns it.
    """

    def __init__(
        self,
        vector_env: gym.vector.VectorEnv,
        task_names: list[str],
        *,
        name: str = "",
        max_episode_steps: int = 500,
        terminate_on_success: bool = False,
        env_ids: Sequence[int] | None = None,
    ) -> None:
        mode = vector_env.metadata.get("autoreset_mode")
        if mode != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError(f"MultiTaskVectorEnv needs same-step autoreset, the vector env uses {mode!r}")
        if vector_env.num_envs != len(task_names):
            raise ValueError(f"{vector_env.num_envs} sub-envs for {len(task_names)} task names")
        self.vector_env = vector_env
        self.name = name
        self.task_names = list(task_names)
        self.num_tasks = len(task_names)
        # index of each sub-env in its benchmark: a seeded reset seeds sub-env i with seed + env_ids[i], so a vector
        # env holding a share of the tasks (a rollout worker) replays exactly the rows of the full one
        self.env_ids = list(range(self.num_tasks)) if env_ids is None else [int(i) for i in env_ids]
        if len(self.env_ids) != self.num_tasks:
            raise ValueError(f"{len(self.env_ids)} env ids for {self.num_tasks} sub-envs")
        self.obs_dim = int(np.prod(vector_env.single_observation_space.shape))
        space = vector_env.single_action_space
        assert isinstance(space, gym.spaces.Box)
        self.action_dim = int(np.prod(space.shape))
        self.action_low = np.asarray(space.low, dtype=np.float32)
        self.action_high = np.asarray(space.high, dtype=np.float32)
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = bool(terminate_on_success)
        self._is_async = isinstance(vector_env, gym.vector.AsyncVectorEnv)
        self._pending: tuple[Any, ...] | None = None
        self._waiting = False
        self._closed = False
        self._ep_return = np.zeros(self.num_tasks, dtype=np.float64)
        self._ep_success = np.zeros(self.num_tasks, dtype=bool)
        self._ep_length = np.zeros(self.num_tasks, dtype=np.int64)

    # ------------------------------------------------------------------ reset
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode in every task; (K, obs_dim) float32.  A seed reseeds every sub-env's RNG (goal
        draws), so the same seed replays the same goals on a fresh or a reused env."""
        self._check_idle()
        if seed is not None:
            # Meta-World's reset ignores its seed argument; only env.seed() reseeds the goal sampler
            self.vector_env.call("seed", int(seed))
        seeds = None if seed is None else [int(seed) + i for i in self.env_ids]
        obs, _ = self.vector_env.reset(seed=seeds)
        self._ep_return[:] = 0.0
        self._ep_success[:] = False
        self._ep_length[:] = 0
        return np.asarray(obs, dtype=np.float32)

    def reset_tasks(self, mask: np.ndarray) -> np.ndarray:
        """Reset only the sub-envs where ``mask`` (K,) is True (new goal, stats cleared); returns the full
        (K, obs_dim) obs, unchanged rows for the others.  Used to cut an episode short, e.g. at success."""
        self._check_idle()
        mask = np.asarray(mask, dtype=bool).reshape(self.num_tasks)
        obs, _ = self.vector_env.reset(options={"reset_mask": mask.copy()})
        self._ep_return[mask] = 0.0
        self._ep_success[mask] = False
        self._ep_length[mask] = 0
        return np.asarray(obs, dtype=np.float32)

    # ------------------------------------------------------------------ step
    def step(self, actions: np.ndarray) -> StepResult:
        """Step every task once with ``actions`` (K, A), clipped to the action space."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        """Send ``actions`` (K, A); collect the result with :meth:`step_wait`."""
        self._check_idle()
        actions = checked_actions(actions, self.num_tasks, self.action_dim, self.action_low, self.action_high)
        if self._is_async:
            self.vector_env.step_async(actions)  # type: ignore[attr-defined]
        else:
            self._pending = self.vector_env.step(actions)
        self._waiting = True

    def step_wait(self) -> StepResult:
        """Result of the step sent by :meth:`step_async`."""
        if not self._waiting:
            raise RuntimeError("step_wait() called without a pending step_async()")
        if self._is_async:
            out = self.vector_env.step_wait()  # type: ignore[attr-defined]
        else:
            assert self._pending is not None
            out, self._pending = self._pending, None
        self._waiting = False
        return self._process(*out)

    def _process(
        self, obs: Any, reward: Any, terminated: Any, truncated: Any, info: Mapping[str, Any]
    ) -> StepResult:
        """Resolve same-step autoreset into a :class:`StepResult` and update the episode statistics."""
        obs = np.asarray(obs, dtype=np.float32)
        reward64 = np.asarray(reward, dtype=np.float64).reshape(self.num_tasks)
        terminated = np.asarray(terminated, dtype=bool).reshape(self.num_tasks)
        truncated = np.asarray(truncated, dtype=bool).reshape(self.num_tasks)
        done = terminated | truncated
        next_obs = obs.copy()
        success = np.zeros(self.num_tasks, dtype=bool)
        final_info: Mapping[str, Any] = info.get("final_info", {})
        for i in range(self.num_tasks):
            if done[i]:
                final = _masked_row(info, "final_obs", i)
                if final is not None:
                    next_obs[i] = np.asarray(final, dtype=np.float32)
                flag = _masked_row(final_info, "success", i)
            else:
                flag = _masked_row(info, "success", i)
            success[i] = flag is not None and float(flag) > 0.5

        self._ep_return += reward64
        self._ep_length += 1
        self._ep_success |= success
        episode_return = np.full(self.num_tasks, np.nan)
        episode_success = np.zeros(self.num_tasks, dtype=bool)
        episode_length = np.full(self.num_tasks, -1, dtype=np.int64)
        episode_return[done] = self._ep_return[done]
        episode_success[done] = self._ep_success[done]
        episode_length[done] = self._ep_length[done]
        self._ep_return[done] = 0.0
        self._ep_success[done] = False
        self._ep_length[done] = 0
        return StepResult(
            obs=obs,
            next_obs=next_obs,
            reward=reward64.astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            success=success,
            done=done,
            episode_return=episode_return,
            episode_success=episode_success,
            episode_length=episode_length,
        )

    # ------------------------------------------------------------------ RNG snapshots
    def rng_state(self) -> list[Any]:
        """Snapshot of every sub-env's goal-sampling RNG (Meta-World checkpoint), for :meth:`set_rng_state`."""
        self._check_idle()
        return list(self.vector_env.call("get_checkpoint"))

    def set_rng_state(self, state: list[Any]) -> None:
        """Restore a :meth:`rng_state` snapshot (each sub-env picks its own entry by id)."""
        self._check_idle()
        self.vector_env.call("load_checkpoint", state)

    # ------------------------------------------------------------------ exact snapshots (resume)
    def get_state(self) -> list[dict[str, Any]]:
        """Per row, everything the next steps depend on: the sub-env's simulator, Meta-World and wrapper state and
        RNGs (:func:`envs.env_state.capture`) and the episode statistics so far.  In-process sub-envs only."""
        self._check_idle()
        return [{"env": env_state.capture(env), "episode": (float(self._ep_return[i]), bool(self._ep_success[i]),
                                                             int(self._ep_length[i]))}
                for i, env in enumerate(self._sub_envs())]

    def set_state(self, state: Sequence[Mapping[str, Any]]) -> None:
        """Restore a :meth:`get_state` snapshot, row by row, into sub-envs built by the same builders."""
        self._check_idle()
        envs = self._sub_envs()
        if len(state) != len(envs):
            raise ValueError(f"env state has {len(state)} rows for {len(envs)} sub-envs")
        for i, (env, row) in enumerate(zip(envs, state, strict=True)):
            env_state.restore(env, row["env"])
            self._ep_return[i], self._ep_success[i], self._ep_length[i] = row["episode"]

    def _sub_envs(self) -> list[gym.Env]:
        if self._is_async:
            raise RuntimeError("exact env snapshots need in-process sub-envs (vector_strategy=sync or "
                               "rollout=async workers), not gymnasium's AsyncVectorEnv")
        return list(self.vector_env.envs)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ lifecycle
    def _check_idle(self) -> None:
        if self._closed:
            raise RuntimeError("environment is closed")
        if self._waiting:
            raise RuntimeError("a step_async() is pending: call step_wait() first")

    def close(self) -> None:
        """Close the sub-envs (and worker processes); idempotent."""
        if not self._closed:
            if self._waiting and self._is_async:
                # drain the pending step so the workers shut down cleanly instead of being killed mid-call
                self.vector_env.step_wait()  # type: ignore[attr-defined]
            self._waiting = False
            self.vector_env.close()
            self._closed = True

    def __enter__(self) -> MultiTaskVectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MultiTaskVectorEnv({self.name!r}, K={self.num_tasks}, obs_dim={self.obs_dim}, "
            f"action_dim={self.action_dim}, async={self._is_async})"
        )


class MultiTaskEnv(Protocol):
    """What the trainer and the evaluator use of a multi-task vector env: :class:`MultiTaskVectorEnv` (in process)
    and :class:`envs.rollout.AsyncCollector` (worker processes) both provide it, with identical results."""

    name: str
    task_names: list[str]
    num_tasks: int
    obs_dim: int
    action_dim: int
    max_episode_steps: int

    def reset(self, seed: int | None = None) -> np.ndarray: ...
    def reset_tasks(self, mask: np.ndarray) -> np.ndarray: ...
    def step(self, actions: np.ndarray) -> StepResult: ...
    def step_async(self, actions: np.ndarray) -> None: ...
    def step_wait(self) -> StepResult: ...
    def rng_state(self) -> list[Any]: ...
    def set_rng_state(self, state: list[Any]) -> None: ...
    def get_state(self) -> list[dict[str, Any]]: ...
    def set_state(self, state: Sequence[Mapping[str, Any]]) -> None: ...
    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class TaskFactories:
    """One picklable builder per sub-env of a benchmark, in task order (sub-env i = task i).

    A vector env calls all of them; a rollout worker calls those of its share of the tasks.  Either way a sub-env is
    built exactly alike, which is what makes the in-process and the worker rollouts identical.
    """

    name: str
    task_names: tuple[str, ...]
    builders: tuple[Callable[[], gym.Env], ...]
    max_episode_steps: int
    terminate_on_success: bool


def env_factories(
    name: str,
    seed: int,
    *,
    max_episode_steps: int | None = None,
    reward_version: str = "v2",
    fixed_goals: bool = False,
    one_hot: bool = True,
    terminate_on_success: bool = False,
) -> TaskFactories:
    """The sub-env builders of benchmark ``name`` (options as in :func:`make_env`).

    For MT10/MT50 the benchmark's goals are drawn here, once (the slow part of a build, ~10 s for MT10); each builder
    then constructs its task's env as Meta-World's own ``gym.make_vec("Meta-World/MT10")`` does.
    """
    benchmark, task = parse_env_name(name)
    if max_episode_steps is not None and int(max_episode_steps) < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    if reward_version not in ("v1", "v2"):
        raise ValueError(f"reward_version must be 'v1' or 'v2', got {reward_version!r}")
    steps = min(int(max_episode_steps), 500) if max_episode_steps is not None else 500
    common: dict[str, Any] = dict(
        use_one_hot=bool(one_hot),
        reward_function_version=reward_version,
        terminate_on_success=bool(terminate_on_success),
    )
    builders: list[Callable[[], gym.Env]]
    if task is not None:
        # Meta-World registers MT1 as a single env; gym.make consumes max_episode_steps itself and adds an outer
        # TimeLimit, which truncates exactly like Meta-World's inner one
        kwargs = dict(common, seed=int(seed), num_goals=1 if fixed_goals else _NUM_GOALS)
        builders, names = [_Mt1Factory(task=task, max_episode_steps=steps, kwargs=kwargs)], [task]
    else:
        suite = metaworld.MT10 if benchmark == "mt10" else metaworld.MT50
        # the number of goals per task is a metaworld module global read while the goals are drawn: set it for this
        # draw only, so it never leaks into a later build
        previous_goals = getattr(metaworld, "_N_GOALS", _NUM_GOALS)
        try:
            metaworld._N_GOALS = 1 if fixed_goals else _NUM_GOALS  # type: ignore[attr-defined]
            with warnings.catch_warnings():
                for pattern in _BUILD_NOISE:
                    warnings.filterwarnings("ignore", message=pattern)
                drawn = suite(seed=int(seed))
        finally:
            metaworld._N_GOALS = previous_goals  # type: ignore[attr-defined]
        names = list(drawn.train_classes)
        builders = [
            _MtFactory(env_cls=env_cls, tasks=tuple(t for t in drawn.train_tasks if t.env_name == task_name),
                       seed=int(seed), env_id=env_id, num_tasks=len(names),
                       kwargs=dict(common, max_episode_steps=steps))
            for env_id, (task_name, env_cls) in enumerate(drawn.train_classes.items())
        ]
    return TaskFactories(name=name, task_names=tuple(names), builders=tuple(builders), max_episode_steps=steps,
                         terminate_on_success=bool(terminate_on_success))


def make_env(
    name: str,
    seed: int,
    *,
    max_episode_steps: int | None = None,
    reward_version: str = "v2",
    fixed_goals: bool = False,
    one_hot: bool = True,
    vector_strategy: str = "sync",
    terminate_on_success: bool = False,
) -> MultiTaskVectorEnv:
    """Build benchmark ``name`` (``mt10``, ``mt50``, ``mt1:<task>``) as a :class:`MultiTaskVectorEnv`.

    ``max_episode_steps`` defaults to Meta-World's 500 (it cannot exceed it: the simulator itself truncates at 500);
    ``fixed_goals`` freezes one goal per task drawn from ``seed`` (else a new goal of the task's 50 at every reset);
    ``one_hot`` appends the K-dim task one-hot to the 39-dim state (obs dim 39 + K).
    """
    if vector_strategy not in ("sync", "async"):
        raise ValueError(f"vector_strategy must be 'sync' or 'async', got {vector_strategy!r}")
    factories = env_factories(name, seed, max_episode_steps=max_episode_steps, reward_version=reward_version,
                              fixed_goals=fixed_goals, one_hot=one_hot, terminate_on_success=terminate_on_success)
    return build_vector_env(factories, vector_strategy)


def build_vector_env(factories: TaskFactories, vector_strategy: str = "sync") -> MultiTaskVectorEnv:
    """All of ``factories``' sub-envs as one :class:`MultiTaskVectorEnv`, stepping in process (``sync``) or in
    gymnasium's one-process-per-env ``AsyncVectorEnv`` (``async``)."""
    vectorizer = gym.vector.AsyncVectorEnv if vector_strategy == "async" else gym.vector.SyncVectorEnv
    with warnings.catch_warnings():
        for pattern in _BUILD_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        vec = vectorizer(list(factories.builders), autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return MultiTaskVectorEnv(vec, list(factories.task_names), name=factories.name,
                              max_episode_steps=factories.max_episode_steps,
                              terminate_on_success=factories.terminate_on_success)


@dataclasses.dataclass(frozen=True)
class _MtFactory:
    """Picklable builder of one MT10/MT50 sub-env: Meta-World's own per-task constructor (``_init_each_env``, what
    ``make_mt_envs`` vectorises; metaworld is pinned at 3.1.1) on the task's share of the drawn goals."""

    env_cls: type
    tasks: tuple[Any, ...]
    seed: int
    env_id: int
    num_tasks: int
    kwargs: Mapping[str, Any]

    def __call__(self) -> gym.Env:
        with warnings.catch_warnings():
            for pattern in _BUILD_NOISE:
                warnings.filterwarnings("ignore", message=pattern)
            return metaworld._init_each_env(  # type: ignore[attr-defined]
                env_cls=self.env_cls, tasks=list(self.tasks), seed=self.seed, env_id=self.env_id,
                num_tasks=self.num_tasks, **self.kwargs)


@dataclasses.dataclass(frozen=True)
class _Mt1Factory:
    """Picklable builder of one MT1 env (async workers need a picklable factory, not a lambda)."""

    task: str
    max_episode_steps: int
    kwargs: Mapping[str, Any]

    def __call__(self) -> gym.Env:
        # the entry point stores num_goals in a metaworld global that would leak into every later build
        previous_goals = getattr(metaworld, "_N_GOALS", _NUM_GOALS)
        try:
            with warnings.catch_warnings():
                for pattern in _BUILD_NOISE:
                    warnings.filterwarnings("ignore", message=pattern)
                return gym.make(
                    "Meta-World/MT1",
                    env_name=self.task,
                    env_id=0,
                    num_tasks=1,
                    max_episode_steps=self.max_episode_steps,
                    disable_env_checker=True,
                    **self.kwargs,
                )
        finally:
            metaworld._N_GOALS = previous_goals  # type: ignore[attr-defined]
