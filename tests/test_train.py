"""The trainer as a user runs it: short real runs on Meta-World, TensorBoard tags, resume, determinism, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_mtl.train import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "hidden_sizes=16,16", "--set", "warmup_steps=10", "--set", "eval_episodes=1",
        "--set", "max_episode_steps=20", "--set", "log_every=10", "--set", "torch_threads=1", "--no-progress"]


def tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run directory's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_losses(run_dir: Path, prefix: str = "loss/") -> list[tuple[int, str, float]]:
    with open(run_dir / "metrics.csv") as handle:
        return [(int(r["step"]), r["key"], float(r["value"])) for r in csv.DictReader(handle)
                if r["key"].startswith(prefix)]


def test_mt10_cli_run_writes_tensorboard_tags(tmp_path: Path) -> None:
    run = tmp_path / "mt10"
    code = main(["--env", "mt10", "--config", "mt10_cpu", "--steps", "50", "--logdir", str(run),
                 "--set", "batch_size=20", "--set", "eval_every=40", "--set", "checkpoint_every=25", *TINY])
    assert code == 0
    tags = tb_scalars(run)
    tasks = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
             "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]
    for task in tasks:
        for prefix in ("train/return", "train/success", "eval/success", "loss/critic", "loss/actor", "loss/alpha",
                       "alpha"):
            assert f"{prefix}/{task}" in tags, f"{prefix}/{task} missing"
    for tag in ("train/return/mean", "train/success/mean", "eval/success/mean", "loss/critic/mean",
                "perf/env_steps_per_s", "perf/updates_per_s", "perf/loop_steps_per_s"):
        assert tag in tags, tag
    assert [s for s, _ in tags["eval/success/mean"]] == [40, 50]
    # the warm-up interval made no update: it has no per-update time (it showed the loop's overhead / 1)
    assert tags["perf/updates_per_s"][0] == (10, 0.0)
    assert [s for s, _ in tags["perf/update_ms"]] == [20, 30, 40, 50]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_step"] == 50 and set(summary["final"]) == set(tasks) | {"mean"}
    assert "max_over_training" in summary
    saved = (run / "config.yaml").read_text()
    assert "hidden_sizes:\n- 16\n- 16" in saved and "steps: 50" in saved
    assert (run / "checkpoints" / "last.pt").is_file()


def test_same_seed_same_losses(tmp_path: Path) -> None:
    """Two runs with the same seed log identical per-step losses for 200 updates (CPU)."""
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        assert main(["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--steps", "210", "--logdir", str(run),
                     "--set", "batch_size=16", "--set", "eval_every=0", "--set", "checkpoint_every=0",
                     "--set", "log_every=1", "--set", "hidden_sizes=16,16", "--set", "warmup_steps=10",
                     "--set", "eval_episodes=1", "--set", "max_episode_steps=20", "--no-progress"]) == 0
        runs.append(read_losses(run))
    assert len([r for r in runs[0] if r[1] == "loss/critic/mean"]) == 200
    assert runs[0] == runs[1]


def test_resume_continues_steps_and_curve(tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--logdir", str(run), "--set", "batch_size=16",
            "--set", "eval_every=0", "--set", "checkpoint_every=10", *TINY]
    assert main([*base, "--steps", "30"]) == 0
    assert main(["--logdir", str(run), "--resume", "--steps", "60", "--no-progress"]) == 0
    tags = tb_scalars(run)
    # warm-up until 10, checkpoint at 30; the replay was not saved, so the resumed run refills it for
    # warmup_steps (10) loop steps with the restored policy before updating again
    assert [s for s, _ in tags["loss/critic/mean"]] == [20, 30, 50, 60]
    # 20-step episodes: one ends at 20; the resumed run starts fresh episodes at 30, the next ends at 50
    assert [s for s, _ in tags["train/success/mean"]] == [20, 50]
    assert json.loads((run / "summary.json").read_text())["final_step"] == 60
    # resuming a finished run at its last step keeps its one final evaluation instead of recording it twice
    assert main(["--logdir", str(run), "--resume", "--steps", "60", "--no-progress"]) == 0
    history = json.loads((run / "summary.json").read_text())["history"]
    assert [e["step"] for e in history] == [30, 60]
    assert len((run / "evals.jsonl").read_text().splitlines()) == 2
    # a second fresh run into the same directory is refused instead of overwriting it
    with pytest.raises(SystemExit) as info:
        main([*base, "--steps", "30"])
    assert info.value.code == 2


def test_resume_refuses_changed_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--logdir", str(run), "--steps", "12",
                 "--set", "batch_size=16", "--set", "eval_every=0", *TINY]) == 0
    with pytest.raises(SystemExit) as info:
        main(["--logdir", str(run), "--resume", "--set", "hidden_sizes=32,32"])
    assert info.value.code == 2
    assert "--set hidden_sizes: cannot change 'hidden_sizes' when resuming" in capsys.readouterr().err


def test_corrupt_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--logdir", str(run), "--steps", "12",
                 "--set", "batch_size=16", "--set", "eval_every=0", *TINY]) == 0
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(SystemExit) as info:
        main(["--logdir", str(run), "--resume", "--steps", "20"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "corrupt" in err and "Traceback" not in err
    ckpt.unlink()
    with pytest.raises(SystemExit):
        main(["--logdir", str(run), "--resume", "--steps", "20"])
    assert "does not exist" in capsys.readouterr().err


def test_sigint_checkpoints_and_resume_finishes(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a run: checkpoint written, exit 130, ``--resume`` finishes the run."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rl_mtl.train", "--env", "mt1:reach-v3", "--config", "mt10_cpu", "--logdir",
           str(run), "--steps", "100000", "--set", "batch_size=16", "--set", "eval_every=0",
           "--set", "checkpoint_every=0", *TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = run / "metrics.csv"
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 2000):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in (out + err)
    import torch

    step = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert step > 10
    assert main(["--logdir", str(run), "--resume", "--steps", str(step + 15), "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["final_step"] == step + 15


@pytest.mark.skipif(os.environ.get("CUDA_VISIBLE_DEVICES") == "", reason="CUDA hidden")
def test_cuda_run_when_available(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA on this machine")
    assert main(["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--device", "cuda", "--steps", "30",
                 "--logdir", str(tmp_path / "run"), "--set", "batch_size=16", "--set", "eval_every=0", *TINY]) == 0
