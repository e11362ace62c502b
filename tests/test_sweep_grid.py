"""``rl_mtl.sweep`` option grids (``--grid``), the single-task label ``stl`` and the W&B flags: plans, command lines,
bad input, skip/resume/conflict, ``sweep.json``, and the report grouping grid labels side by side (no training: the
runs are faked from the planned train commands, read back by ``rl_mtl.train``'s own parser)."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from rl_mtl import checkpoint, grid, report, runs, sweep, train
from rl_mtl.backends import Outcome, RunSpec
from rl_mtl.config import TrainConfig, build_config, save_config

#: Meta-World's MT10 task list, in its order (the benchmark's published ten; metaworld.MT10(seed).train_classes)
MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")
BASE = ["--env", "mt10", "--config", "mt10_cpu", "--seeds", "1"]


def plan_of(argv: list[str]) -> sweep.SweepPlan:
    return sweep.make_plan(sweep.build_parser().parse_args(argv))


def planned(p: sweep.Planned) -> TrainConfig:
    """A planned run's config with the torch threads the sweep adds to every command."""
    return dataclasses.replace(p.cfg, torch_threads=p.spec.threads)


def trained_config(command: tuple[str, ...]) -> TrainConfig:
    """The config ``rl_mtl.train`` resolves from a planned command line (its own parser, no training)."""
    assert command[1:3] == ("-m", "rl_mtl.train")
    args = train.build_parser().parse_args(list(command[3:]))
    return train.resolve(args)[0]


def test_grid_product_labels_and_commands(tmp_path: Path) -> None:
    """Each method runs the product of the grid axes it has, in --grid order; the others run once."""
    plan = plan_of([*BASE, "--methods", "mtsac,cagrad,imgrad+rlw", "--grid", "combiner.c=0.5,0.9",
                    "--grid", "weighting.hold=50,100", "--seeds", "2", "--out", str(tmp_path)])
    labels = list(dict.fromkeys(p.label for p in plan.runs))
    assert labels == ["mtsac", "cagrad[c=0.5]", "cagrad[c=0.9]", "imgrad+rlw[c=0.5,hold=50]",
                      "imgrad+rlw[c=0.5,hold=100]", "imgrad+rlw[c=0.9,hold=50]", "imgrad+rlw[c=0.9,hold=100]"]
    assert len(plan.runs) == 2 * 7
    assert plan.notes == ["--grid combiner.c does not apply to mtsac: they run once without it",
                          "--grid weighting.hold does not apply to mtsac, cagrad: they run once without it"]
    for p in plan.runs:
        assert p.spec.run_dir == tmp_path / p.label / f"seed{p.cfg.seed}"
        cfg = trained_config(p.spec.command)  # what the trainer makes of the command is what was planned
        assert cfg == planned(p) and cfg.steps == 20_000 and cfg.preset == "mt10_cpu"
    one = next(p for p in plan.runs if p.label == "imgrad+rlw[c=0.9,hold=50]" and p.cfg.seed == 1)
    assert (one.cfg.method, one.cfg.weighting, one.cfg.combiner, one.cfg.weighting_opts) == (
        "imgrad", "rlw", {"c": 0.9}, {"hold": 50})
    assert one.options == {"combiner.c": "0.9", "weighting.hold": "50"}
    assert "--set combiner.c=0.9 --set weighting.hold=50" in " ".join(one.spec.command)
    mtsac = next(p for p in plan.runs if p.label == "mtsac")
    assert mtsac.cfg.combiner == {} and "combiner.c" not in " ".join(mtsac.spec.command)


def test_label_names_values_as_parsed() -> None:
    """Values are shown as ``--set`` parses them (0.50 is 0.5; lists as 64x64); the full key when two keys of the
    grid share their last part (famo's lr and igbv2's lr)."""
    plan = plan_of([*BASE, "--methods", "famo+igbv2", "--grid", "combiner.lr=0.050,0.1",
                    "--grid", "weighting.lr=0.001", "--grid", "weighting.hidden_sizes=[64,64],[32, 32]"])
    labels = list(dict.fromkeys(p.label for p in plan.runs))
    assert labels == [f"famo+igbv2[combiner.lr={lr},weighting.lr=0.001,hidden_sizes={h}]"
                      for lr in ("0.05", "0.1") for h in ("64x64", "32x32")]
    first = plan.runs[0]
    assert first.cfg.combiner == {"lr": 0.05} and first.cfg.weighting_opts["hidden_sizes"] == [64, 64]
    assert [a.key for a in plan.grid] == ["combiner.lr", "weighting.lr", "weighting.hidden_sizes"]
    assert grid.split_values("[1,2],{a: 1, b: 2},3") == ["[1,2]", "{a: 1, b: 2}", "3"]
    assert [grid.shown_value(v) for v in (True, None, 0.5, 1e-05, (400, 400), "critic")] == [
        "true", "none", "0.5", "1e-05", "400x400", "critic"]


@pytest.mark.parametrize("argv, message", [
    (["--grid", "combiner.c"], "--grid: expected KEY=V1,V2,..."),
    (["--grid", "combiner.c="], "--grid combiner.c: empty value in 'combiner.c='"),
    (["--grid", "combiner.c=0.5,,0.9"], "--grid combiner.c: empty value"),
    (["--grid", "=0.5"], "--grid: expected KEY=V1,V2"),
    (["--grid", "nosuch=1,2"], "--grid: unknown option 'nosuch'"),
    (["--grid", "combiner.nosuch=1"], "--grid combiner.nosuch: no method of --methods (cagrad, imgrad+rlw) has"),
    (["--grid", "combiner.c=0.5", "--set", "combiner.c=0.9"], "--grid combiner.c: also given by --set"),
    (["--grid", "combiner.c=0.5", "--set", "combiner={c: 0.9}"], "--grid combiner.c: also given by --set"),
    (["--grid", "seed=1,2"], "--grid seed: is set by the sweep; use --seeds/--first-seed"),
    (["--grid", "steps=10,20"], "--grid steps: is set by the sweep; use --steps"),
    (["--grid", "method=mgda"], "--grid method: is set by the sweep; use --methods"),
    (["--grid", "weighting=rlw,igbv1"], "--grid weighting: is set by the sweep; use --methods METHOD+WEIGHTING"),
    (["--grid", "combiner.c=0.5", "--grid", "combiner.c=0.9"], "--grid combiner.c: given twice"),
    (["--grid", "combiner.c=0.5,0.50"], "--grid combiner.c: value 0.5 given twice"),
    (["--grid", "critic_lr=1e-3,3e-4"], "--grid critic_lr: a grid varies method options"),
    (["--grid", "combiner.c=-1"], "--grid combiner.c: c must be a finite number >= 0, got -1"),
    (["--grid", "combine=critic,nope"], "--grid combine: 'nope' must be"),
    (["--grid", "combiner.rescale=a/b"], "--grid combiner.rescale: value 'a/b' cannot be part of a run directory"),
    (["--wandb-project", "p"], "--wandb-project: only applies with --track"),
])
def test_bad_grid_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        sweep.main([*BASE, "--methods", "cagrad,imgrad+rlw", *argv, "--dry-run"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_stl_plan_one_mt1_run_per_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """stl: one ``mt1:<task>`` run of plain SAC per MT10 task and seed, same preset, steps and --set options, each
    counted as a run (states, worker planning); the mix with multi-task methods in one plan."""
    monkeypatch.setattr(sweep, "available_cores", lambda: 64)
    monkeypatch.setattr(sweep, "available_memory", lambda: None)
    argv = [*BASE, "--methods", "mtsac,stl,imgrad", "--seeds", "2", "--first-seed", "3", "--steps", "500",
            "--set", "hidden_sizes=32,32", "--out", str(tmp_path)]
    plan = plan_of(argv)
    stl = [p for p in plan.runs if p.label == "stl"]
    assert len(plan.runs) == 2 + 20 + 2 and plan.workers == 24 and plan.threads == 2
    assert [(p.cfg.seed, p.task) for p in stl] == [(s, t) for s in (3, 4) for t in MT10]
    for p in stl:
        assert p.spec.run_dir == tmp_path / "stl" / f"seed{p.cfg.seed}" / p.task
        cfg = trained_config(p.spec.command)
        assert cfg == planned(p)
        assert (cfg.env, cfg.method, cfg.weighting, cfg.steps, cfg.hidden_sizes, cfg.preset) == (
            f"mt1:{p.task}", "mtsac", "none", 500, (32, 32), "mt10_cpu")
    mtsac = next(p for p in plan.runs if p.label == "mtsac")
    # equal per-task data: a loop step steps every task's env once, so both give each task `steps` env steps
    assert mtsac.cfg.steps == stl[0].cfg.steps and mtsac.cfg.env == "mt10"

    # each task directory is classified on its own: done, resume, conflict, new
    done, resumed, other = (runs.run_dir(tmp_path, "stl", 3, t) for t in MT10[:3])
    for path, cfg in ((done, stl[0].cfg), (resumed, stl[1].cfg), (other, build_config(
            "mt10_cpu", {"env": f"mt1:{MT10[2]}", "seed": 3, "steps": 500, "hidden_sizes": (16, 16)}))):
        path.mkdir(parents=True)
        save_config(cfg, path / runs.CONFIG)
        runs.checkpoint_path(path).parent.mkdir()
        runs.checkpoint_path(path).write_bytes(b"")
    (done / runs.SUMMARY).write_text(json.dumps({"final_step": 500, "final": {"mean": 0.5}}))
    assert sweep.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "24 runs — 1 finished (skipped), 1 to resume, 21 new, 1 in conflict" in out
    assert "labels: mtsac (2 seeds), stl (2 seeds × 10 tasks), imgrad (2 seeds)" in out
    assert f"stl seed3 pick-place-v3: conflict ({other} holds a run with hidden_sizes=[16, 16]" in out
    assert f"resume: {shlex.join(plan.runs[3].spec.command[:4])}" in out  # stl seed3 push-v3, planned to resume
    assert plan_of(argv).runs[3].state == sweep.RESUME and "--resume" in plan_of(argv).runs[3].spec.command


def test_stl_with_mt50_has_fifty_tasks() -> None:
    from rl_mtl.envs.metaworld import MT1_TASKS

    tasks = sweep.stl_tasks("mt50")
    assert len(set(tasks)) == 50 and set(tasks) <= set(MT1_TASKS) and sweep.stl_tasks("mt10") == MT10


@pytest.mark.parametrize("argv, message", [
    (["--env", "mt1:reach-v3", "--methods", "mtsac,stl"], "--methods: stl trains one mt1:<task> run per task of "
                                                          "--env mt10 or mt50; with --env mt1:reach-v3"),
    (["--methods", "stl+rlw"], "--methods: 'stl+rlw': stl is plain SAC on one task; it takes no loss weighting"),
    (["--methods", "stl", "--set", "weighting=rlw"], "--set weighting: stl is plain SAC on each task"),
])
def test_bad_stl_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        sweep.main(["--config", "mt10_cpu", "--seeds", "1", *argv, "--dry-run"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_stl_refuses_a_config_file_with_a_weighting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A YAML --config that selects a weighting cannot hold for stl (its commands train plain mtsac)."""
    (tmp_path / "w.yaml").write_text("weighting: rlw\n")
    with pytest.raises(SystemExit) as info:
        sweep.main(["--methods", "mtsac,stl", "--config", str(tmp_path / "w.yaml"), "--seeds", "1", "--dry-run"])
    assert info.value.code == 2
    assert f"--config: {tmp_path / 'w.yaml'} sets weighting rlw, but stl" in capsys.readouterr().err


def test_track_flags_reach_every_run(tmp_path: Path) -> None:
    """--track passes the W&B flags to every train command, new or resumed, grouped by the sweep's directory name
    unless --wandb-group says otherwise; without --track none."""
    argv = [*BASE, "--methods", "mtsac,stl", "--out", str(tmp_path / "mt10_grid")]
    assert all("--track" not in p.spec.command for p in plan_of(argv).runs)
    plan = plan_of([*argv, "--track", "--wandb-project", "rl-mtl", "--wandb-entity", "lab"])
    tail = ("--track", "--wandb-project", "rl-mtl", "--wandb-entity", "lab", "--wandb-group", "mt10_grid")
    assert len(plan.runs) == 11 and all(p.spec.command[-len(tail):] == tail for p in plan.runs)
    plan = plan_of([*argv, "--track", "--wandb-group", "g1"])
    assert all(p.spec.command[-3:] == ("--track", "--wandb-group", "g1") for p in plan.runs)
    run = runs.run_dir(tmp_path, "mtsac", 0)
    assert sweep.train_command(sweep.RESUME, run, "mtsac", plan.runs[0].cfg, "mt10_cpu", [], ["--track"])[-2:] == (
        "--resume", "--track")
    if "--track" in train.build_parser().format_help():  # once rl_mtl.train has the flags: it accepts the commands
        for p in plan.runs[:2]:
            assert trained_config(p.spec.command) == planned(p)


def fake_training(specs: list[RunSpec], workers: int, report_outcome: Any) -> list[Outcome]:
    """``run_local`` stand-in: writes what a finished training leaves (config.yaml as rl_mtl.train resolves the
    command, a summary with per-task success 0.1·(c·10) so grid points differ), no process."""
    outcomes = []
    for spec in specs:
        cfg = trained_config(spec.command) if "--resume" not in spec.command else runs.read_config(spec.run_dir)
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, spec.run_dir / runs.CONFIG)
        value = round(float(cfg.combiner.get("c", 0.2)) + 0.01 * spec.seed, 3)
        final = {**{t: value for t in MT10}, "mean": value}
        runs.write_json(spec.run_dir / runs.SUMMARY, {
            "status": "finished", "final": final, "final_step": cfg.steps, "max_over_training": value,
            "history": [{"step": cfg.steps, **final}]})
        runs.checkpoint_path(spec.run_dir).parent.mkdir(exist_ok=True)
        torch.save({"format_version": checkpoint.FORMAT_VERSION, "config": cfg.to_dict()},
                   runs.checkpoint_path(spec.run_dir))  # what a resume checks against
        outcomes.append(Outcome(spec.method, spec.seed, spec.run_dir, "finished", 0, 1.0, f"final success {value}"))
        report_outcome(outcomes[-1])
    return outcomes


def test_grid_sweep_skip_resume_conflict_manifest_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A grid sweep (faked training): sweep.json records the grid and every run; the same command skips them all
    (also with the values spelled differently and with --track); a removed summary is resumed; a label directory
    holding another value is a conflict; rl_mtl.report shows the labels side by side."""
    monkeypatch.setattr(sweep, "run_local", fake_training)
    out = tmp_path / "sweep"
    argv = [*BASE, "--methods", "mtsac,cagrad", "--grid", "combiner.c=0.5,0.9", "--seeds", "2", "--steps", "100",
            "--out", str(out)]
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 runs — 0 finished (skipped), 0 to resume, 6 new" in printed
    assert "cagrad[c=0.9] seed1: finished after 1 s (final success 0.91)" in printed
    manifest = json.loads((out / runs.MANIFEST).read_text())
    assert manifest["grid"] == {"combiner.c": ["0.5", "0.9"]}
    assert manifest["invocations"][0]["labels"] == ["mtsac", "cagrad[c=0.5]", "cagrad[c=0.9]"]
    assert manifest["runs"][2] == {"method": "cagrad[c=0.5]", "seed": 0, "dir": "cagrad[c=0.5]/seed0",
                                   "options": {"combiner.c": "0.5"}}
    assert len(manifest["runs"]) == 6

    for extra in ([], ["--track", "--wandb-project", "p"]):
        assert sweep.main([*argv, *extra]) == 0
        assert "6 finished (skipped), 0 to resume, 0 new, 0 in conflict" in capsys.readouterr().out
    respelled = [a if a != "combiner.c=0.5,0.9" else "combiner.c=0.50,.9" for a in argv]
    assert sweep.main([*respelled, "--dry-run"]) == 0
    assert "6 finished (skipped)" in capsys.readouterr().out

    (runs.run_dir(out, "cagrad[c=0.5]", 1) / runs.SUMMARY).unlink()
    plan = plan_of([*argv, "--track"])
    resumed = [p for p in plan.runs if p.state == sweep.RESUME]
    assert [p.name for p in resumed] == ["cagrad[c=0.5] seed1"]
    command = resumed[0].spec.command
    assert "--resume" in command and "combiner.c=0.5" in command and "--track" in command
    assert trained_config(command[:-3]) == planned(resumed[0])  # rl_mtl.train accepts the resume (same grid value)

    conflicting = runs.run_dir(out, "cagrad[c=0.9]", 0) / runs.CONFIG
    kept = conflicting.read_text()
    save_config(build_config("mt10_cpu", {"method": "cagrad", "seed": 0, "steps": 100, "combiner": {"c": 0.7}}),
                conflicting)
    assert sweep.main(argv) == 1
    printed = capsys.readouterr().out
    assert "4 finished (skipped), 1 to resume, 0 new, 1 in conflict" in printed
    assert "cagrad[c=0.9] seed0: conflict (" in printed and "holds a run with combiner={'c': 0.7}" in printed
    assert runs.read_config(conflicting.parent).combiner == {"c": 0.7}  # left alone
    conflicting.write_text(kept)

    # the report groups runs by their label directory: the grid points side by side, each with its two seeds
    assert report.main([str(out), "--no-plots", "--resamples", "200"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert list(result["methods"]) == ["mtsac", "cagrad[c=0.5]", "cagrad[c=0.9]"] and result["excluded"] == []
    means = {label: v["final"]["mean"] for label, v in result["methods"].items()}
    assert means == pytest.approx({"mtsac": 0.205, "cagrad[c=0.5]": 0.505, "cagrad[c=0.9]": 0.905})
    assert all(v["seeds"] == [0, 1] for v in result["methods"].values())
    assert "| cagrad[c=0.5] | 2 | 50.5 ± 0.5 |" in (out / "results.md").read_text()


def test_stl_manifest_lists_every_task_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """sweep.json holds one entry per stl task run (with its task), and a re-run skips each of them."""
    monkeypatch.setattr(sweep, "run_local", fake_training)
    out = tmp_path / "sweep"
    argv = [*BASE, "--methods", "stl,mtsac", "--steps", "50", "--out", str(out)]
    assert sweep.main(argv) == 0
    assert "stl seed0 window-close-v3: finished" in capsys.readouterr().out
    manifest = json.loads((out / runs.MANIFEST).read_text())
    assert [(r["method"], r.get("task"), r["dir"]) for r in manifest["runs"]] == [
        *(("stl", t, f"stl/seed0/{t}") for t in MT10), ("mtsac", None, "mtsac/seed0")]
    for task in MT10:
        assert runs.read_config(out / "stl" / "seed0" / task).env == f"mt1:{task}"
    assert sweep.main(argv) == 0
    assert "11 runs — 11 finished (skipped)" in capsys.readouterr().out
    assert len(json.loads((out / runs.MANIFEST).read_text())["runs"]) == 11

    # an invocation that adds task runs to a seed already listed records them (one entry per run directory)
    root = tmp_path / "partial"
    root.mkdir()
    entry = {"env": "mt10", "config": "mt10_cpu", "set": [], "steps": 50}
    first = {"method": "stl", "seed": 0, "task": MT10[0], "dir": f"stl/seed0/{MT10[0]}"}
    runs.update_manifest(root, entry, [first])
    runs.update_manifest(root, entry, [first, {**first, "task": MT10[1], "dir": f"stl/seed0/{MT10[1]}"}])
    assert [r["task"] for r in json.loads((root / runs.MANIFEST).read_text())["runs"]] == list(MT10[:2])
