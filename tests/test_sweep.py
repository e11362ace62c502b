"""``rl_mtl.sweep``: planning, resources, and real 2 methods × 2 seeds sweeps (local, killed and resumed; Ray)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from install_helpers import expected_hint  # tests/install_helpers.py
from rl_mtl import evaluate, grid, report, runs, sweep
from rl_mtl.config import TrainConfig, build_config, save_config

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30
#: one-task env, 20-step episodes, tiny networks: each run costs about the process start-up (~10 s on 2 cores)
TINY = ["--env", "mt1:reach-v3", "--methods", "mtsac,cagrad", "--seeds", "2", "--config", "mt10_cpu",
        "--workers", "2", "--set", "batch_size=16", "--set", "hidden_sizes=16,16", "--set", "warmup_steps=10",
        "--set", "eval_episodes=1", "--set", "max_episode_steps=20", "--set", "log_every=10",
        "--set", "eval_every=20", "--set", "checkpoint_every=0", "--set", "torch_threads=1"]


def cfg_for(steps: int = 40, **overrides: object) -> TrainConfig:
    return build_config("mt10_cpu", {"env": "mt1:reach-v3", "method": "mtsac", "seed": 0, "steps": steps, **overrides})


def saved_run(tmp_path: Path, steps: int = 40, final_step: int | None = None, checkpoint: bool = False,
              **overrides: object) -> Path:
    """A run directory holding a config (and optionally a summary at ``final_step`` and a checkpoint file)."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg_for(steps, **overrides), run / "config.yaml")
    if final_step is not None:
        (run / "summary.json").write_text(json.dumps({"final_step": final_step, "final": {"mean": 0.0}}))
    if checkpoint:
        runs.checkpoint_path(run).parent.mkdir()
        runs.checkpoint_path(run).write_bytes(b"")
    return run


@pytest.mark.parametrize("setup, state", [
    ({}, sweep.NEW),                                                   # config only: never checkpointed
    ({"checkpoint": True}, sweep.RESUME),                              # interrupted
    ({"final_step": 40, "checkpoint": True}, sweep.DONE),              # finished
    ({"final_step": 40, "eval_every": 7}, sweep.DONE),                 # logging options may differ
    ({"final_step": 30, "checkpoint": True}, sweep.RESUME),            # finished at fewer steps: extended
    ({"final_step": 50, "checkpoint": True}, sweep.CONFLICT),          # trained further than asked
    ({"hidden_sizes": (32, 32), "checkpoint": True}, sweep.CONFLICT),  # another config
])
def test_classify(tmp_path: Path, setup: dict, state: str) -> None:
    assert sweep.classify(cfg_for(40), saved_run(tmp_path, **setup))[0] == state
    assert sweep.classify(cfg_for(40), tmp_path / "absent")[0] == sweep.NEW


def test_conflict_reason_names_the_option(tmp_path: Path) -> None:
    state, reason = sweep.classify(cfg_for(40), saved_run(tmp_path, hidden_sizes=(32, 32)))
    assert state == sweep.CONFLICT and "hidden_sizes=[32, 32], not [256, 256]" in reason


@pytest.mark.parametrize("args, expected", [
    ((10, 2, 8 * GiB, GiB, None, None), (2, 1)),    # 2 cores: 2 runs at once, one thread each
    ((1, 8, 8 * GiB, GiB, None, None), (1, 8)),     # one run gets every core
    ((10, 16, 3 * GiB, GiB, None, None), (3, 5)),   # memory allows 3 runs
    ((10, 8, None, GiB, None, 2), (4, 2)),          # --set torch_threads=2 on 8 cores
    ((10, 2, 8 * GiB, GiB, 4, None), (4, 1)),       # --workers wins
])
def test_plan_workers(args: tuple, expected: tuple[int, int]) -> None:
    assert sweep.plan_workers(*args) == expected


@pytest.mark.parametrize("argv, message", [
    (["--methods", "mtsac,nope"], "--methods: unknown method 'nope'"),
    (["--set", "seed=3"], "--set seed: is set by the sweep"),
    (["--seeds", "0"], "--seeds: must be an integer >= 1"),
    (["--set", "batch_size=7"], "--set batch_size: must be a multiple"),
    (["--backend", "slurm"], "--backend"),
    (["--env", "mt1:no-such-v3"], "--env: unknown MT1 task 'no-such-v3'"),
    (["--set", "gamma=0.9", "--set", "gamma=0.95"], "--set gamma: given twice"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        sweep.main([*argv, "--dry-run"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_dry_run_prints_train_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep.main([*TINY, "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and "4 new" in out and out.count("-m rl_mtl.train") == 4
    assert f"--logdir {tmp_path}/cagrad/seed1" in out and "--method cagrad --seed 1" in out
    assert not (tmp_path / "sweep.json").exists()


def test_method_plus_weighting_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``imgrad+igbv2`` is a run label that trains imgrad with the igbv2 loss weighting."""
    assert grid.parse_methods("imgrad+igbv2,mean,imgrad+igbv2,igbv2") == ["imgrad+igbv2", "mtsac", "igbv2"]
    argv = ["--env", "mt10", "--methods", "imgrad+igbv2,imgrad", "--seeds", "1", "--config", "mt10_cpu",
            "--out", str(tmp_path), "--dry-run"]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert f"--logdir {tmp_path}/imgrad+igbv2/seed0" in out and "--method imgrad --seed 0" in out
    assert out.count("--weighting igbv2") == 1
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([*argv[:3], "imgrad+igb", *argv[4:]])
    assert exit_info.value.code == 2
    assert "--methods: unknown weighting 'igb'" in capsys.readouterr().err


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.3)


def test_local_sweep_killed_resumed_failed_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Kill a long sweep; break one interrupted run; the re-run resumes, starts and reports the failure."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "rl_mtl.sweep", *TINY, "--out", str(out), "--steps", "100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = [runs.run_dir(out, "mtsac", s) / "metrics.csv" for s in (0, 1)]
    wait_for(lambda: all(m.exists() and m.stat().st_size > 500 for m in metrics))
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert output.count(": interrupted") == 2 and output.count(": not started") == 2

    import torch

    steps = [torch.load(runs.checkpoint_path(runs.run_dir(out, "mtsac", s)), weights_only=False)["step"]
             for s in (0, 1)]
    target = max(steps) + 20
    broken = runs.checkpoint_path(runs.run_dir(out, "mtsac", 1))
    broken.write_bytes(broken.read_bytes()[:100])
    capsys.readouterr()
    assert sweep.main([*TINY, "--out", str(out), "--steps", str(target)]) == 1
    printed = capsys.readouterr().out
    assert "2 to resume, 2 new" in printed
    assert f"FAILED mtsac seed1: log {out}/mtsac/seed1/train.log" in printed
    for method, seed in (("mtsac", 0), ("cagrad", 0), ("cagrad", 1)):
        summary = json.loads((runs.run_dir(out, method, seed) / "summary.json").read_text())
        assert summary["final_step"] == target
    resumed_log = (runs.run_dir(out, "mtsac", 0) / "train.log").read_text()
    assert "sweep new:" in resumed_log and "sweep resume:" in resumed_log
    assert "corrupt" in (runs.run_dir(out, "mtsac", 1) / "train.log").read_text()
    assert json.loads((runs.run_dir(out, "mtsac", 1) / runs.STATUS).read_text())["status"] == "failed"

    # finished runs are skipped by a re-run
    assert sweep.main([*TINY, "--methods", "cagrad", "--out", str(out), "--steps", str(target)]) == 0
    assert "2 finished (skipped)" in capsys.readouterr().out

    # fresh evaluation seeds of the final checkpoints, then the report: the crashed run is listed, not averaged
    assert evaluate.main(["--sweep", str(out), "--episodes", "1", "--seeds", "2"]) == 0
    assert json.loads((runs.run_dir(out, "cagrad", 0) / "eval.json").read_text())["seeds"] == [0, 1]
    assert report.main([str(out), "--source", "eval", "--no-plots"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["methods"]["mtsac"]["seeds"] == [0] and result["methods"]["cagrad"]["seeds"] == [0, 1]
    excluded = {(e["method"], e["seed"]): e["reason"] for e in result["excluded"]}
    assert list(excluded) == [("mtsac", 1)] and "mtsac/seed1/train.log" in excluded["mtsac", 1]

    # every run logs under the sweep root, with its hyperparameters registered for TensorBoard's HParams
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs.run_dir(out, "cagrad", 1)))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert len(list(out.rglob("events.out.tfevents.*"))) >= 4


@pytest.mark.slow
def test_ray_sweep_on_a_local_instance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same sweep as Ray tasks (~60 s on 2 busy cores: ~10 s to start Ray, runs slowed by its daemons)."""
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    assert sweep.main([*TINY, "--out", str(out), "--steps", "30", "--backend", "ray"]) == 0
    assert "4 finished" in capsys.readouterr().out
    for method in ("mtsac", "cagrad"):
        for seed in (0, 1):
            run = runs.run_dir(out, method, seed)
            assert json.loads((run / "summary.json").read_text())["final_step"] == 30
            assert json.loads((run / runs.STATUS).read_text())["status"] == "finished"
    # the same runs as the local backend's: a local re-run finds them finished
    assert sweep.main([*TINY, "--out", str(out), "--steps", "30"]) == 0
    assert "4 finished (skipped)" in capsys.readouterr().out


def test_ray_backend_without_ray_names_the_install_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``--backend ray`` without Ray (``None`` in ``sys.modules`` blocks its import): one line with setup.cfg's ray
    requirement (or the checkout's ``pip install -e``), exit 2, and no run started."""
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as info:
        sweep.main([*TINY, "--out", str(out), "--steps", "30", "--backend", "ray"])
    assert info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"python -m rl_mtl.sweep: error: --backend ray: ray is not installed; {expected_hint('ray')}"
    assert not list(out.rglob("summary.json"))


def test_layout_constants_match_the_trainer() -> None:
    from rl_mtl import checkpoint

    assert runs.CHECKPOINT == f"checkpoints/{checkpoint.CHECKPOINT_NAME}"


def test_a_run_locked_by_another_process_is_not_started(tmp_path: Path) -> None:
    """The lock a training inherits keeps a second sweep off its run directory."""
    import fcntl
    import os

    from rl_mtl.backends import RunSpec, run_local

    run = tmp_path / "mtsac" / "seed0"
    run.mkdir(parents=True)
    fd = os.open(run / ".sweep.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        spec = RunSpec("mtsac", 0, run, sweep.NEW, (sys.executable, "-c", "raise SystemExit(3)"))
        outcomes = run_local([spec], workers=1, report=lambda outcome: None)
    finally:
        os.close(fd)
    assert [o.status for o in outcomes] == ["locked"] and not (run / runs.LOG).exists()
    # once free, the same spec runs; its exit status is reported as a failure with the log's last line
    outcome = run_local([spec], workers=1, report=lambda outcome: None)[0]
    assert (outcome.status, outcome.returncode) == ("failed", 3)
    assert json.loads((run / runs.STATUS).read_text())["status"] == "failed"


def diverged_summary(run: Path, step: int) -> None:
    """summary.json as the trainer leaves a run it stopped on non-finite losses."""
    (run / "summary.json").write_text(json.dumps({
        "status": "diverged", "final": None, "final_step": step, "skipped_updates": 100,
        "stop_reason": "100 consecutive updates skipped (critic loss non-finite)"}))


def test_diverged_run_is_not_done(tmp_path: Path) -> None:
    """A run that diverged at its very last step is not finished: a re-run retries it from its checkpoint."""
    run = saved_run(tmp_path, checkpoint=True)
    diverged_summary(run, 40)
    assert sweep.classify(cfg_for(40), run) == (sweep.RESUME, "")


def test_diverged_exit_is_reported_as_failed_diverged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Exit status 3 of a training (diverged) is a failure whose message says where and why it diverged."""
    from rl_mtl.backends import Outcome

    def fake_run_local(specs, workers, report):  # type: ignore[no-untyped-def]
        outcomes = []
        for spec in specs:
            spec.run_dir.mkdir(parents=True, exist_ok=True)
            diverged_summary(spec.run_dir, 25)
            outcomes.append(Outcome(spec.method, spec.seed, spec.run_dir, "failed", 3, 1.0,
                                    "exit 3: python -m rl_mtl.train: error: ..."))
            report(outcomes[-1])
        return outcomes

    monkeypatch.setattr(sweep, "run_local", fake_run_local)
    out = tmp_path / "sweep"
    assert sweep.main([*TINY, "--methods", "mtsac", "--seeds", "1", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    reason = "diverged at step 25: 100 consecutive updates skipped (critic loss non-finite) (exit 3)"
    assert f"mtsac seed0: failed after 1 s ({reason}); log: " in printed
    assert f"FAILED mtsac seed0: {reason}; log {out}/mtsac/seed0/train.log" in printed
