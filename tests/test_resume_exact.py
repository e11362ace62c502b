"""A resumed run is the run it would have been: exact env snapshots, bit-identical resumes (sync and async rollouts,
during warm-up, mid-episode, right after an evaluation, after kill -9), a consistent checkpoint/replay pair, logs
without a step twice, the restored actor acting, and a diverging run that stops instead of passing for normal."""

from __future__ import annotations

import csv
import json
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rl_mtl.envs.metaworld import make_env
from rl_mtl import checkpoint
from rl_mtl.config import build_config
from rl_mtl.train import main
from rl_mtl.trainer import Trainer
from trainer_helpers import stop_at as interrupt_at  # tests/trainer_helpers.py

ROOT = Path(__file__).resolve().parent.parent
#: a small MT10 run: 15-step episodes, evaluations at 20 and 40, checkpoints every 20 loop steps
RUN = {"env": "mt10", "steps": 45, "batch_size": 20, "hidden_sizes": "16,16", "warmup_steps": 8,
       "eval_episodes": 1, "max_episode_steps": 15, "log_every": 5, "torch_threads": 1, "eval_every": 20,
       "checkpoint_every": 20, "save_replay": True, "seed": 2, "device": "cpu"}
#: metrics.csv keys that are results (perf/ timings are not)
ASYNC = {"rollout": "async", "workers": 2}
RESULT_PREFIXES = ("loss/", "alpha/", "eval/", "train/", "q_mean/", "entropy/", "progress/")


def _cfg(**extra: Any) -> Any:
    return build_config("mt10_cpu", {**RUN, **extra})


def _train(run_dir: Path, stop_at: int | None = None, resume: bool = False, **extra: Any) -> dict[str, Any]:
    """Train (or resume) ``run_dir``; with ``stop_at``, a SIGTERM arrives during loop step ``stop_at``."""
    trainer = Trainer(_cfg(**extra), run_dir, resume=resume, progress=False)
    if stop_at is not None:
        interrupt_at(trainer, stop_at)
    return trainer.run()


def _rows(run_dir: Path) -> list[tuple[str, str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return [(r["step"], r["key"], r["value"]) for r in csv.DictReader(handle) if r["key"].startswith(RESULT_PREFIXES)]


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["agent"]["modules"]


def _assert_same_run(a: Path, b: Path) -> None:
    rows_a, rows_b = _rows(a), _rows(b)
    assert len(rows_a) > 300
    only = sorted(set(rows_a) ^ set(rows_b))[:4]
    assert rows_a == rows_b, f"metrics differ, first rows: {only}"
    assert (a / "evals.jsonl").read_text() == (b / "evals.jsonl").read_text()
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every resumed one must reproduce."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert "mean" in _train(run)
    return run


@pytest.fixture(scope="module")
def straight_async(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run with rollout workers (its updates see data one step stale: another run)."""
    run = tmp_path_factory.mktemp("straight_async") / "run"
    assert "mean" in _train(run, **ASYNC)
    return run


# ---------------------------------------------------------------------------------------------- env snapshots
@pytest.mark.parametrize("name, fixed", [("mt10", False), ("mt1:reach-v3", True)])
def test_env_snapshot_continues_exactly_in_a_fresh_env(name: str, fixed: bool) -> None:
    """A snapshot taken mid-episode, restored into a freshly built env that was never reset (the resume case),
    continues bit for bit through several episode ends and goal draws."""
    kwargs = {"max_episode_steps": 12, "fixed_goals": fixed}
    with make_env(name, 3, **kwargs) as a, make_env(name, 3, **kwargs) as b:
        actions = np.random.default_rng(0).uniform(-1, 1, (60, a.num_tasks, 4)).astype(np.float32)
        a.reset(seed=5)
        for t in range(17):
            a.step(actions[t])
        b.set_state(pickle.loads(pickle.dumps(a.get_state())))  # as through a checkpoint file
        for t in range(17, 60):
            ra, rb = a.step(actions[t]), b.step(actions[t])
            for field in ("obs", "next_obs", "reward", "success", "done", "episode_return", "episode_length"):
                assert np.array_equal(getattr(ra, field), getattr(rb, field), equal_nan=True), (t, field)


# ---------------------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("stop_at, extra", [
    (5, {}),                                   # during the warm-up (updates start at 8)
    (27, {}),                                  # mid-episode, between two log steps (pending interval sums)
    (20, {}),                                  # right after an evaluation (and a checkpoint)
    (33, ASYNC),                               # mid-episode in rollout workers
], ids=["warmup", "mid-episode", "after-eval", "async"])
def test_interrupted_run_resumes_bit_identically(request: pytest.FixtureRequest, tmp_path: Path, stop_at: int,
                                                 extra: dict[str, Any]) -> None:
    run = tmp_path / "run"
    assert _train(run, stop_at=stop_at, **extra) == {"interrupted": True, "step": stop_at}
    assert "mean" in _train(run, resume=True, **extra)
    _assert_same_run(request.getfixturevalue("straight_async" if extra else "straight"), run)


def test_kill_9_after_an_evaluation_resumes_without_duplicates(straight: Path, tmp_path: Path) -> None:
    """SIGKILL right after the evaluation at step 40 (last checkpoint: 20). The killed run's rows after 20 are
    dropped on resume, no (step, key) appears twice, and with the saved replay the result is the straight run's."""
    run = tmp_path / "run"
    script = (
        "import os, signal, sys\n"
        "sys.path[:0] = [sys.argv[2], os.path.join(sys.argv[2], 'tests')]  # the test helpers too\n"
        "import tests.test_resume_exact as t\n"
        "from rl_mtl.trainer import Trainer\n"
        "tr = Trainer(t._cfg(), sys.argv[1], progress=False)\n"
        "evaluate = tr.evaluate\n"
        "def killing_evaluate():\n"
        "    out = evaluate()\n"
        "    if tr.step == 40:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return out\n"
        "tr.evaluate = killing_evaluate\n"
        "tr.run()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(run), str(ROOT)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 20
    killed_steps = {int(s) for s, _, _ in _rows(run)}
    assert max(killed_steps) == 40  # the killed run logged past its checkpoint
    assert "mean" in _train(run, resume=True)
    rows = _rows(run)
    assert len(rows) == len({(s, k) for s, k, _ in rows})
    steps = [json.loads(line)["step"] for line in (run / "evals.jsonl").read_text().splitlines()]
    assert steps == [20, 40, 45]
    _assert_same_run(straight, run)


# ---------------------------------------------------------------------------------------------- checkpoint pair
def test_kill_between_replay_and_checkpoint_keeps_the_consistent_pair(tmp_path: Path, monkeypatch:
                                                                      pytest.MonkeyPatch) -> None:
    """The replay of step 40 is written, then the process dies before ``last.pt`` of step 40: the resume uses the
    pair of step 20 (its own replay, 20 transitions per task), never the newer replay, and stale temporaries go."""
    run = tmp_path / "run"
    real_save = checkpoint.save_atomic

    def dying_save(obj: Any, path: Path) -> None:
        if Path(path).name == checkpoint.CHECKPOINT_NAME and obj["step"] == 40:
            (Path(path).parent / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt  # the kill
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "save_atomic", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _train(run)
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    ckpt_dir = run / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.glob("replay-*.pt")) == ["replay-20.pt", "replay-40.pt"]
    trainer = Trainer(_cfg(), run, resume=True, progress=False)
    try:
        assert trainer.step == 20 and len(trainer.replay) == 20  # transitions per task
        assert trainer.updates_from == RUN["warmup_steps"]  # the replay was used: no refill
        assert not list(ckpt_dir.glob(".*.tmp"))
    finally:
        trainer.close()


def test_replay_from_another_step_is_dropped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    run = tmp_path / "run"
    assert _train(run, stop_at=20)["interrupted"]
    ckpt_dir = run / "checkpoints"
    replay = torch.load(ckpt_dir / "replay-20.pt", weights_only=False)
    replay["step"] = 19  # a replay that does not belong to this checkpoint
    torch.save(replay, ckpt_dir / "replay-20.pt")
    trainer = Trainer(_cfg(), run, resume=True, progress=False)
    try:
        assert len(trainer.replay) == 0 and trainer.updates_from == 20 + RUN["warmup_steps"]
    finally:
        trainer.close()
    err = capsys.readouterr().err
    assert "replay-20.pt is from step 19" in err and len([line for line in err.splitlines() if "replay" in line]) == 1


# ---------------------------------------------------------------------------------------------- acting policy
def test_restored_actor_acts_after_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the CPU acting copy (what CUDA runs use), the copy holds the restored actor from the first step."""
    import rl_mtl.trainer as trainer_module
    from rl_mtl.acting import ActingPolicy

    run = tmp_path / "run"
    assert _train(run, stop_at=30, save_replay=False)["interrupted"]
    monkeypatch.setattr(trainer_module, "ActingPolicy", lambda *a, **k: ActingPolicy(*a, **k, mode="cpu_copy"))
    trainer = Trainer(_cfg(save_replay=False), run, resume=True, progress=False)
    try:
        assert trainer.policy.mode == "cpu_copy" and trainer.policy._copy is not None
        saved = _params(run)
        copied = dict(trainer.policy._copy.named_parameters())
        for name, value in copied.items():
            assert torch.equal(value, saved[f"actor.{name}"]), name
    finally:
        trainer.close()


# ---------------------------------------------------------------------------------------------- divergence
def test_diverging_run_stops_with_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A temperature of 1e300 makes every critic loss infinite: each update is skipped (weights untouched), the
    console warns per log interval, and after max_skipped_updates the run checkpoints and stops with exit 3."""
    run = tmp_path / "run"
    code = main(["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--steps", "400", "--logdir", str(run),
                 "--set", "batch_size=16", "--set", "hidden_sizes=16,16", "--set", "warmup_steps=10",
                 "--set", "eval_episodes=1", "--set", "max_episode_steps=20", "--set", "log_every=10",
                 "--set", "torch_threads=1", "--set", "init_alpha=1e300", "--set", "eval_every=0",
                 "--set", "max_skipped_updates=25", "--no-progress"])
    assert code == 3
    out, err = capsys.readouterr()
    assert "warning: step 20: 10 update(s) skipped" in out + err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "25 consecutive updates skipped" in errors[0] and "Traceback" not in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["final"] is None and summary["final_step"] == 35
    assert summary["stop_reason"].startswith("25 consecutive updates skipped")
    assert summary["skipped_updates"] == 25 and summary["combiner_fallbacks"] == {"critic": 0, "actor": 0}
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 35


def test_finished_run_records_its_health(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--steps", "30", "--logdir", str(run),
                 "--set", "batch_size=16", "--set", "hidden_sizes=16,16", "--set", "warmup_steps=10",
                 "--set", "eval_episodes=1", "--set", "max_episode_steps=20", "--set", "torch_threads=1",
                 "--set", "init_alpha=1e300", "--set", "eval_every=0", "--set", "max_skipped_updates=0",
                 "--method", "imgrad", "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["skipped_updates"] == 20
    assert set(summary["combiner_fallbacks"]) == {"critic", "actor"}


def test_stale_temporaries_are_removed_on_start(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / ".last.pt.x1.tmp").write_bytes(b"x")
    (ckpt_dir / ".replay-10.pt.x2.tmp").write_bytes(b"x")
    trainer = Trainer(_cfg(env="mt1:reach-v3", batch_size=16), tmp_path / "run", progress=False)
    trainer.close()
    assert not list(ckpt_dir.glob(".*.tmp"))


def test_mismatched_checkpoint_is_one_short_line(tmp_path: Path) -> None:
    """A checkpoint whose networks do not fit the config (torch lists every mismatch over many lines) is refused
    with one line of bounded length naming the file."""
    run = tmp_path / "run"
    cfg = _cfg(env="mt1:reach-v3", batch_size=16, eval_every=0, steps=12, save_replay=False)
    Trainer(cfg, run, progress=False).run()
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    state["agent"]["modules"] = {k: torch.zeros(3, 3) for k in state["agent"]["modules"]}
    torch.save(state, ckpt)
    with pytest.raises(checkpoint.CheckpointError) as info:
        Trainer(cfg, run, resume=True, progress=False)
    message = str(info.value)
    assert str(ckpt) in message and "\n" not in message and len(message) < 300 + len(str(ckpt)) + 80
