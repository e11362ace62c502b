"""What the entry points trust: a resumed run's edited ``config.yaml`` against its checkpoint, one-line errors from
deeper code, the divergence exit status, and a rollout worker that dies while it is being restarted."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rl_mtl import checkpoint
from rl_mtl.train import main

TINY = ["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--set", "batch_size=16", "--set", "hidden_sizes=16,16",
        "--set", "warmup_steps=10", "--set", "eval_episodes=1", "--set", "max_episode_steps=20",
        "--set", "log_every=10", "--set", "eval_every=0", "--set", "torch_threads=1", "--no-progress"]


# ---------------------------------------------------------------------------------------------------------------
# resume: config.yaml against the checkpoint
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 12-step run with its final checkpoint (a few seconds)."""
    run = tmp_path_factory.mktemp("trust") / "run"
    assert main([*TINY, "--steps", "12", "--logdir", str(run)]) == 0
    return run


@pytest.fixture()
def run(finished_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run, to edit."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def edit_config(run: Path, edit: Callable[[list[str]], list[str]]) -> None:
    path = run / "config.yaml"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def set_line(key: str, value: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in lines]


def resume_error(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Resume ``run`` (to its last step, so that a wrongly accepted resume ends at once); the one stderr line."""
    with pytest.raises(SystemExit) as info:
        main(["--logdir", str(run), "--resume", "--steps", "12", "--no-progress", *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_edited_option_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_config(run, set_line("gamma", "0.5"))
    edit_config(run, set_line("critic_lr", "0.1"))
    err = resume_error(run, capsys)
    assert err.startswith(f"python -m rl_mtl.train: error: --resume: {run / 'config.yaml'} differs from the "
                          "checkpoint in gamma (0.5; checkpoint: 0.99), critic_lr (0.1; checkpoint: 0.0003)")
    assert "only checkpoint_every, compile, device, diag_every" in err and "may change on resume" in err


def test_deleted_option_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A deleted key would fall back to the code's default: refused even when that default is what the run used."""
    edit_config(run, lambda lines: [line for line in lines if not line.startswith("tau:")])
    err = resume_error(run, capsys)
    assert "config.yaml differs from the checkpoint in tau (missing; checkpoint: 0.005)" in err
    # without env the rest no longer validates (batch 16 is no multiple of mt10's 10 tasks): the deletion is named
    edit_config(run, lambda lines: [line for line in lines if not line.startswith("env:")])
    err = resume_error(run, capsys)
    assert "differs from the checkpoint in env (missing; checkpoint: 'mt1:reach-v3'), tau (missing;" in err


def test_bad_value_in_config_yaml_names_the_file(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_config(run, set_line("gamma", "1.5"))
    err = resume_error(run, capsys)
    assert f"--resume: {run / 'config.yaml'}: gamma: must be in [0, 1), got 1.5" in err
    assert "--set gamma" not in err


def test_yaml_syntax_error_is_one_line(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_config(run, set_line("hidden_sizes", "[16, 16"))
    err = resume_error(run, capsys)
    assert f"--resume: cannot read {run / 'config.yaml'}: YAML syntax error: " in err
    assert "at line " in err and ", column " in err


def test_resume_with_more_steps_and_edited_interval(run: Path) -> None:
    """The options a resume may change may also be edited in config.yaml; an option the checkpoint predates
    (added to the code later) is not compared."""
    edit_config(run, set_line("eval_every", "5"))
    state = checkpoint.load(run / "checkpoints" / checkpoint.CHECKPOINT_NAME)
    del state["config"]["max_skipped_updates"]  # as written by a version without that option
    checkpoint.save_atomic(state, run / "checkpoints" / checkpoint.CHECKPOINT_NAME)
    edit_config(run, lambda lines: [line for line in lines if not line.startswith("max_skipped_updates:")])
    assert main(["--logdir", str(run), "--resume", "--steps", "20", "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_step"] == 20
    assert "eval_every: 5" in (run / "config.yaml").read_text()


def test_resume_to_fewer_steps_than_trained_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--steps below the checkpoint's step would "finish" at once with a config.yaml recording fewer steps than the
    run was trained for (the report then calls it unfinished): refused, config.yaml untouched."""
    before = (run / "config.yaml").read_text()
    with pytest.raises(SystemExit) as info:
        main(["--logdir", str(run), "--resume", "--steps", "8", "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"python -m rl_mtl.train: error: --steps: steps=8 is below step 12, which the checkpoint in {run} "
                   "was trained to; pass --steps 12 or more, or start a new run"]
    assert (run / "config.yaml").read_text() == before
    edit_config(run, set_line("steps", "8"))  # the same through an edited config.yaml: named as the run's
    assert "--resume: steps=8 is below step 12" in resume_error_without_steps(run, capsys)


def resume_error_without_steps(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Resume ``run`` with no --steps; the one stderr line of its refusal."""
    with pytest.raises(SystemExit) as info:
        main(["--logdir", str(run), "--resume", "--no-progress", *extra])
    assert info.value.code == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    return err


def test_config_flag_on_resume_must_match_the_run(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A resumed run keeps its config: --config naming another preset is refused (it used to be ignored without a
    word); the run's own preset is accepted."""
    err = resume_error(run, capsys, "--config", "mt10")
    assert err == (f"python -m rl_mtl.train: error: --config: {run} was started with --config mt10_cpu, not mt10; "
                   "a resumed run keeps its own config: drop --config")
    assert main(["--logdir", str(run), "--resume", "--steps", "12", "--no-progress", "--config", "mt10_cpu"]) == 0


def test_checkpoint_error_from_the_trainer_is_one_line(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import rl_mtl.trainer

    def refuse(*args: object, **kwargs: object) -> None:
        raise checkpoint.CheckpointError("checkpoint file last.pt does not match this run's config (Error(s) in "
                                         "loading state_dict:\n\tsize mismatch for actor.0.weight\n\tand more)")

    monkeypatch.setattr(rl_mtl.trainer, "Trainer", refuse)
    err = resume_error(run, capsys)
    assert err.endswith("--resume: checkpoint file last.pt does not match this run's config (Error(s) in loading "
                        "state_dict: size mismatch for actor.0.weight and more)")


# ---------------------------------------------------------------------------------------------------------------
# exit statuses of train.main
def test_diverged_run_exits_3_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import rl_mtl.trainer

    class Diverging:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def run(self) -> dict[str, object]:
            return {"diverged": True, "step": 17,
                    "error": "diverged at step 17: critic loss non-finite\nin 100 consecutive updates"}

    monkeypatch.setattr(rl_mtl.trainer, "Trainer", Diverging)
    assert main([*TINY, "--steps", "30", "--logdir", str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m rl_mtl.train: error: diverged at step 17: critic loss non-finite in 100 consecutive "
                   "updates"]


def test_unknown_mt1_task_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*TINY, "--env", "mt1:reach-v33", "--logdir", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--env: unknown MT1 task 'reach-v33'; did you mean mt1:reach-v3" in err[0]
    assert "from rl_mtl.envs.metaworld import MT1_TASKS" in err[0]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# a rollout worker that dies while it is being restarted
@dataclasses.dataclass(frozen=True)
class CrashingBuild:
    """An env builder that kills its worker process (exit 3) on the builds numbered in ``crash_on`` (counted in
    the file ``counter`` across the worker processes)."""

    inner: Callable[[], object]
    counter: str
    crash_on: tuple[int, ...]

    def __call__(self) -> object:
        path = Path(self.counter)
        count = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(count))
        if count in self.crash_on:
            os._exit(3)
        return self.inner()


def test_worker_dying_during_its_restart_is_one_more_restart(tmp_path: Path) -> None:
    from rl_mtl.envs.metaworld import env_factories
    from rl_mtl.envs.rollout import AsyncCollector, WorkerError

    factories = env_factories("mt1:reach-v3", 0, max_episode_steps=10)
    crashing = CrashingBuild(factories.builders[0], str(tmp_path / "builds"), crash_on=(2,))
    env = AsyncCollector(dataclasses.replace(factories, builders=(crashing,)), 1, max_restarts=2)
    try:
        env.reset(seed=0)
        action = np.zeros((1, env.action_dim), dtype=np.float32)
        os.kill(env._workers[0].process.pid, signal.SIGKILL)
        # restart 1 dies while building its env (build 2), restart 2 comes up (build 3): the step's rows are lost
        result = env.step(action)
        assert result.lost is not None and result.lost.all()
        assert env.restarts == 2 and (tmp_path / "builds").read_text() == "3"
        assert env.step(action).lost is None
        # both allowed restarts are used: the next death stops with the count in the message
        os.kill(env._workers[0].process.pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"died with exit code -9 during step; not restarted: the 2 "
                                              r"restart\(s\) allowed are used up"):
            env.step(action)
    finally:
        env.close()


def test_worker_that_keeps_dying_uses_up_the_restarts(tmp_path: Path) -> None:
    from rl_mtl.envs.metaworld import env_factories
    from rl_mtl.envs.rollout import AsyncCollector, WorkerError

    factories = env_factories("mt1:reach-v3", 0, max_episode_steps=10)
    crashing = CrashingBuild(factories.builders[0], str(tmp_path / "builds"), crash_on=(2, 3, 4))
    env = AsyncCollector(dataclasses.replace(factories, builders=(crashing,)), 1, max_restarts=2)
    try:
        env.reset(seed=0)
        os.kill(env._workers[0].process.pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"died with exit code 3 during start while restarting; not "
                                              r"restarted: the 2 restart\(s\) allowed are used up"):
            env.step(np.zeros((1, env.action_dim), dtype=np.float32))
        assert env.restarts == 2 and (tmp_path / "builds").read_text() == "3"
    finally:
        env.close()
