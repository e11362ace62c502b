"""The training loop: collect one vector step, update the agent, log, evaluate, checkpoint.

It wires the pieces together and holds no maths: the SAC losses live in ``agents/mtsac.py``, the environments in
``envs/metaworld.py``, evaluation in ``rl_mtl/evaluate.py``. A loop step steps every task's environment once
(K transitions) and, after the warm-up, runs ``updates_per_step`` updates.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_mtl.agents.mtsac import MTSAC
from rl_mtl.agents.replay import MultiTaskReplay
from rl_mtl.envs.metaworld import MultiTaskEnv
from rl_mtl.envs.rollout import AsyncCollector, WorkerError, make_rollout_env
from rl_mtl import checkpoint, runs
from rl_mtl.acting import ActingPolicy
from rl_mtl.agent_setup import resolve_device, sac_config
from rl_mtl.compiled import compile_update
from rl_mtl.config import TrainConfig, config_table, save_config
from rl_mtl.evaluate import evaluate_policy
from rl_mtl.logger import Logger
from rl_mtl.routing import build_steps
from rl_mtl.tracking import Tracker, TrackingOptions
from rl_mtl.transfer import StepTransfer

#: evaluation episodes are seeded apart from the training ones (same env, reseeded for the evaluation)
EVAL_SEED_OFFSET = 10_000
#: rate of the running per-task training success a loss weighting sees (about the last 5 episodes of a task)
SUCCESS_EMA = 0.2


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One training run in ``run_dir``; ``resume=True`` continues from ``run_dir/checkpoints/last.pt``.

    ``env`` may be a built environment matching the config (tests and sweeps reuse one; it is not closed here).
    Evaluations run on the training env (the evaluator reseeds it with the evaluation seed, cuts episodes at
    success and restores its goal RNG afterwards), which gives the same numbers as a separate env without
    building and holding a second copy of every task; the training episodes in progress restart afterwards.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                 env: MultiTaskEnv | None = None, tracking: TrackingOptions | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.device)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.ckpt_path = self.run_dir / "checkpoints" / checkpoint.CHECKPOINT_NAME
        checkpoint.remove_stale_temporaries(self.ckpt_path.parent)
        state = checkpoint.load(self.ckpt_path, map_location=self.device) if resume else None
        # W&B (--track) first: a failed wandb.init is one line before any env is built
        self.tracker = None if tracking is None else Tracker(
            self.run_dir, cfg.to_dict(), tracking, resume=resume, start_step=int(state.get("step", 0)) if state else 0)

        self._owns_env = env is None
        self.env: MultiTaskEnv = env if env is not None else make_rollout_env(
            cfg.env, cfg.seed, rollout=cfg.rollout, workers=cfg.workers, **cfg.env_kwargs())
        self.num_tasks = self.env.num_tasks
        self.task_ids = np.arange(self.num_tasks)
        # reward_scale: per-task multipliers of the rewards the agent learns from (logged returns stay the env's)
        self.reward_scale = (None if not cfg.reward_scale else
                             np.broadcast_to(np.asarray(cfg.reward_scale, np.float32), (self.num_tasks,)).copy())
        self.agent = MTSAC(self.env.obs_dim, self.env.action_dim, self.num_tasks, sac_config(cfg), self.device)
        # acting and the step's crossing to the device: once per loop step each (architecture §7)
        self.policy = ActingPolicy(self.agent.actor, self.num_tasks, self.env.obs_dim)
        self.transfer = StepTransfer(self.num_tasks, self.env.obs_dim, self.env.action_dim, self.device)
        # the critic and actor losses reach their optimisers through the method's combiner (architecture §1)
        self.combined = build_steps(cfg.method, cfg.combiner, cfg.combine, cfg.diag_every, cfg.seed,
                                    cfg.weighting, cfg.weighting_opts, cfg.weighted,
                                    combine_params=cfg.combine_params)
        self.agent.reducers.update(self.combined)
        # --compile: the update's tensor work through torch.compile (before a restore: keep_capturable needs it)
        self.compiled = compile_update(self.agent, self.combined) if cfg.compile else None
        # what a loss weighting may condition on (IGBv2's state): recent training success per task, progress t/T
        self.task_success = np.zeros(self.num_tasks)
        self.weighting_info: dict[str, Any] = {"success": self.task_success, "progress": 0.0}
        for step in self.combined.values():
            step.info = self.weighting_info
        # one weighted loss logs under weighting/…, several under weighting/<loss>/…
        self._single_weighting = sum(s.weighting is not None for s in self.combined.values()) == 1
        self.replay = MultiTaskReplay(self.num_tasks, self.env.obs_dim, self.env.action_dim,
                                      cfg.buffer_size // self.num_tasks, self.device, seed=cfg.seed)
        self.action_rng = np.random.default_rng(cfg.seed)
        self.step = 0
        self.updates_from = cfg.warmup_steps  # the loop step from which updates run
        self.evals: list[dict[str, Any]] = []
        self.obs: np.ndarray | None = None  # what the envs show now (to act on next); None: reset them first
        self.skipped_updates = 0  # updates with at least one optimiser step skipped (non-finite loss or gradient)
        self._consecutive_skips = 0
        self._env_state_warned = False  # checkpoints without env state are announced once
        if state is not None:
            self._restore(state)
            self.policy.refresh()  # the acting copy (CUDA) must act with the restored actor, not the initial one
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        self.logger = Logger(self.run_dir, self.env.task_names, cfg.steps, start_step=self.step, progress=progress,
                             mirror=self.tracker.log if self.tracker is not None else None)
        if state is not None:
            self.logger.load_state_dict(state.get("logger"))
            self._write_evals()  # evals.jsonl as of the checkpoint: drops what a killed run wrote after it
        self._warned = {"skipped": 0, "fallbacks": self._fallbacks()}
        if state is None:
            self.logger.text("config", config_table(cfg))
            # the HParams dashboard filters the runs of a sweep by method and option (tensorboard --logdir <sweep>)
            self.logger.hparams(cfg.to_dict(), metrics=("eval/success/mean", "train/success/mean"))
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or until SIGINT/SIGTERM, which checkpoints first); returns the final evaluation."""
        cfg = self.cfg
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        t_interval, steps_interval, sim_time, update_time = time.perf_counter(), 0, 0.0, 0.0
        updates_interval = 0
        # async: send the actions, update while the workers simulate, then collect — the update made during step t
        # samples a replay without transition t (one step of data staleness; the acting actor is never stale)
        overlap = cfg.rollout == "async"
        outcome: dict[str, Any] | None = None  # what the run returns; None while (or if) it raises
        try:
            if self.obs is None:
                self.obs = self.env.reset(seed=cfg.seed + self.step)
            obs = self.obs
            act_obs: torch.Tensor | None = None  # obs on the learner's device, brought by the last step's transfer
            while self.step < cfg.steps and self._stop_signal is None:
                t0 = time.perf_counter()
                self.weighting_info["progress"] = self.step / cfg.steps  # what the loss weighting sees (t/T)
                actions = self._actions(obs, act_obs)
                self.env.step_async(actions)
                t1 = time.perf_counter()
                if overlap:
                    updates_interval += self._update()
                t2 = time.perf_counter()
                result = self.env.step_wait()
                reward = result.reward if self.reward_scale is None else result.reward * self.reward_scale
                moved = self.transfer(obs, actions, reward, result.next_obs, result.terminated, result.obs)
                if result.lost is None:  # a step a rollout worker lost holds placeholder rows: not stored
                    self.replay.add(moved.obs, moved.action, moved.reward, moved.next_obs, moved.terminated)
                obs, act_obs = result.obs, moved.act_obs
                self.obs = obs
                self._record_episodes(result)
                t3 = time.perf_counter()
                if not overlap:
                    updates_interval += self._update()
                sim_time += (t1 - t0) + (t3 - t2)
                update_time += (t2 - t1) + (time.perf_counter() - t3)
                self.step += 1
                steps_interval += 1
                self.logger.progress(self.step)

                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - t_interval
                    self.logger.record("perf/loop_steps_per_s", steps_interval / elapsed)
                    self.logger.record("perf/env_steps_per_s", steps_interval * self.num_tasks / elapsed)
                    self.logger.record("perf/updates_per_s", updates_interval / elapsed)
                    self.logger.record("perf/sim_ms", 1e3 * sim_time / steps_interval)
                    if updates_interval:  # none in the warm-up: no per-update time to report
                        self.logger.record("perf/update_ms", 1e3 * update_time / updates_interval)
                    self.logger.record("perf/replay_mb", self.replay.memory_bytes / 2**20)
                    if isinstance(self.env, AsyncCollector):
                        self.logger.record("perf/worker_restarts", self.env.restarts)
                    self._record_combiners()
                    self._warn_unhealthy()
                    out = self.logger.dump(self.step)
                    self.logger.progress(self.step, sps=steps_interval / elapsed,
                                         train_success=out.get("train/success/mean", float("nan")))
                    t_interval, steps_interval, sim_time, update_time, updates_interval = (
                        time.perf_counter(), 0, 0.0, 0.0, 0)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self.evaluate()
                    obs, act_obs = self.env.reset(), None
                    self.obs = obs
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
                if cfg.max_skipped_updates and self._consecutive_skips >= cfg.max_skipped_updates:
                    outcome = self._stop_diverged()
                    return outcome
            if self._stop_signal is not None:
                self.save()
                self.logger.message(
                    f"interrupted by signal {self._stop_signal} at step {self.step}; checkpoint saved to "
                    f"{self.ckpt_path}; continue with --resume --logdir {self.run_dir}")
                outcome = {"interrupted": True, "step": self.step}
                return outcome
            evaluated = not (self.evals and self.evals[-1]["step"] == self.step)
            final = self._final_evaluation()
            if evaluated:  # the evaluation cut the episodes: a run extended later starts new ones, as after any
                self.obs = self.env.reset()  # periodic evaluation
            self.save()
            runs.write_json(self.run_dir / runs.SUMMARY, self._summary(final))
            outcome = final
            return outcome
        except WorkerError as exc:  # a rollout worker failed past its restarts: stop cleanly, resumable
            self.save()
            message = (f"{exc}; stopped at step {self.step}, checkpoint saved to {self.ckpt_path}; continue with "
                       f"--resume --logdir {self.run_dir}")
            outcome = {"failed": True, "error": message, "step": self.step}
            return outcome
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close(runs.exit_status(outcome))

    def _actions(self, obs: np.ndarray, act_obs: torch.Tensor | None) -> np.ndarray:
        """Uniform random actions (K, A) during the warm-up, then the acting policy's samples."""
        if self.step < self.cfg.warmup_steps:
            return self.action_rng.uniform(-1.0, 1.0, (self.num_tasks, self.env.action_dim)).astype(np.float32)
        return self.policy.act(obs, act_obs)

    def _update(self) -> int:
        """``updates_per_step`` updates once past ``updates_from`` (and with data); refreshes the acting policy.
        Returns the number of updates made."""
        if self.step < self.updates_from or len(self.replay) == 0:
            return 0
        for _ in range(self.cfg.updates_per_step):
            skipped_before = self.agent.skipped_steps
            metrics = self.agent.update(self.replay.sample(self.cfg.batch_size))
            self._record_update(metrics)
            if self.agent.skipped_steps > skipped_before:  # a non-finite loss or gradient: weights left as they were
                self.skipped_updates += 1
                self._consecutive_skips += 1
            else:
                self._consecutive_skips = 0
        self.policy.refresh()
        if self.compiled is not None and (note := self.compiled.note(self.agent.num_updates,
                                                                     self.cfg.actor_update_every)):
            self.logger.message(note)  # the compilation's seconds, once
        return self.cfg.updates_per_step

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """First signal: stop after the current step and checkpoint; a second one aborts at once."""
        if self._stop_signal is not None:
            raise KeyboardInterrupt
        self._stop_signal = signum

    # ------------------------------------------------------------------ logging helpers
    def _record_episodes(self, result: Any) -> None:
        """Per-task and mean return/success of the episodes that ended in this step (and the weighting's view of the
        recent success per task)."""
        for k in np.flatnonzero(result.done if result.lost is None else result.done & ~result.lost):
            self.task_success[k] += SUCCESS_EMA * (float(result.episode_success[k]) - self.task_success[k])
            self.logger.record_task("train/return", k, result.episode_return[k])
            self.logger.record_task("train/success", k, float(result.episode_success[k]))
            self.logger.record("train/return/mean", float(result.episode_return[k]))
            self.logger.record("train/success/mean", float(result.episode_success[k]))

    def _record_update(self, metrics: dict[str, torch.Tensor]) -> None:
        """Per-task vectors (K,) go under ``<key>/<task>`` (+ mean); scalars as they are."""
        for key, value in metrics.items():
            value = torch.as_tensor(value)
            if value.ndim == 1 and value.numel() == self.num_tasks:
                self.logger.record_tasks(key, value)
            else:
                self.logger.record(key, value.float().mean())

    def _record_combiners(self) -> None:
        """Interval diagnostics of each combined loss: ``combiner/<loss>/...`` and ``progress/<loss>/<task>``."""
        for part, step in self.combined.items():
            scalars, vectors = step.pop_stats()
            for key, value in scalars.items():
                self.logger.record(f"combiner/{part}/{key}", value)
            for key, vector in vectors.items():
                prefix = f"progress/{part}" if key == "progress" else f"combiner/{part}/{key}"
                self.logger.record_tasks(prefix, vector, mean=key not in ("weight", "direction_share"))
            if step.weighting is not None:
                prefix = "weighting" if self._single_weighting else f"weighting/{part}"
                scalars, vectors = step.weighting.pop_stats()  # interval means since the last log
                for key, value in scalars.items():
                    self.logger.record(f"{prefix}/{key}", value)
                for key, vector in vectors.items():  # λ's task mean is 1 by construction: not logged
                    self.logger.record_tasks(f"{prefix}/{key}", vector, mean=key not in ("lambda", "greedy_lambda"))

    # ------------------------------------------------------------------ health: skipped updates, fallbacks
    def _fallbacks(self) -> dict[str, int]:
        """Combiner fallbacks so far (solver failure or a degenerate Gram → the mean direction), per loss."""
        return {part: int(step.combiner.fallbacks) for part, step in self.combined.items()}

    def _warn_unhealthy(self) -> None:
        """A console line for every log interval that skipped updates or fell back in a combiner."""
        fallbacks = self._fallbacks()
        skipped = self.skipped_updates - self._warned["skipped"]
        fell = {p: n - self._warned["fallbacks"].get(p, 0) for p, n in fallbacks.items()}
        parts = [f"{skipped} update(s) skipped for a non-finite loss or gradient"] if skipped else []
        parts += [f"{n} {p} combiner fallback(s) to the mean" for p, n in fell.items() if n > 0]
        if parts:
            self.logger.message(f"warning: step {self.step}: {'; '.join(parts)} since the last log "
                                f"({self.skipped_updates} skipped in all)")
        self._warned = {"skipped": self.skipped_updates, "fallbacks": fallbacks}

    def _stop_diverged(self) -> dict[str, Any]:
        """``max_skipped_updates`` consecutive skipped updates: checkpoint, record the stop, return the failure."""
        reason = (f"{self._consecutive_skips} consecutive updates skipped for non-finite losses or gradients "
                  f"(max_skipped_updates={self.cfg.max_skipped_updates}): the run diverged")
        self.save()
        runs.write_json(self.run_dir / runs.SUMMARY, {**self._summary(None), "status": "diverged",
                                                      "stop_reason": reason})
        message = (f"stopped at step {self.step}: {reason}; checkpoint saved to {self.ckpt_path} (try a lower "
                   "learning rate or grad_clip)")
        return {"diverged": True, "error": message, "step": self.step}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Deterministic-policy success per task on the evaluation env; logged under ``eval/success/``."""
        t0 = time.perf_counter()
        result = evaluate_policy(self._deterministic_policy, env=self.env, episodes=self.cfg.eval_episodes,
                                 seed=self.cfg.seed + EVAL_SEED_OFFSET)
        self.logger.scalars({f"eval/success/{k}": v for k, v in result.items()}, self.step)
        self.logger.scalars({"perf/eval_s": time.perf_counter() - t0}, self.step)
        record = {"step": self.step, **result}
        self.evals.append(record)
        with open(self.run_dir / "evals.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        self.logger.progress(self.step, eval_success=result["mean"])
        self.logger.message(f"step {self.step}: eval success {result['mean']:.3f}")
        return result

    def _final_evaluation(self) -> dict[str, float]:
        """The end-of-training evaluation; a run resumed at its last step reuses the one it already has there
        (same seed, same policy: the numbers would be identical) instead of recording it twice."""
        if self.evals and self.evals[-1]["step"] == self.step:
            return {k: v for k, v in self.evals[-1].items() if k != "step"}
        return self.evaluate()

    def _deterministic_policy(self, obs: np.ndarray) -> np.ndarray:
        return self.agent.act(obs, self.task_ids[: len(obs)], deterministic=True)

    def _write_evals(self) -> None:
        """Rewrite ``evals.jsonl`` from the evaluations the trainer holds (on resume: those of the checkpoint)."""
        path = self.run_dir / "evals.jsonl"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in self.evals))
        tmp.replace(path)

    def _summary(self, final: dict[str, float] | None) -> dict[str, Any]:
        """``summary.json``: the final evaluation (the reported score), the max over training (labelled), and the
        run's health: skipped updates and combiner fallbacks."""
        best = max(self.evals, key=lambda e: e["mean"]) if self.evals else {"mean": float("nan"), "step": -1}
        return {"status": "finished", "final": final, "final_step": self.step, "max_over_training": best["mean"],
                "max_over_training_step": best["step"], "skipped_updates": self.skipped_updates,
                "combiner_fallbacks": self._fallbacks(), "history": self.evals}

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Atomically write everything the next loop step depends on (architecture §9): agent, optimisers, combiner and
        weighting state, counters, every RNG, each environment's exact state and the observation to act on, the
        logger's unwritten interval sums; and, with ``save_replay``, the replay data in its own file.

        The replay goes to ``replay-<step>.pt`` first and ``last.pt`` names it, so a kill between the two writes
        leaves the previous, consistent pair; older replay files are removed once ``last.pt`` is in place.
        """
        replay_file = None
        if self.cfg.save_replay:
            replay_file = checkpoint.replay_name(self.step)
            replay = {"format_version": checkpoint.FORMAT_VERSION, "step": self.step,
                      "replay": self.replay.state_dict(include_data=True)}
            checkpoint.save_atomic(replay, self.ckpt_path.parent / replay_file)
        state = {
            "format_version": checkpoint.FORMAT_VERSION,
            "step": self.step,
            "updates_from": self.updates_from,
            "config": self.cfg.to_dict(),
            "agent": self.agent.full_state_dict(),
            "combined": {part: step.state_dict() for part, step in self.combined.items()},
            "replay": self.replay.state_dict(include_data=False),
            "replay_file": replay_file,
            "rng": checkpoint.rng_state(),
            "action_rng": self.action_rng.bit_generator.state,
            "evals": self.evals,
            "task_success": self.task_success.copy(),
            "env": self._env_state(),
            "obs": None if self.obs is None else np.array(self.obs, copy=True),
            "logger": self.logger.state_dict(),
            "skipped_updates": self.skipped_updates,
            "consecutive_skips": self._consecutive_skips,
        }
        checkpoint.save_atomic(state, self.ckpt_path)
        checkpoint.remove_replays(self.ckpt_path.parent, keep=replay_file)

    def _env_state(self) -> list[Any] | None:
        """Every task env's exact state, or None where the envs cannot be snapshot (gymnasium's AsyncVectorEnv)."""
        try:
            return self.env.get_state()
        except RuntimeError as exc:
            if not self._env_state_warned:
                self.logger.message(f"warning: checkpoints hold no env state ({exc}); a resumed run starts new "
                                    "episodes")
                self._env_state_warned = True
            return None

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; without saved replay data, refill with the restored policy first."""
        try:
            self.agent.load_full_state_dict(state["agent"])
            for part, step in self.combined.items():
                step.load_state_dict(state["combined"][part])
            self.replay.load_state_dict(state["replay"])
            self.step = int(state["step"])
            self.updates_from = int(state["updates_from"])
            self.evals = list(state["evals"])
            checkpoint.set_rng_state(state["rng"])
            self.action_rng.bit_generator.state = state["action_rng"]
            self.task_success[:] = state.get("task_success", 0.0)
            self.skipped_updates = int(state.get("skipped_updates", 0))
            self._consecutive_skips = int(state.get("consecutive_skips", 0))
            if state.get("env") is not None and state.get("obs") is not None:
                self.env.set_state(state["env"])
                self.obs = np.array(state["obs"], dtype=np.float32)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise checkpoint.CheckpointError(
                f"checkpoint file {self.ckpt_path} does not match this run's config "
                f"({checkpoint.short_message(exc)})") from None
        if self.obs is None:
            print(f"warning: {self.ckpt_path} holds no env state; the resumed run starts new episodes",
                  file=sys.stderr)
        self._restore_replay(state)
        if len(self.replay) == 0 and self.step < self.cfg.steps:
            # the replay was not saved: collect warmup_steps of fresh data with the restored policy first
            self.updates_from = self.step + self.cfg.warmup_steps

    def _restore_replay(self, state: dict[str, Any]) -> None:
        """Load the replay file ``last.pt`` names, if it is there and was written at the same step; a missing or
        mismatched one is dropped with a one-line warning (the run then refills its replay)."""
        name = state.get("replay_file")
        if name is None:
            return
        path = self.ckpt_path.parent / name
        problem = None
        if not path.is_file():
            problem = "is missing"
        else:
            replay = checkpoint.load(path, map_location=self.device)
            if int(replay.get("step", -1)) != self.step:
                problem = f"is from step {replay.get('step')}, the checkpoint from step {self.step}"
            else:
                self.replay.load_state_dict(replay["replay"])
        if problem is not None:
            print(f"warning: replay file {path} {problem}; resuming without it (the replay refills first)",
                  file=sys.stderr)

    def close(self, exit_status: int = 0) -> None:
        """Close the environments, the logger and the W&B run (marked failed unless ``exit_status`` is 0, so a
        diverged, failed or interrupted run does not show as finished there)."""
        self.logger.close()
        if self.tracker is not None:
            self.tracker.finish(exit_status)
        if self._owns_env:
            self.env.close()
