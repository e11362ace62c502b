"""Score a policy on a multi-task benchmark with Meta-World's protocol (architecture §8).

Every task runs ``episodes`` episodes, all tasks stepping in parallel; an episode ends at its first success
(``terminate_on_success``) or at the time limit, and counts as a success if the success flag was reached at any
step.  Goals are drawn from the task's 50 at every reset unless the env was built with fixed goals.

The evaluator cuts episodes at success itself (resetting only that task's sub-env), so it gives the same numbers on
an env it builds and on a reused training env that does not terminate on success.  A reused env comes back with
its goal RNG restored, so evaluations do not perturb the training goal sequence, but its episodes were cut:
call ``env.reset()`` before resuming training on it.

Two seeds, two roles.  The *build seed* is the seed a benchmark is built with (``make_env(name, build_seed)``):
Meta-World draws each task's goals then (``metaworld.MT10(seed=...)``; for MT1 the ``seed`` of ``gym.make``), 50
per task, or the one goal of ``fixed_goals``.  The *evaluation seed* (``seed`` below) reseeds every sub-env at the
evaluation's first reset and so picks which of those goals each episode gets.  A trained policy is scored on the
goals it trained on: the build seed of a run is its training seed (``cfg.seed``), as in the trainer, which
evaluates on its training env with evaluation seed ``cfg.seed + EVAL_SEED_OFFSET`` (10000).  So
``python -m rl_mtl.evaluate --run DIR --seed <train seed + 10000> --episodes <eval_episodes>`` reproduces the
run's final evaluation (``summary.json["final"]``) exactly, and any other ``--seed`` gives fresh goal draws from
the run's own goals.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rl_mtl.envs.metaworld import MultiTaskEnv, MultiTaskVectorEnv, make_env
from rl_mtl.cli import program_name

#: a batched policy: (N, obs_dim) observations, one row per task → (N, action_dim) actions
Policy = Callable[[np.ndarray], np.ndarray]

#: ``make_env`` options an evaluation config may override
_ENV_OPTIONS = ("max_episode_steps", "reward_version", "fixed_goals", "one_hot", "vector_strategy")


@dataclasses.dataclass
class EvaluationResult:
    """Per-task evaluation outcome; every mapping holds each task name and ``"mean"`` (mean over tasks)."""

    success_rate: dict[str, float]
    mean_return: dict[str, float]
    mean_length: dict[str, float]
    episodes: int


def evaluate_policy(
    policy: Policy,
    env: str | MultiTaskEnv = "mt10",
    episodes: int = 10,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
    build_seed: int | None = None,
) -> dict[str, float]:
    """Success rate of ``policy`` per task (task name → rate) plus ``"mean"`` over tasks.

    ``env`` is a benchmark name (built here with ``config``'s ``make_env`` overrides and ``build_seed``, closed
    afterwards) or a built :class:`MultiTaskVectorEnv` (reused, not closed: its goals are those it was built with).
    ``seed`` is the evaluation seed (resets and goal draws); ``build_seed`` the seed the benchmark's goals are
    drawn from — pass the policy's training seed to score it on the goals it trained on; ``None`` (the default,
    kept for compatibility) builds with ``seed``.  Same seeds and deterministic policy → same result.
    """
    return evaluate_detailed(policy, env, episodes=episodes, seed=seed, config=config,
                             build_seed=build_seed).success_rate


def evaluate_detailed(
    policy: Policy,
    env: str | MultiTaskEnv = "mt10",
    episodes: int = 10,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
    build_seed: int | None = None,
) -> EvaluationResult:
    """Like :func:`evaluate_policy`, also returning per-task mean episode return and length (for logging)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not isinstance(env, str):  # a built env: in process or an envs.rollout.AsyncCollector
        if config:
            raise ValueError("config overrides apply only when env is a name; got a built env and a config")
        if build_seed is not None:
            raise ValueError("build_seed applies only when env is a name; a built env keeps the goals it was "
                             "built with")
        state = env.rng_state()
        try:
            return _run(policy, env, episodes, seed)
        finally:
            env.set_rng_state(state)
    options = dict(config or {})
    unknown = sorted(set(options) - set(_ENV_OPTIONS))
    if unknown:
        raise ValueError(f"unknown evaluation config keys {unknown}; valid: {list(_ENV_OPTIONS)}")
    with make_env(env, seed if build_seed is None else build_seed, terminate_on_success=True, **options) as built:
        return _run(policy, built, episodes, seed)


def _run(policy: Policy, env: MultiTaskEnv, episodes: int, seed: int) -> EvaluationResult:
    """Run exactly ``episodes`` episodes per task on ``env``, cutting each at its first success."""
    k = env.num_tasks
    counts = np.zeros(k, dtype=np.int64)
    successes = np.zeros(k, dtype=np.int64)
    return_sums = np.zeros(k, dtype=np.float64)
    length_sums = np.zeros(k, dtype=np.int64)
    # the evaluator's own episode accumulators: a reused env's episodes do not end at success
    ep_return = np.zeros(k, dtype=np.float64)
    ep_length = np.zeros(k, dtype=np.int64)
    obs = env.reset(seed=seed)
    # every episode ends by the time limit at the latest; the bound turns a broken env into an error, not a hang
    max_steps = episodes * (env.max_episode_steps + 1) + 1
    steps = 0
    while np.any(counts < episodes):
        if steps >= max_steps:
            raise RuntimeError(f"evaluation did not finish within {max_steps} steps (counts {counts.tolist()})")
        steps += 1
        actions = np.asarray(policy(obs), dtype=np.float32)
        if actions.shape != (k, env.action_dim):
            raise ValueError(f"policy returned shape {actions.shape}, expected {(k, env.action_dim)}")
        result = env.step(actions)
        ep_return += result.reward
        ep_length += 1
        ended = result.done | result.success
        counting = ended & (counts < episodes)
        successes[counting] += result.success[counting]
        return_sums[counting] += ep_return[counting]
        length_sums[counting] += ep_length[counting]
        counts[counting] += 1
        ep_return[ended] = 0.0
        ep_length[ended] = 0
        obs = result.obs
        # an episode that succeeded without the env ending it is cut here; tasks already done keep running
        # unobserved (the vector env steps all tasks) so they need no reset
        cut = result.success & ~result.done & (counts < episodes)
        if np.any(cut):
            obs = env.reset_tasks(cut)

    names = env.task_names
    rates = successes / episodes
    returns = return_sums / episodes
    lengths = length_sums / episodes
    return EvaluationResult(
        success_rate=_with_mean(names, rates),
        mean_return=_with_mean(names, returns),
        mean_length=_with_mean(names, lengths),
        episodes=episodes,
    )


def _with_mean(names: list[str], values: np.ndarray) -> dict[str, float]:
    """``{task: value, ..., "mean": mean over tasks}`` with plain floats."""
    out = {name: float(v) for name, v in zip(names, values, strict=True)}
    out["mean"] = float(np.mean(values))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Command line: `python -m rl_mtl.evaluate --run DIR | --checkpoint FILE | --sweep DIR [--episodes 50] [--seeds N]`
PROG = program_name("rl_mtl.evaluate")  # rl-mtl-evaluate when run by that console script
DEFAULT_EPISODES = 10
#: Meta-World's official evaluation: 50 episodes per task (goal variations), success = reached at any step
OFFICIAL_EPISODES = 50


#: what every training checkpoint holds (``Trainer.save``) and evaluation reads
TRAINING_KEYS = ("step", "config", "agent")


def load_training_state(checkpoint_file: Path) -> dict[str, Any]:
    """A training checkpoint's contents; any other rl_mtl torch file (a ``replay-<step>.pt`` beside it, a dict without
    the keys of a checkpoint) is a :class:`~rl_mtl.checkpoint.CheckpointError` naming the file and the right one."""
    from rl_mtl import checkpoint

    state = checkpoint.load(checkpoint_file, map_location="cpu")
    missing = [key for key in TRAINING_KEYS if key not in state]
    if not missing and isinstance(state["config"], dict):
        return state
    what = ("it holds a run's replay data" if "replay" in state and "agent" not in state
            else f"it has no {', '.join(missing) or 'config mapping'}")
    sibling = Path(checkpoint_file).parent / checkpoint.CHECKPOINT_NAME
    right = (f"this run's is {sibling}" if sibling.is_file() and sibling != Path(checkpoint_file)
             else f"a run's is <run>/checkpoints/{checkpoint.CHECKPOINT_NAME}")
    raise checkpoint.CheckpointError(f"checkpoint file {checkpoint_file} is not a training checkpoint ({what}); "
                                     f"{right}")


def load_agent(checkpoint_file: Path, device: str = "cpu",
               state: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The agent and run config stored in a training checkpoint (``runs/<run>/checkpoints/last.pt``); ``state``:
    its contents when already read (:func:`load_training_state`)."""
    from rl_mtl.agents.mtsac import MTSAC
    from rl_mtl import checkpoint
    from rl_mtl.config import ConfigError, build_config, num_tasks
    from rl_mtl.agent_setup import resolve_device, sac_config

    if state is None:
        state = load_training_state(checkpoint_file)
    try:
        cfg = build_config(base=state["config"])
    except ConfigError as exc:
        raise checkpoint.CheckpointError(f"checkpoint file {checkpoint_file} records an invalid config "
                                         f"({exc})") from None
    dev = resolve_device(device)
    obs_dim = 39 + (num_tasks(cfg.env) if cfg.one_hot else 0)
    agent = MTSAC(obs_dim, 4, num_tasks(cfg.env), sac_config(cfg), dev)
    try:
        agent.load_full_state_dict(state["agent"])
    except (KeyError, RuntimeError) as exc:
        raise checkpoint.CheckpointError(f"checkpoint file {checkpoint_file} has no matching agent ({exc})") from None
    agent.requires_grad_(False)  # acting only (never torch.set_grad_enabled: that would leak into the caller)
    return agent, cfg


def format_table(result: Mapping[str, float]) -> str:
    """Per-task success as an aligned text table, the mean last."""
    width = max(len(k) for k in result)
    rows = [f"{'task':<{width}}  success", f"{'-' * width}  -------"]
    rows += [f"{k:<{width}}  {v:7.3f}" for k, v in result.items() if k != "mean"]
    rows.append(f"{'mean':<{width}}  {result['mean']:7.3f}")
    return "\n".join(rows)


def evaluate_seeds(
    policy: Policy,
    env: str | MultiTaskEnv,
    episodes: int,
    seeds: Sequence[int],
    config: Mapping[str, Any] | None = None,
    build_seed: int | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Success per task (and ``"mean"``) averaged over evaluation ``seeds``, and each seed's own result.

    Every seed runs ``episodes`` episodes per task, so the average weighs all ``len(seeds) * episodes`` equally.
    ``config`` and ``build_seed`` as in :func:`evaluate_policy` (with a name and no ``build_seed``, each evaluation
    seed builds its own benchmark; pass the training seed to score every seed on the training goals).
    """
    if not seeds:
        raise ValueError("seeds must not be empty")
    per_seed = [evaluate_policy(policy, env, episodes=episodes, seed=s, config=config, build_seed=build_seed)
                for s in seeds]
    return _average(per_seed), per_seed


def _average(results: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise mean of equally keyed results (one per evaluation seed)."""
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


def _agent_policy(agent: Any) -> Policy:
    """The deterministic (mean) action of a loaded agent, one observation row per task."""
    task_ids = np.arange(agent.num_tasks)
    return lambda obs: agent.act(obs, task_ids[: len(obs)], deterministic=True)


def evaluate_checkpoint(
    ckpt: Path,
    episodes: int,
    seeds: Sequence[int],
    device: str = "cpu",
    envs: dict[str, MultiTaskVectorEnv] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint; the ``eval.json`` payload: checkpoint, step, episodes, ``train_seed`` (the build
    seed), ``seed``/``seeds`` (evaluation seeds), ``success`` (per task and ``"mean"``, averaged over the seeds),
    ``return`` and ``length`` (mean episode return and length, likewise) and ``per_seed`` (each seed's success).

    The benchmark is built with the run's training seed (``cfg.seed``), so the policy is scored on the goals it
    trained on (the one goal per task of ``fixed_goals`` included); the evaluation seeds only reseed resets and goal
    draws.  With evaluation seed ``cfg.seed + 10000`` and ``cfg.eval_episodes`` episodes this reproduces the
    trainer's own final evaluation.  One env serves every seed; with ``envs`` (a cache keyed by the env name,
    training seed and env options, closed by the caller) checkpoints of one benchmark and seed share it.
    """
    if not seeds:
        raise ValueError("seeds must not be empty")
    state = load_training_state(ckpt)
    agent, cfg = load_agent(ckpt, device, state)
    step = int(state["step"])
    cache: dict[str, MultiTaskVectorEnv] = {} if envs is None else envs
    key = json.dumps([cfg.env, cfg.seed, cfg.env_kwargs()], sort_keys=True)
    try:
        if key not in cache:
            cache[key] = make_env(cfg.env, cfg.seed, terminate_on_success=True, **cfg.env_kwargs())
        policy = _agent_policy(agent)
        details = [evaluate_detailed(policy, cache[key], episodes=episodes, seed=s) for s in seeds]
    finally:
        if envs is None:
            for env in cache.values():
                env.close()
    per_seed = [d.success_rate for d in details]
    return {"checkpoint": str(ckpt), "step": step, "episodes": episodes, "train_seed": cfg.seed, "seed": seeds[0],
            "seeds": list(seeds), "success": _average(per_seed),
            "return": _average([d.mean_return for d in details]),
            "length": _average([d.mean_length for d in details]), "per_seed": per_seed}


def _evaluate_sweep(root: Path, episodes: int, seeds: Sequence[int], device: str) -> int:
    """Evaluate the final checkpoint of every finished run under ``root``, writing ``<run>/eval.json``.

    Each run is scored on the goals of its own training seed; runs sharing benchmark, training seed and env options
    (the methods of one seed) share one built env."""
    from rl_mtl import checkpoint, runs

    envs: dict[str, MultiTaskVectorEnv] = {}
    done = 0
    try:
        for run in runs.find_runs(root):
            summary = runs.read_json(run / runs.SUMMARY)
            if summary is None or not runs.checkpoint_path(run).is_file():
                print(f"skipped {run}: not finished (no {runs.SUMMARY} or checkpoint)")
                continue
            try:
                payload = evaluate_checkpoint(runs.checkpoint_path(run), episodes, seeds, device, envs)
            except checkpoint.CheckpointError as exc:
                print(f"skipped {run}: {exc}")
                continue
            runs.write_json(run / runs.EVAL, payload)
            done += 1
            print(f"{run}: success {payload['success']['mean']:.3f} at step {payload['step']} "
                  f"({episodes} episodes x {len(seeds)} seeds per task)", flush=True)
    finally:
        for env in envs.values():
            env.close()
    print(f"evaluated {done} run(s); aggregate with: python -m rl_mtl.report {root} --source eval")
    return 0


def check_output(out: Path, flag: str, hint: str = "") -> None:
    """Fail now, not after the evaluation, when ``out`` cannot be written: it must not be a folder, and its folder
    must exist and be writable (one line naming ``flag``, exit 2)."""
    from rl_mtl.cli import fail

    folder = out.parent
    if out.is_dir():
        problem = "it is a directory; give a file name such as " + str(out / "eval.json")
    elif not folder.is_dir():
        problem = f"folder {folder} does not exist"
    elif not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        problem = f"{'it' if out.exists() else f'folder {folder}'} is not writable"
    else:
        return
    fail(PROG, f"{flag}: cannot write {out}: {problem}{hint}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rl_mtl.evaluate --run DIR | --checkpoint FILE | --sweep DIR [--episodes N] [--seed S]
    [--seeds N]``."""
    from rl_mtl import checkpoint, runs
    from rl_mtl.agent_setup import check_flags, resolve_device
    from rl_mtl.cli import Parser, fail
    from rl_mtl.config import ConfigError

    parser = Parser(prog=PROG, description="Success rate per task of a trained policy (deterministic actions).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory (uses its checkpoints/last.pt)")
    source.add_argument("--checkpoint", help="training checkpoint file (a run's checkpoints/last.pt)")
    source.add_argument("--sweep", help="sweep directory: evaluate every finished run's final checkpoint and write "
                        "<run>/eval.json (read by python -m rl_mtl.report DIR --source eval)")
    parser.add_argument("--episodes", type=int, help=f"episodes per task and seed (default {DEFAULT_EPISODES}; "
                        f"Meta-World's official protocol: {OFFICIAL_EPISODES})")
    parser.add_argument("--protocol", choices=("default", "official"), default="default",
                        help=f"official: Meta-World's protocol, {OFFICIAL_EPISODES} episodes per task")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (resets and which of the run's goals "
                        "each episode gets; the goals themselves are those of the run's training seed); the first "
                        "of --seeds; <run seed>+10000 reproduces the run's own final evaluation")
    parser.add_argument("--seeds", type=int, default=1, help="evaluate with seeds seed .. seed+N-1 and average "
                        "(fresh: training evaluations use <run seed>+10000)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    parser.add_argument("--out", help="where to write the JSON result (default: <run>/eval.json)")
    args = parser.parse_args(argv)
    episodes = args.episodes if args.episodes is not None else (
        OFFICIAL_EPISODES if args.protocol == "official" else DEFAULT_EPISODES)
    if episodes < 1:
        fail(PROG, f"--episodes: must be an integer >= 1, got {episodes}")
    if args.protocol == "official" and episodes != OFFICIAL_EPISODES:
        fail(PROG, f"--episodes: the official protocol uses {OFFICIAL_EPISODES}, got {episodes}")
    if args.seeds < 1:
        fail(PROG, f"--seeds: must be an integer >= 1, got {args.seeds}")
    try:  # training's checks and messages for --seed and --device, and CUDA's presence, before any loading
        check_flags(seed=args.seed, device=args.device)
        resolve_device(args.device)
    except ConfigError as exc:
        fail(PROG, str(exc))
    seeds = list(range(args.seed, args.seed + args.seeds))
    if args.sweep:
        if args.out:
            fail(PROG, "--out: not with --sweep (each run's result goes to <run>/eval.json)")
        if not Path(args.sweep).is_dir():
            fail(PROG, f"--sweep: {args.sweep} is not a directory")
        if not runs.find_runs(Path(args.sweep)):  # as rl_mtl.report says of the same folder
            fail(PROG, f"--sweep: no runs under {args.sweep} (no {runs.CONFIG} or {runs.STATUS} found)")
        return _evaluate_sweep(Path(args.sweep), episodes, seeds, args.device)
    flag = "--checkpoint" if args.checkpoint else "--run"
    ckpt = Path(args.checkpoint) if args.checkpoint else Path(args.run) / "checkpoints" / checkpoint.CHECKPOINT_NAME
    out = Path(args.out) if args.out else (Path(args.run) if args.run else ckpt.parent.parent) / runs.EVAL
    if args.out:
        check_output(out, "--out")
    elif out.parent.is_dir():  # a missing run directory is reported by the checkpoint's loading
        check_output(out, flag, "; pass --out FILE")
    try:
        payload = evaluate_checkpoint(ckpt, episodes, seeds, args.device)
    except checkpoint.CheckpointError as exc:
        fail(PROG, f"{flag}: {exc}")
    except ConfigError as exc:
        fail(PROG, str(exc))
    print(format_table(payload["success"]))
    out.write_text(json.dumps(payload, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

