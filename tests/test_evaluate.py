"""The evaluator end to end: Meta-World's scripted experts score high, zero actions score nothing, results are
deterministic, and a built (training) env is reused with the same numbers as a dedicated one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from metaworld.policies import ENV_POLICY_MAP

from rl_mtl.envs import MultiTaskVectorEnv, make_env
from rl_mtl.evaluate import EvaluationResult, evaluate_detailed, evaluate_policy, evaluate_seeds

EPISODES = 3
STEPS = 500
#: Meta-World's own scripted peg-insert-side policy fails some goals (a raw Meta-World loop, seed 0, 20 episodes:
#: 0.8, seed 1: 0.95); the other experts solved every goal in our runs
EXPERT_FLOOR = {"peg-insert-side-v3": 0.6}
#: the scripted policies warn that their gains exceed the action bounds (the env clips): noise here
pytestmark = pytest.mark.filterwarnings("ignore:Constant.*too high:UserWarning")


class Expert:
    """Meta-World's scripted policy of each task, applied row by row (row k = task k) on the 39-dim state."""

    def __init__(self, task_names: list[str]) -> None:
        self.policies = [ENV_POLICY_MAP[name]() for name in task_names]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.stack([p.get_action(o[:39]) for p, o in zip(self.policies, obs, strict=True)])


def zero_policy(obs: np.ndarray) -> np.ndarray:
    """Stand still: a floor that no MT10 task should pass."""
    return np.zeros((obs.shape[0], 4), dtype=np.float32)


def linear_policy(obs: np.ndarray) -> np.ndarray:
    """A fixed deterministic policy that moves the arm, so returns depend on the goals drawn."""
    weights = np.random.default_rng(0).normal(size=(obs.shape[1], 4))
    return np.tanh(obs @ weights)


@pytest.fixture(scope="module")
def train_env() -> Iterator[MultiTaskVectorEnv]:
    """An MT10 env built like a training env: no terminate_on_success, 500-step episodes."""
    with make_env("mt10", 0) as env:
        yield env


@pytest.fixture(scope="module")
def short_env() -> Iterator[MultiTaskVectorEnv]:
    """A one-task env with 20-step episodes, for cheap determinism checks (MT10 sub-envs behave alike)."""
    with make_env("mt1:reach-v3", 1, max_episode_steps=20) as env:
        yield env


@pytest.fixture(scope="module")
def expert_by_name(train_env: MultiTaskVectorEnv) -> dict[str, float]:
    """Expert success on an MT10 env the evaluator builds itself (terminate_on_success=True)."""
    expert = Expert(train_env.task_names)
    return evaluate_policy(expert, "mt10", episodes=EPISODES, seed=0, config={"max_episode_steps": STEPS})


def test_expert_scores_high(expert_by_name: dict[str, float], train_env: MultiTaskVectorEnv) -> None:
    assert list(expert_by_name) == [*train_env.task_names, "mean"]
    for name in train_env.task_names:
        assert expert_by_name[name] >= EXPERT_FLOOR.get(name, 0.9), (name, expert_by_name)
    assert expert_by_name["mean"] >= 0.9


def test_reused_env_matches_dedicated_env(expert_by_name: dict[str, float], train_env: MultiTaskVectorEnv) -> None:
    """The training env does not terminate on success: the evaluator cuts episodes itself, with equal results."""
    assert not train_env.terminate_on_success
    result = evaluate_detailed(Expert(train_env.task_names), train_env, episodes=EPISODES, seed=0)
    assert result.success_rate == expert_by_name
    assert result.episodes == EPISODES
    # episodes stop at success, far before the 500-step limit
    assert result.mean_length["reach-v3"] < 200
    assert set(result.mean_return) == set(expert_by_name)


def test_zero_actions_score_nothing(train_env: MultiTaskVectorEnv) -> None:
    result = evaluate_detailed(zero_policy, train_env, episodes=1, seed=0)
    # measured: no MT10 task is solved by standing still (3 episodes, seed 0: all 0.0)
    assert result.success_rate["mean"] <= 0.3
    assert all(rate == 0.0 for rate in result.success_rate.values()), result.success_rate
    assert all(length == 500 for length in result.mean_length.values())


def test_deterministic_and_seed_dependent(short_env: MultiTaskVectorEnv) -> None:
    first = evaluate_detailed(linear_policy, short_env, episodes=5, seed=5)
    again = evaluate_detailed(linear_policy, short_env, episodes=5, seed=5)
    other = evaluate_detailed(linear_policy, short_env, episodes=5, seed=6)
    assert first == again
    assert first.mean_return != other.mean_return


def test_reused_env_keeps_its_goal_sequence(short_env: MultiTaskVectorEnv) -> None:
    """Evaluating a training env restores its goal RNG, so training goals do not depend on evaluations."""
    state = short_env.rng_state()
    expected = short_env.reset()
    short_env.set_rng_state(state)
    evaluate_policy(zero_policy, short_env, episodes=1, seed=9)
    np.testing.assert_array_equal(short_env.reset(), expected)


def test_bad_arguments(short_env: MultiTaskVectorEnv) -> None:
    with pytest.raises(ValueError, match="episodes"):
        evaluate_policy(zero_policy, short_env, episodes=0)
    with pytest.raises(ValueError, match="config"):
        evaluate_policy(zero_policy, short_env, config={"max_episode_steps": 10})
    with pytest.raises(ValueError, match="unknown evaluation config keys"):
        evaluate_policy(zero_policy, "mt10", config={"episode_len": 10})
    with pytest.raises(ValueError, match="policy returned shape"):
        evaluate_policy(lambda obs: np.zeros((3, 4)), short_env, episodes=1)


@pytest.mark.slow
def test_expert_full_protocol(train_env: MultiTaskVectorEnv) -> None:
    """Ten episodes per task (500-step limit) on the reused env (~30 s of stepping on 2 cores)."""
    rates = evaluate_policy(Expert(train_env.task_names), train_env, episodes=10, seed=1)
    for name in train_env.task_names:
        assert rates[name] >= EXPERT_FLOOR.get(name, 0.9), (name, rates)


def test_evaluate_seeds_averages_fresh_seeds(short_env: MultiTaskVectorEnv) -> None:
    """``--seeds``: each seed's result is the single-seed evaluation; the average weighs them equally."""
    mean, per_seed = evaluate_seeds(linear_policy, short_env, episodes=2, seeds=[3, 4])
    assert per_seed == [evaluate_policy(linear_policy, short_env, episodes=2, seed=s) for s in (3, 4)]
    assert mean == {k: (per_seed[0][k] + per_seed[1][k]) / 2 for k in mean}
    with pytest.raises(ValueError, match="seeds"):
        evaluate_seeds(linear_policy, short_env, episodes=1, seeds=[])


@pytest.mark.parametrize("argv, message", [
    (["--run", "r", "--protocol", "official", "--episodes", "10"], "--episodes: the official protocol uses 50"),
    (["--run", "r", "--seeds", "0"], "--seeds: must be an integer >= 1"),
    (["--sweep", "nowhere"], "--sweep: nowhere is not a directory"),
    (["--sweep", ".", "--out", "x.json"], "--out: not with --sweep"),
    (["--run", "r", "--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
    (["--sweep", "nowhere", "--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
    (["--run", "r", "--device", "gpu"], "--device: 'gpu' is not one of auto, cpu, cuda"),
    (["--sweep", "nowhere", "--device", "gpu"], "--device: 'gpu' is not one of auto, cpu, cuda"),
    # checked before the run is even read (the old code failed only after the whole evaluation)
    (["--run", "r", "--out", "/nonexistent/dir/x.json"],
     "--out: cannot write /nonexistent/dir/x.json: folder /nonexistent/dir does not exist"),
    (["--run", "r", "--out", "."], "--out: cannot write .: it is a directory"),
])
def test_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from rl_mtl.evaluate import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--device", "gpu")])
def test_cli_flag_errors_match_training(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--seed`` and ``--device`` are rejected with the very line ``rl_mtl.train`` gives (after the prog name)."""
    from rl_mtl.evaluate import main
    from rl_mtl.train import main as train_main

    lines = []
    for entry, argv in ((main, ["--run", "r", flag, value]), (train_main, [flag, value])):
        with pytest.raises(SystemExit) as info:
            entry(argv)
        assert info.value.code == 2
        lines.append(capsys.readouterr().err.strip().split(": error: ", 1)[1])
    assert lines[0] == lines[1]


def test_cli_empty_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder without runs is an error, as ``rl_mtl.report`` says of it (it used to "evaluate 0 run(s)", exit 0)."""
    from rl_mtl.evaluate import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        main(["--sweep", str(tmp_path / "empty")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"--sweep: no runs under {tmp_path / 'empty'}" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------
# Offline evaluation of a trained run: the benchmark is built with the run's training seed (its goals), the
# evaluation seed only reseeds the resets.  Tiny MT1 runs with a training seed != 0 so that the seed matters.
TRAIN_SEED = 3
OTHER_TRAIN_SEED = 4
EVAL_EPISODES = 3
TRAIN_ARGS = ["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--steps", "30", "--set", "hidden_sizes=16,16",
              "--set", "warmup_steps=10", "--set", "batch_size=16", "--set", "eval_every=0",
              "--set", f"eval_episodes={EVAL_EPISODES}", "--set", "max_episode_steps=20", "--set", "log_every=10",
              "--set", "checkpoint_every=0", "--set", "torch_threads=1", "--no-progress"]
#: goal configs: a new goal of the task's 50 per reset (the default) and one goal fixed per task (mt10_paper)
GOAL_CONFIGS = {"per_reset": [], "fixed": ["--set", "fixed_goals=true"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Finished tiny runs: a sweep-like tree ``sweep/mtsac/seed{3,4}`` (per-reset goals) and a fixed-goal run, which
    also saves its replay (``checkpoints/replay-30.pt`` beside ``last.pt``)."""
    from rl_mtl.train import main as train_main

    root = tmp_path_factory.mktemp("trained")
    runs = {"per_reset": root / "sweep" / "mtsac" / f"seed{TRAIN_SEED}",
            "per_reset_other": root / "sweep" / "mtsac" / f"seed{OTHER_TRAIN_SEED}",
            "fixed": root / "fixed" / f"seed{TRAIN_SEED}"}
    for name, run in runs.items():
        seed = OTHER_TRAIN_SEED if name == "per_reset_other" else TRAIN_SEED
        extra = GOAL_CONFIGS["fixed" if name == "fixed" else "per_reset"]
        extra = [*extra, "--set", "save_replay=true"] if name == "fixed" else extra
        assert train_main([*TRAIN_ARGS, "--seed", str(seed), "--logdir", str(run), *extra]) == 0
    return runs


def in_training_evaluation(run: Path) -> EvaluationResult:
    """What ``Trainer.evaluate`` computes at the end of a run, with returns and lengths: the final policy on an env
    built as the trainer builds it (training seed, no terminate_on_success), evaluation seed ``seed + 10000``."""
    from rl_mtl.evaluate import _agent_policy, load_agent
    from rl_mtl.trainer import EVAL_SEED_OFFSET

    agent, cfg = load_agent(run / "checkpoints" / "last.pt")
    with make_env(cfg.env, cfg.seed, **cfg.env_kwargs()) as env:
        return evaluate_detailed(_agent_policy(agent), env, episodes=cfg.eval_episodes,
                                 seed=cfg.seed + EVAL_SEED_OFFSET)


def logged_final(run: Path) -> dict[str, float]:
    """The run's final in-training evaluation, as ``summary.json`` and the last row of ``evals.jsonl`` hold it."""
    summary = json.loads((run / "summary.json").read_text())
    last = json.loads((run / "evals.jsonl").read_text().splitlines()[-1])
    assert last.pop("step") == summary["final_step"]
    assert last == summary["final"]
    return summary["final"]


class BuildSpy:
    """Stands in for ``rl_mtl.evaluate.make_env``: records each build's (name, seed, options), then builds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict[str, object]]] = []

    def __call__(self, name: str, seed: int, **options: object) -> MultiTaskVectorEnv:
        self.calls.append((name, seed, options))
        return make_env(name, seed, **options)

    @property
    def seeds(self) -> list[int]:
        return [seed for _, seed, _ in self.calls]


@pytest.fixture
def build_spy(monkeypatch: pytest.MonkeyPatch) -> BuildSpy:
    import rl_mtl.evaluate

    spy = BuildSpy()
    monkeypatch.setattr(rl_mtl.evaluate, "make_env", spy)
    return spy


@pytest.mark.parametrize("goals", sorted(GOAL_CONFIGS))
def test_offline_evaluation_reproduces_final_training_evaluation(
        goals: str, trained: dict[str, Path], build_spy: BuildSpy) -> None:
    """``evaluate_checkpoint`` with the trainer's evaluation seed gives the run's final evaluation exactly: same
    success per task, and — since a barely trained policy scores 0 everywhere — the same per-task returns and lengths,
    which depend on the goals.  Before the fix the benchmark was built with the evaluation seed (10003): other goals
    (for ``fixed_goals`` another single goal), other returns."""
    from rl_mtl.evaluate import evaluate_checkpoint
    from rl_mtl.trainer import EVAL_SEED_OFFSET

    run = trained[goals]
    eval_seed = TRAIN_SEED + EVAL_SEED_OFFSET
    payload = evaluate_checkpoint(run / "checkpoints" / "last.pt", EVAL_EPISODES, [eval_seed])
    assert build_spy.seeds == [TRAIN_SEED]  # built with the training seed, not the evaluation seed
    assert build_spy.calls[0][2]["fixed_goals"] is (goals == "fixed")
    expected = in_training_evaluation(run)
    assert expected.success_rate == logged_final(run)  # the reproduction of the trainer's evaluation is faithful
    assert payload["success"] == logged_final(run)
    assert payload["per_seed"] == [expected.success_rate]
    assert payload["return"] == expected.mean_return
    assert payload["length"] == expected.mean_length
    assert payload["train_seed"] == TRAIN_SEED and payload["seeds"] == [eval_seed]


@pytest.mark.parametrize("goals", sorted(GOAL_CONFIGS))
def test_goals_come_from_the_build_seed(goals: str, trained: dict[str, Path]) -> None:
    """The premise of the above: reseeding a reset does not redraw the benchmark's goals.  After the same seeded
    reset, an env built with the training seed shows the training env's goal and returns; one built with the
    evaluation seed shows another goal and other returns (what the old offline evaluation scored)."""
    from rl_mtl.evaluate import _agent_policy, load_agent

    agent, cfg = load_agent(trained[goals] / "checkpoints" / "last.pt")
    eval_seed = TRAIN_SEED + 10_000
    results, targets = [], []
    for build_seed in (TRAIN_SEED, TRAIN_SEED, eval_seed):
        with make_env(cfg.env, build_seed, **cfg.env_kwargs()) as env:
            env.reset(seed=eval_seed)
            targets.append(np.array(env.vector_env.envs[0].unwrapped._target_pos))
            results.append(evaluate_detailed(_agent_policy(agent), env, episodes=EVAL_EPISODES, seed=eval_seed))
    np.testing.assert_array_equal(targets[0], targets[1])
    assert not np.allclose(targets[0], targets[2])
    assert results[0] == results[1]
    assert results[0].mean_return != results[2].mean_return
    # the public API: build_seed picks the goals, the evaluation seed the draws among them
    policy = _agent_policy(agent)
    by_name = evaluate_detailed(policy, cfg.env, episodes=EVAL_EPISODES, seed=eval_seed, config=cfg.env_kwargs(),
                                build_seed=TRAIN_SEED)
    assert by_name == results[0]
    assert evaluate_policy(policy, cfg.env, episodes=EVAL_EPISODES, seed=eval_seed, config=cfg.env_kwargs(),
                           build_seed=TRAIN_SEED) == results[0].success_rate
    legacy = evaluate_detailed(policy, cfg.env, episodes=EVAL_EPISODES, seed=eval_seed, config=cfg.env_kwargs())
    assert legacy == results[2]  # without build_seed a named env is built with the evaluation seed, as before
    with make_env(cfg.env, TRAIN_SEED, **cfg.env_kwargs()) as env, pytest.raises(ValueError, match="build_seed"):
        evaluate_policy(policy, env, build_seed=TRAIN_SEED)


def test_sweep_evaluates_each_run_on_its_own_goals(trained: dict[str, Path], build_spy: BuildSpy,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Two training seeds of a sweep: each run's benchmark is built with its own seed (one env per seed, shared by
    the evaluation seeds), and each ``eval.json`` equals the run's single-run evaluation and its in-training goals.
    Before the fix one env, built with the first evaluation seed, scored every run."""
    from rl_mtl.evaluate import _evaluate_sweep, evaluate_checkpoint

    root = trained["per_reset"].parent.parent
    seeds = [TRAIN_SEED + 10_000, TRAIN_SEED + 10_001]
    assert _evaluate_sweep(root, EVAL_EPISODES, seeds, "cpu") == 0
    assert "evaluated 2 run(s)" in capsys.readouterr().out
    assert build_spy.seeds == [TRAIN_SEED, OTHER_TRAIN_SEED]
    for name, train_seed in (("per_reset", TRAIN_SEED), ("per_reset_other", OTHER_TRAIN_SEED)):
        run = trained[name]
        written = json.loads((run / "eval.json").read_text())
        assert written["train_seed"] == train_seed
        assert written == json.loads(json.dumps(
            evaluate_checkpoint(run / "checkpoints" / "last.pt", EVAL_EPISODES, seeds)))
    # the other run, scored with its own trainer's evaluation seed, reproduces its own final evaluation
    other = trained["per_reset_other"]
    payload = evaluate_checkpoint(other / "checkpoints" / "last.pt", EVAL_EPISODES, [OTHER_TRAIN_SEED + 10_000])
    assert payload["success"] == logged_final(other)
    assert payload["return"] == in_training_evaluation(other).mean_return


@pytest.mark.parametrize("source", ["--run", "--checkpoint"])
def test_cli_reproduces_final_training_evaluation(source: str, trained: dict[str, Path], tmp_path: Path,
                                                  build_spy: BuildSpy, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m rl_mtl.evaluate --run DIR`` / ``--checkpoint FILE --out X`` with ``--seed <train seed + 10000>``."""
    from rl_mtl.evaluate import main

    run = trained["fixed"]
    target = [str(run)] if source == "--run" else [str(run / "checkpoints" / "last.pt"), "--out",
                                                  str(tmp_path / "out.json")]
    assert main([source, *target, "--seed", str(TRAIN_SEED + 10_000), "--episodes", str(EVAL_EPISODES)]) == 0
    out = run / "eval.json" if source == "--run" else tmp_path / "out.json"
    assert f"written {out}" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert build_spy.seeds == [TRAIN_SEED]
    assert written["success"] == logged_final(run)
    assert written["return"] == in_training_evaluation(run).mean_return


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of ``python -m rl_mtl.evaluate argv``, which must exit 2."""
    from rl_mtl.evaluate import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_cli_checks_out_before_evaluating(trained: dict[str, Path], tmp_path: Path, build_spy: BuildSpy,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """An --out in a missing folder fails before anything is built or evaluated (it used to fail after)."""
    out = tmp_path / "missing" / "x.json"
    err = cli_error(["--run", str(trained["fixed"]), "--out", str(out), "--episodes", "1"], capsys)
    assert err.endswith(f"error: --out: cannot write {out}: folder {out.parent} does not exist")
    assert build_spy.calls == []


def test_cli_rejects_files_that_are_not_training_checkpoints(trained: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The replay file beside ``last.pt`` (an easy wrong pick; it used to raise KeyError: 'config'), any other
    rl_mtl file without a checkpoint's keys and a foreign torch file: one line naming the file, exit 2."""
    import torch

    from rl_mtl import checkpoint

    ckpt_dir = trained["fixed"] / "checkpoints"
    replay = ckpt_dir / "replay-30.pt"
    assert replay.is_file()  # the trainer wrote it (save_replay), step 30
    err = cli_error(["--checkpoint", str(replay)], capsys)
    assert err.endswith(f"error: --checkpoint: checkpoint file {replay} is not a training checkpoint (it holds a "
                        f"run's replay data); this run's is {ckpt_dir / 'last.pt'}")
    partial = tmp_path / "partial.pt"
    checkpoint.save_atomic({"format_version": checkpoint.FORMAT_VERSION, "step": 3}, partial)
    err = cli_error(["--checkpoint", str(partial)], capsys)
    assert err.endswith(f"--checkpoint: checkpoint file {partial} is not a training checkpoint (it has no config, "
                        "agent); a run's is <run>/checkpoints/last.pt")
    bad_config = tmp_path / "bad_config.pt"
    checkpoint.save_atomic({"format_version": checkpoint.FORMAT_VERSION, "step": 3, "config": [], "agent": {}},
                           bad_config)
    assert "is not a training checkpoint (it has no config mapping)" in cli_error(
        ["--checkpoint", str(bad_config)], capsys)
    foreign = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    assert f"--checkpoint: checkpoint file {foreign} is not an rl_mtl checkpoint" in cli_error(
        ["--checkpoint", str(foreign)], capsys)


# ---------------------------------------------------------------------------------------------------------------
# Our evaluator against Meta-World's own (metaworld/evaluation.py, metaworld 3.1.1).  Meta-World's ``evaluation``
# toggles terminate_on_success on, calls ``reset()`` without a seed (so it continues from the env's goal RNG and
# leaves it advanced), counts an episode's success as the success flag of its last step (= success at any step,
# since the episode ends at the first success) and its return from RecordEpisodeStatistics.  Seeded the way our
# evaluator seeds (``seed`` on every sub-env; Meta-World's reset ignores seeds) and given the same float32 actions
# (ours casts the policy's actions to float32), both run the very same episodes: the same success per task exactly,
# and returns equal to float32 rounding (our evaluator sums the float32 step rewards of ``StepResult``, Meta-World's
# RecordEpisodeStatistics the float64 ones).
MW_SEED = 7
#: relative tolerance on mean returns: float32 step rewards summed over up to 500 steps (measured: ~1e-9)
RETURN_RTOL = 1e-6


class MetaWorldAgent:
    """A batched policy as ``metaworld.evaluation.Agent``: ``eval_action`` (float32 actions, as our evaluator steps
    the env with) and a no-op ``reset``."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return np.asarray(self.policy(np.asarray(observations, dtype=np.float32)), dtype=np.float32)

    def reset(self, env_mask: np.ndarray) -> None:
        pass


def metaworld_evaluation(policy, vector_env, episodes: int, seed: int | None) -> tuple[dict, dict]:
    """Meta-World's evaluator on a gymnasium vector env: (success per task, mean return per task).  With a seed, every
    sub-env is seeded first, as our evaluator's first reset does; ``None`` runs it as Meta-World does (unseeded)."""
    import metaworld.evaluation

    if seed is not None:
        vector_env.call("seed", int(seed))
    _, _, rates, returns = metaworld.evaluation.evaluation(MetaWorldAgent(policy), vector_env, episodes)
    return dict(rates), {task: float(np.mean(r)) for task, r in returns.items()}


def assert_same_evaluation(ours: EvaluationResult, theirs: tuple[dict, dict], names: list[str]) -> None:
    rates, returns = theirs
    assert set(rates) == set(names)
    assert {k: ours.success_rate[k] for k in names} == rates
    for k in names:
        assert ours.mean_return[k] == pytest.approx(returns[k], rel=RETURN_RTOL), k


@pytest.mark.parametrize("which, episodes", [("expert", 2), ("linear", 1)])
def test_agrees_with_metaworld_evaluation(which: str, episodes: int, train_env: MultiTaskVectorEnv) -> None:
    """On an env built like the trainer's (no terminate_on_success): the same success per task as
    ``metaworld.evaluation`` for Meta-World's scripted experts (≈ 1) and for a fixed linear policy (≈ 0: measured 0.1,
    drawer-close solved by chance)."""
    names = train_env.task_names
    policy = {"expert": Expert(names), "linear": lambda obs: linear_policy(obs[:, :39])}[which]
    state = train_env.rng_state()
    ours = evaluate_detailed(policy, train_env, episodes=episodes, seed=MW_SEED)
    assert train_env.rng_state() == state  # ours restores the training goal RNG ...
    try:
        theirs = metaworld_evaluation(policy, train_env.vector_env, episodes, MW_SEED)
        assert train_env.rng_state() != state  # ... Meta-World's leaves it advanced
        assert not train_env.terminate_on_success and not any(train_env.vector_env.get_attr("terminate_on_success"))
    finally:
        train_env.set_rng_state(state)
        train_env.reset()
    assert_same_evaluation(ours, theirs, names)
    if which == "expert":
        assert all(ours.success_rate[k] >= EXPERT_FLOOR.get(k, 0.9) for k in names), ours.success_rate
    else:
        assert ours.success_rate["mean"] <= 0.3, ours.success_rate


def test_metaworld_evaluation_is_unseeded(short_env: MultiTaskVectorEnv) -> None:
    """The protocol difference: Meta-World's evaluator never seeds, so two calls in a row on one env score different
    goal draws (and shift the env's training goal sequence); ours replays a seed exactly.  (500-step MT1 env: on an
    MT1 env with a shorter ``max_episode_steps`` gym.make's outer TimeLimit truncates above Meta-World's
    RecordEpisodeStatistics, there is no ``final_info["episode"]`` and Meta-World's evaluator fails — ours cuts
    episodes itself and needs no episode statistics.)"""
    with pytest.raises(KeyError, match="episode"):
        metaworld_evaluation(linear_policy, short_env.vector_env, 1, MW_SEED)
    with make_env("mt1:reach-v3", 1) as env:
        first = metaworld_evaluation(linear_policy, env.vector_env, 2, None)
        second = metaworld_evaluation(linear_policy, env.vector_env, 2, None)
        assert first[1] != second[1]
        ours = evaluate_detailed(linear_policy, env, episodes=2, seed=MW_SEED)
        assert ours == evaluate_detailed(linear_policy, env, episodes=2, seed=MW_SEED)
        assert_same_evaluation(ours, metaworld_evaluation(linear_policy, env.vector_env, 2, MW_SEED), env.task_names)


@pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning")
def test_agrees_with_metaworld_on_its_own_env(train_env: MultiTaskVectorEnv) -> None:
    """Independent of our env builder: Meta-World's env (``gym.make_vec("Meta-World/MT10")``, same seed) under its
    evaluator scores the experts exactly as our env (``make_env("mt10", 0)``) under ours."""
    import gymnasium as gym

    names = train_env.task_names
    ours = evaluate_detailed(Expert(names), train_env, episodes=2, seed=MW_SEED)
    official = gym.make_vec("Meta-World/MT10", vector_strategy="sync", seed=0, use_one_hot=True)
    try:
        assert official.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
        assert_same_evaluation(ours, metaworld_evaluation(Expert(names), official, 2, MW_SEED), names)
    finally:
        official.close()
