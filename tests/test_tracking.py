"""W&B tracking (``--track``): W&B gets exactly the TensorBoard scalars and the config, keeps one W&B run across
``--resume`` without ever holding two values for one step, and wandb is imported only with ``--track``.

Most tests replace the ``wandb`` module with a recording fake (exact values, no service process); one runs the real
wandb offline in a subprocess and reads back the ``.wandb`` files it wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from install_helpers import expected_hint  # tests/install_helpers.py
from rl_mtl.tracking import STATE_FILE
from rl_mtl.train import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--set", "batch_size=16", "--set", "hidden_sizes=16,16",
        "--set", "warmup_steps=10", "--set", "eval_episodes=1", "--set", "max_episode_steps=20",
        "--set", "log_every=5", "--set", "eval_every=10", "--set", "checkpoint_every=10",
        "--set", "torch_threads=1", "--no-progress"]
TRACK = ["--track", "--wandb-project", "P", "--wandb-entity", "E", "--wandb-group", "G"]


def tb_scalars(run_dir: Path) -> dict[tuple[str, int], float]:
    """Every scalar in a run directory's TensorBoard event files, by (tag, step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}


# ---------------------------------------------------------------------------------------------------------------
# a recording stand-in for the wandb module
class FakeRun:
    """What ``wandb.init`` returns: records the config and every ``log`` call."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.id = kwargs["id"] or f"fake{len(FAKE_RUNS)}"
        self.project, self.entity = kwargs["project"], kwargs["entity"]
        self.resumed, self.step = False, 0  # as the real one offline: it cannot know the server's last step
        self.config_values: dict[str, Any] = {}
        self.config = types.SimpleNamespace(update=lambda d, allow_val_change=None: self.config_values.update(d))
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.finished: int | None = None  # the exit code it was finished with

    def log(self, data: dict[str, float], step: int) -> None:
        self.logged.append((step, dict(data)))

    def finish(self, exit_code: int | None = None) -> None:
        self.finished = 0 if exit_code is None else exit_code


FAKE_RUNS: list[FakeRun] = []


def fake_wandb_module() -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: FAKE_RUNS.append(FakeRun(**kwargs)) or FAKE_RUNS[-1]  # type: ignore[attr-defined]
    return module


@pytest.fixture()
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> list[FakeRun]:
    """``import wandb`` gives the fake; returns the runs it is asked to start, in order."""
    FAKE_RUNS.clear()
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb_module())
    return FAKE_RUNS


def sent(run: FakeRun) -> dict[tuple[str, int], float]:
    """A fake run's logged scalars by (key, step), checking none was sent twice."""
    out: dict[tuple[str, int], float] = {}
    for step, data in run.logged:
        for key, value in data.items():
            assert (key, step) not in out, f"{key} sent twice at step {step}"
            out[key, step] = value
    return out


def same_as_tensorboard(mirrored: dict[tuple[str, int], float], tb: dict[tuple[str, int], float]) -> None:
    """Every mirrored value is TensorBoard's at that (tag, step) (TensorBoard stores float32)."""
    assert set(mirrored) <= set(tb), sorted(set(mirrored) - set(tb))[:5]
    wrong = [k for k, v in mirrored.items() if np.float32(v) != np.float32(tb[k])]
    assert not wrong, wrong[:5]


# ---------------------------------------------------------------------------------------------------------------
def test_mirror_is_what_tensorboard_gets(tmp_path: Path, fake_wandb: list[FakeRun]) -> None:
    """Every TensorBoard scalar (interval means, evaluations) at its step, the config.yaml contents, the id stored."""
    run_dir = tmp_path / "run"
    assert main([*TINY, *TRACK, "--steps", "20", "--logdir", str(run_dir)]) == 0
    [run] = fake_wandb
    assert run.kwargs == {"project": "P", "entity": "E", "group": "G", "name": "mt1-reach-v3_mtsac_seed0",
                          "id": None, "resume": None}
    assert run.config_values == yaml.safe_load((run_dir / "config.yaml").read_text())
    tb, mirrored = tb_scalars(run_dir), sent(run)
    assert set(mirrored) == set(tb)
    same_as_tensorboard(mirrored, tb)
    assert {s for k, s in mirrored if k == "eval/success/mean"} == {10, 20}
    assert {s for k, s in mirrored if k == "loss/critic/mean"} == {15, 20}
    assert run.finished == 0
    state = json.loads((run_dir / STATE_FILE).read_text())
    assert state == {"id": run.id, "project": "P", "entity": "E", "group": "G", "last_step": 20}


def test_diverged_run_is_finished_as_failed_in_wandb(tmp_path: Path, fake_wandb: list[FakeRun]) -> None:
    """A run stopped by divergence (exit 3) ends its W&B run with that exit code, so W&B shows it failed, not
    finished; its last logged step is the stop's."""
    code = main([*TINY, *TRACK, "--steps", "200", "--logdir", str(tmp_path / "run"), "--set", "init_alpha=1e300",
                 "--set", "max_skipped_updates=12"])
    assert code == 3
    [run] = fake_wandb
    assert run.finished == 3


def test_logger_mirror_skips_what_tensorboard_skips(tmp_path: Path) -> None:
    """A non-finite interval mean reaches metrics.csv only: neither TensorBoard nor the mirror gets it."""
    from rl_mtl.logger import Logger

    got: list[tuple[int, dict[str, float]]] = []
    logger = Logger(tmp_path, ["a", "b"], total_steps=10, progress=False, mirror=lambda v, s: got.append((s, v)))
    logger.record("loss/x", float("nan"))
    logger.record("loss/y", 2.0)
    logger.record_tasks("alpha", [1.0, 3.0])
    logger.dump(3)
    logger.scalars({"eval/success/mean": 0.5}, 4)
    logger.close()
    assert got == [(3, {"loss/y": 2.0, "alpha/a": 1.0, "alpha/b": 3.0, "alpha/mean": 2.0}),
                   (4, {"eval/success/mean": 0.5})]
    assert tb_scalars(tmp_path) == {("loss/y", 3): 2.0, ("alpha/a", 3): 1.0, ("alpha/b", 3): 3.0,
                                    ("alpha/mean", 3): 2.0, ("eval/success/mean", 4): 0.5}


def test_resume_after_a_kill_never_sends_a_step_twice(tmp_path: Path, fake_wandb: list[FakeRun],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A: tracked to 20; B: resumed tracked to 30, then "killed" with its last checkpoint at 20; C: resumed to 25
    without --track (the same run: accepted, W&B untouched); D: resumed tracked to 40 — the same W&B run, steps
    26..30 (already in W&B from B) not sent again, with a warning saying so."""
    run_dir = tmp_path / "run"
    resume = ["--logdir", str(run_dir), "--resume", "--no-progress"]
    assert main([*TINY, *TRACK, "--steps", "20", "--logdir", str(run_dir)]) == 0
    ckpt = run_dir / "checkpoints" / "last.pt"
    shutil.copy(ckpt, tmp_path / "step20.pt")
    assert main([*resume, "--track", "--steps", "30"]) == 0
    shutil.copy(tmp_path / "step20.pt", ckpt)  # the kill: W&B saw up to 30, the checkpoint is at 20
    assert main([*resume, "--steps", "25"]) == 0
    assert len(fake_wandb) == 2
    capsys.readouterr()
    assert main([*resume, "--track", "--steps", "40"]) == 0
    err = capsys.readouterr().err
    a, b, d = fake_wandb
    assert b.kwargs["id"] == d.kwargs["id"] == a.id and b.kwargs["resume"] == d.kwargs["resume"] == "allow"
    assert (b.kwargs["project"], b.kwargs["entity"], b.kwargs["group"]) == ("P", "E", "G")  # the run's, unasked
    assert f"W&B run {a.id} already holds steps up to 30" in err and "steps 26..30" in err
    sa, sb, sd = sent(a), sent(b), sent(d)
    assert {s for _, s in sa} == {5, 10, 15, 20} and {s for _, s in sb} == {25, 30} and {s for _, s in sd} == {35, 40}
    tb = tb_scalars(run_dir)  # the final curves: A's to 20, C's to 25, D's after
    same_as_tensorboard(sa, tb)
    same_as_tensorboard(sd, tb)
    assert {k for k in tb if k[1] > 30} == set(sd)
    assert json.loads((run_dir / STATE_FILE).read_text())["last_step"] == 40
    assert d.config_values["steps"] == 40  # a resumable option, updated


def test_first_tracked_on_resume_is_a_new_wandb_run(tmp_path: Path, fake_wandb: list[FakeRun]) -> None:
    run_dir = tmp_path / "run"
    assert main([*TINY, "--steps", "10", "--logdir", str(run_dir)]) == 0
    assert main(["--logdir", str(run_dir), "--resume", "--no-progress", "--track", "--steps", "20"]) == 0
    [run] = fake_wandb
    assert run.kwargs["id"] is None and run.kwargs["resume"] is None
    assert {s for _, s in sent(run)} == {15, 20}


def test_resume_in_another_project_is_refused(tmp_path: Path, fake_wandb: list[FakeRun],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert main([*TINY, "--steps", "10", "--logdir", str(run_dir)]) == 0
    capsys.readouterr()  # (its warning that the 10-step warm-up is the whole run)
    (run_dir / STATE_FILE).write_text(json.dumps({"id": "abc", "project": "P", "entity": None, "group": None,
                                                  "last_step": 10}))
    with pytest.raises(SystemExit) as info:  # checked before anything is built or loaded
        main(["--logdir", str(run_dir), "--resume", "--track", "--wandb-project", "Q", "--no-progress"])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and "--wandb-project" in line and "'P'" in line and "abc" in line
    (run_dir / STATE_FILE).write_text("{}")
    with pytest.raises(SystemExit) as info:
        main(["--logdir", str(run_dir), "--resume", "--track", "--no-progress"])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and STATE_FILE in line
    assert not fake_wandb


def test_help_names_the_install_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` titles the W&B flags with the same install line as the ``--track`` error."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert f"Weights & Biases (optional: {expected_hint('wandb')}):" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("wandb_module", [None, "fake"])
def test_flag_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], wandb_module: str | None) -> None:
    """Without wandb installed, ``--track`` names the install line (setup.cfg's wandb requirement, or the checkout's
    ``pip install -e``); ``--wandb-*`` without ``--track`` is refused."""
    monkeypatch.setitem(sys.modules, "wandb", None if wandb_module is None else fake_wandb_module())
    args = [*TINY, "--steps", "10", "--logdir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as info:
        main([*args, "--track"] if wandb_module is None else [*args, "--wandb-group", "G"])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and "Traceback" not in line
    if wandb_module is None:
        assert "--track" in line and line.endswith(f"needs the wandb package: {expected_hint('wandb')}")
    else:
        assert "--wandb-group" in line and "--track" in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# the real wandb, offline
def wandb_records(path: Path) -> list[Any]:
    """The records of a ``.wandb`` file: wandb's 7-byte header, then LevelDB log blocks of 32 KiB whose chunks
    (7-byte header: checksum, little-endian length, type 1 full / 2 first / 3 middle / 4 last) hold ``Record``
    protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, buf, out = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(buf))
    return out


def offline_run(path: Path) -> tuple[Any, dict[str, Any], dict[tuple[str, int], float]]:
    """An offline run file's run record, its config and its history by (key, step), wandb's own keys left out."""
    run, config, history = None, {}, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            for item in record.history.item:
                key = "/".join(item.nested_key) or item.key
                if not key.startswith("_"):
                    assert (key, record.history.step.num) not in history
                    history[key, record.history.step.num] = json.loads(item.value_json)
    return run, config, history


@pytest.fixture(scope="module")
def fresh_interpreter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One subprocess (a fresh interpreter, so nothing has imported wandb yet): a plain run, noting whether wandb got
    imported; then, with the real wandb offline (``WANDB_*`` dirs in the tmp dir), a tracked run and its resume."""
    tmp = tmp_path_factory.mktemp("wandb")
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from rl_mtl.train import main
        assert main({[*TINY, "--steps", "12", "--logdir", str(tmp / "plain")]!r}) == 0
        Path({str(tmp / "imported")!r}).write_text(str("wandb" in sys.modules))
        assert main({[*TINY, *TRACK, "--steps", "20", "--logdir", str(tmp / "run")]!r}) == 0
        assert main({["--logdir", str(tmp / "run"), "--resume", "--track", "--steps", "30", "--no-progress"]!r}) == 0
        """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_CONSOLE": "off", "WANDB_DIR": str(tmp), "WANDB_CACHE_DIR": str(tmp / "cache"),
           "WANDB_CONFIG_DIR": str(tmp / "config"), "WANDB_DATA_DIR": str(tmp / "data")}
    env.pop("WANDB_API_KEY", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp


def test_wandb_is_not_imported_without_track(fresh_interpreter: Path) -> None:
    """A whole run (training, evaluation, checkpoint) in a fresh interpreter never imports wandb."""
    assert (fresh_interpreter / "plain" / "summary.json").is_file()
    assert (fresh_interpreter / "imported").read_text() == "False"


def test_real_wandb_offline_run_and_resume(fresh_interpreter: Path) -> None:
    """``WANDB_MODE=offline``: the run's id is stored, its history is TensorBoard's scalars at their steps and its
    config is config.yaml; ``--resume`` writes a second offline segment of the same id marked as a resume."""
    tmp_path, run_dir = fresh_interpreter, fresh_interpreter / "run"
    run_id = json.loads((run_dir / STATE_FILE).read_text())["id"]
    files = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2, sorted(p.name for p in (tmp_path / "wandb").iterdir())
    (first, config, history), (second, _, resumed) = offline_run(files[0]), offline_run(files[1])
    assert (first.run_id, first.project, first.run_group, first.display_name) == (
        run_id, "P", "G", "mt1-reach-v3_mtsac_seed0")
    assert second.run_id == run_id and second.resume and not first.resume
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert {k: v for k, v in config.items() if not k.startswith("_")} == {**saved, "steps": 20}
    tb = tb_scalars(run_dir)
    assert set(history) == {k for k in tb if k[1] <= 20} and set(resumed) == {k for k in tb if k[1] > 20}
    same_as_tensorboard({**history, **resumed}, tb)
