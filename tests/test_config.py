"""Config presets, overrides and the trainer's bad-input errors (one line, exit 2, flag named, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rl_mtl.config import ConfigError, TrainConfig, build_config, field_names, parse_set, presets
from rl_mtl.train import main

ROOT = Path(__file__).resolve().parent.parent


def test_presets_exist_and_load() -> None:
    assert {"mt10", "mt10_paper", "mt10_cpu"} <= set(presets())
    paper = build_config("mt10_paper")
    assert (paper.max_episode_steps, paper.fixed_goals, paper.one_hot, paper.shared_alpha) == (150, True, False, True)
    full = build_config("mt10")
    assert (full.steps, full.batch_size, full.buffer_size, full.hidden_sizes) == (2_000_000, 1280, 1_000_000,
                                                                                  (400, 400, 400))
    assert (full.max_episode_steps, full.fixed_goals, full.one_hot, full.shared_alpha) == (500, False, True, False)
    cpu = build_config("mt10_cpu")
    assert cpu.steps == 20_000 and len(cpu.hidden_sizes) == 2 and cpu.batch_size % 10 == 0


def test_required_fields_reachable_by_name() -> None:
    for name in ("steps", "warmup_steps", "batch_size", "hidden_sizes", "eval_every", "eval_episodes",
                 "checkpoint_every", "log_every"):
        assert name in field_names()


def test_set_overrides_are_typed() -> None:
    cfg = build_config("mt10_cpu", parse_set(["hidden_sizes=64,32", "steps=2e3", "target_entropy=-2",
                                              "one_hot=false", "actor_lr=1e-3", "env=mt1:reach-v3",
                                              "batch_size=7"]))
    assert cfg.hidden_sizes == (64, 32) and cfg.steps == 2000 and cfg.target_entropy == -2.0
    assert cfg.one_hot is False and cfg.actor_lr == 1e-3 and cfg.batch_size == 7
    assert build_config("mt10_cpu", parse_set(["hidden_sizes=[8, 8]"])).hidden_sizes == (8, 8)


def test_config_roundtrip_through_dict() -> None:
    cfg = build_config("mt10_cpu", {"seed": 3})
    assert build_config(base=cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("items", "flag"),
    [
        (["batch_size=33"], "--set batch_size"),
        (["gamma=1.5"], "--set gamma"),
        (["steps=0"], "--steps"),
        (["steps=abc"], "--steps"),
        (["one_hot=maybe"], "--set one_hot"),
        (["arch=tower"], "--set arch"),
        (["hidden_sizes=0,4"], "--set hidden_sizes"),
        (["unknown_option=1"], "--set"),
        (["no_equals_sign"], "--set"),
        (["env=mt1:no-such-v3"], "--env"),
    ],
)
def test_bad_values_name_the_flag(items: list[str], flag: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config("mt10_cpu", parse_set(items))
    assert str(info.value).startswith(flag + ":")


def test_dataclass_validates_directly() -> None:
    with pytest.raises(ConfigError, match="--env"):
        TrainConfig(env="atari")
    with pytest.raises(ConfigError, match="--method.*known: mtsac"):
        TrainConfig(method="nope")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--env", "atari"], "--env: unknown environment 'atari'; valid: mt10, mt50, mt1:<task>"),
        (["--method", "nope"], "--method: unknown method 'nope'; known: mtsac"),
        (["--config", "nope"], "--config: unknown preset 'nope'; known: mt10, mt10_cpu, mt10_paper"),
        (["--steps", "-5"], "--steps: must be an integer >= 1, got -5"),
        (["--set", "batch_size"], "--set: expected key=value, got 'batch_size'"),
        (["--set", "tau=7"], "--set tau: must be in (0, 1], got 7.0"),
        (["--seed", "x"], "--seed: expected an integer, got 'x'"),
    ],
)
def test_cli_bad_input_one_line_exit_2(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv + ["--logdir", "/nonexistent/never-written"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_cli_cuda_without_cuda(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as info:
        main(["--env", "mt1:reach-v3", "--device", "cuda", "--logdir", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "--device: cuda was asked for but CUDA is not available" in capsys.readouterr().err


def test_cli_resume_without_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--resume", "--logdir", str(tmp_path / "missing")])
    assert info.value.code == 2
    assert "no saved config" in capsys.readouterr().err


def test_cli_subprocess_has_no_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "rl_mtl.train", "--method", "imgrad_typo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--method" in proc.stderr


@pytest.mark.parametrize(("items", "message"), [
    (["gamma=0.9", "gamma=0.95"], "--set gamma: given twice (gamma=0.9 and gamma=0.95); keep one"),
    (["combiner.c=0.5", "combiner.c=0.6"], "--set combiner.c: given twice (combiner.c=0.5 and combiner.c=0.6)"),
    (["weighting.hold=5", "weighting.hold=5"], "--set weighting.hold: given twice"),
])
def test_set_key_given_twice(items: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_set(items)
    assert str(info.value).startswith(message)


#: a run small enough that the old behaviour (the input accepted) ends in seconds instead of training MT10
TINY_RUN = ["--env", "mt1:reach-v3", "--config", "mt10_cpu", "--steps", "5", "--set", "batch_size=16",
            "--set", "hidden_sizes=16,16", "--set", "warmup_steps=10", "--set", "eval_episodes=1",
            "--set", "max_episode_steps=20", "--set", "torch_threads=1", "--no-progress"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["--set", "gamma=0.9", "--set", "gamma=0.95"], "--set gamma: given twice (gamma=0.9 and gamma=0.95)"),
    (["--method", "cagrad", "--set", "combiner.c=0.5", "--set", "combiner.c=0.6"],
     "--set combiner.c: given twice (combiner.c=0.5 and combiner.c=0.6)"),
    (["--seed", "1", "--set", "seed=2"], "--set seed: given twice (also as --seed)"),
    (["--env", "mt1:no-such-v3"], "--env: unknown MT1 task 'no-such-v3'; Meta-World has 50, e.g. reach-v3, "),
    (["--method", "cagrad", "--set", "combiner.c=abc"], "--set combiner.c: expected a number, got 'abc'"),
    (["--method", "igbv2", "--set", "weighting.floor=low"], "--set weighting.floor: expected a number, got 'low'"),
])
def test_cli_ambiguous_or_unknown_input_exit_2(argv: list[str], expected: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*TINY_RUN, *argv, "--logdir", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not (tmp_path / "run").exists()


def test_yaml_problem_is_one_line(tmp_path: Path) -> None:
    from rl_mtl.config import load_config_file

    path = tmp_path / "config.yaml"
    path.write_text("gamma: 0.99\nhidden_sizes: [16, 16\ntau: 0.005\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value) == (f"--resume: cannot read {path}: YAML syntax error: expected ',' or ']', but got "
                               "':' at line 3, column 4 (while parsing a flow sequence at line 2, column 15)")
    path.write_text("gamma: 0.99\n  tau: 0.005: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value).endswith("YAML syntax error: mapping values are not allowed here at line 2, column 6")


def test_exponent_floats_are_numbers_in_set_and_yaml_files(tmp_path):
    """``1e-3`` (no dot) is a number, not PyYAML 1.1's string '1e-3', for nested options too (a combiner's ``lr``
    reached its constructor as a string)."""
    from rl_mtl.config import build_config, load_preset, parse_set

    assert parse_set(["combiner.lr=1e-3", "weighting.lr=-5E-4"]) == {"combiner": {"lr": 0.001},
                                                                      "weighting_opts": {"lr": -0.0005}}
    path = tmp_path / "own.yaml"
    path.write_text("critic_lr: 3e-4\ncombiner: {lr: 2e-2}\n")
    assert load_preset(str(path)) == {"critic_lr": 0.0003, "combiner": {"lr": 0.02}}
    cfg = build_config(str(path), {"method": "famo"})
    assert cfg.combiner["lr"] == 0.02 and isinstance(cfg.combiner["lr"], float)


def test_config_file_without_yaml_suffix_and_empty_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing file named without .yaml is read as the YAML file it is (it was reported as an unknown preset);
    an empty file is refused (it gave the code's defaults, paper scale, without a word); a preset name still wins
    over a file of that name."""
    from rl_mtl.config import build_config

    monkeypatch.chdir(tmp_path)
    Path("opts.txt").write_text("steps: 5\nbatch_size: 20\n")
    assert build_config("opts.txt").steps == 5
    Path("empty.yaml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError) as info:
        build_config("empty.yaml")
    assert str(info.value) == "--config: empty.yaml holds no options; give at least one (e.g. env: mt10) or a preset"
    Path("mt10_cpu").write_text("steps: 7\n")
    assert build_config("mt10_cpu").steps == 20000


def test_warmup_longer_than_the_run_is_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """warmup_steps >= steps: the run only collects random actions; it trains, but says so on one line."""
    assert main([*TINY_RUN, "--logdir", str(tmp_path / "run")]) == 0  # 5 steps, warmup_steps=10
    err = capsys.readouterr().err
    assert ("python -m rl_mtl.train: warning: warmup_steps=10 >= steps=5: the run collects random actions only "
            "and never updates its policy") in err


def test_progress_bar_shows_a_dash_for_a_figure_not_measured_yet(tmp_path: Path) -> None:
    """Before any episode ends the training success is NaN: the bar shows '-', not 'nan'."""
    from rl_mtl.logger import Logger

    logger = Logger(tmp_path, ["a"], total_steps=10, progress=False)
    logger.progress(1, sps=12.345, train_success=float("nan"))
    assert logger._postfix == {"sps": "12.3", "train_success": "-"}
    logger.close()
