"""Statistics across seeds against hand-computed numbers, and ``rl_mtl.report`` on hand-made run directories."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from install_helpers import expected_hint  # tests/install_helpers.py
from rl_mtl import runs, stats
from rl_mtl.config import build_config, save_config
from rl_mtl.report import main
from rl_mtl.report_runs import config_outliers

TASKS = ["reach-v3", "push-v3"]


# ---------------------------------------------------------------------------------------------------------------
# statistics
def test_mean_sem_hand_computed() -> None:
    # x = [0.1, 0.2, 0.3, 0.6]: mean 0.3; deviations -0.2, -0.1, 0, 0.3 → s² = 0.14 / 3; SEM = s / 2
    mean, sem = stats.mean_sem([0.1, 0.2, 0.3, 0.6])
    assert mean == pytest.approx(0.3)
    assert sem == pytest.approx(math.sqrt(0.14 / 3) / 2)
    assert math.isnan(stats.mean_sem([0.4])[1]) and stats.mean_sem([0.4])[0] == 0.4
    assert all(math.isnan(v) for v in stats.mean_sem([]))


def test_iqm_hand_computed() -> None:
    # n = 10: floor(2.5) = 2 scores cut at each end → mean of 0.2 .. 0.7 = 0.45
    assert stats.iqm(np.arange(10) / 10) == pytest.approx(0.45)
    # n = 4: one cut at each end of [0, 0, 0, 1] → mean(0, 0) = 0
    assert stats.iqm([1.0, 0.0, 0.0, 0.0]) == 0.0
    assert stats.iqm([0.7]) == 0.7
    # summarize() shows no IQM of seed means below 4 seeds (it would be the plain mean under another name)
    assert math.isnan(stats.summarize([0.1, 0.2, 0.9]).iqm) and stats.summarize([0.1, 0.2, 0.3, 0.9]).iqm == 0.25


def test_bootstrap_ci_exact_small_cases() -> None:
    """Percentile bootstrap of the mean, by enumeration of the resampling distribution.

    [0, 0, 0, 1]: the resampled mean is Binomial(4, 1/4) / 4 with P = .316, .422, .211, .047, .004 at
    0, .25, .5, .75, 1; the 2.5 % quantile is 0, the 97.5 % one .75 (CDF .949 at .5, .996 at .75).
    [0, 1]: P = 1/4, 1/2, 1/4 at 0, .5, 1 → (0, 1).
    """
    assert stats.bootstrap_ci([0.0, 0.0, 0.0, 1.0]) == (0.0, 0.75)
    assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_ci_matches_normal_approximation() -> None:
    # n = 10 scores 0 .. 0.9: the bootstrap mean is close to normal with sd = std(ddof=0) / sqrt(n)
    x = np.arange(10) / 10
    half = 1.96 * x.std() / math.sqrt(10)
    low, high = stats.bootstrap_ci(x)
    assert low == pytest.approx(x.mean() - half, abs=0.03)
    assert high == pytest.approx(x.mean() + half, abs=0.03)
    assert stats.bootstrap_ci(x) == (low, high)  # seeded: the same scores give the same interval


def test_bootstrap_ci_degenerate() -> None:
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.5]))
    assert stats.bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    with pytest.raises(ValueError, match="NaN"):
        stats.summarize([0.1, float("nan")])


def test_aggregate_curves_uses_common_steps() -> None:
    curves = [[(10, 0.0), (20, 0.5), (30, 1.0)], [(10, 0.2), (20, 0.1)], [(10, 0.4), (20, 0.3), (20, 0.6)]]
    out = stats.aggregate_curves(curves)
    assert out["step"] == [10, 20]
    # step 20 of the third seed was evaluated twice (a resumed run): the last value counts
    assert out["mean"] == pytest.approx([0.2, (0.5 + 0.1 + 0.6) / 3])
    assert out["n"] == [3, 3]
    assert all(lo <= m <= hi for lo, m, hi in zip(out["ci_low"], out["mean"], out["ci_high"]))


def test_config_outliers_majority() -> None:
    configs = [{"a": 1, "seed": 0}, {"a": 1, "seed": 1}, {"a": 2, "seed": 2}]
    assert config_outliers(configs, frozenset({"seed"})) == ["", "", "different config: a=2 (others: 1)"]
    assert config_outliers([], frozenset()) == []


# ---------------------------------------------------------------------------------------------------------------
# report on hand-made runs
def make_run(root: Path, method: str, seed: int, final: list[float] | None, best: float = 0.0,
             steps: int = 40, final_step: int | None = None, **overrides: object) -> Path:
    """A run directory as the trainer leaves it: config.yaml and (when ``final`` is given) summary.json.

    ``final`` holds the per-task final success; the history has evaluations at steps 20 and ``steps``.
    """
    path = runs.run_dir(root, method, seed)
    path.mkdir(parents=True)
    cfg = build_config("mt10_cpu", {"env": "mt10", "method": method, "seed": seed, "steps": steps, **overrides})
    save_config(cfg, path / "config.yaml")
    if final is not None:
        last = {**dict(zip(TASKS, final)), "mean": float(np.mean(final))}
        history = [{"step": 20, "mean": best}, {"step": final_step or steps, **last}]
        summary = {"final": last, "final_step": final_step or steps, "max_over_training": max(best, last["mean"]),
                   "max_over_training_step": 20, "history": history}
        (path / "summary.json").write_text(json.dumps(summary))
        (path / "metrics.csv").write_text("step,key,value\n10,combiner/critic/cos_theta,0.5\n"
                                          "20,combiner/critic/cos_theta,0.7\n")
    return path


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """mtsac: 4 good seeds with mean success 0.1, 0.2, 0.3, 0.6 and one crashed seed; imgrad: success
    0, 0, 0, 1 plus one unfinished, one of another config and one never started (in sweep.json only)."""
    root = tmp_path / "sweep"
    for seed, (a, b) in enumerate([(0.0, 0.2), (0.2, 0.2), (0.3, 0.3), (0.6, 0.6)]):
        make_run(root, "mtsac", seed, [a, b], best=0.8)
    crashed = make_run(root, "mtsac", 4, None)
    runs.write_status(crashed, "failed", 1, 3.0, "new")
    for seed, value in enumerate([0.0, 0.0, 0.0, 1.0]):
        make_run(root, "imgrad", seed, [value, value], best=0.5)
    make_run(root, "imgrad", 4, [1.0, 1.0], final_step=20)
    make_run(root, "imgrad", 5, [1.0, 1.0], hidden_sizes=(32, 32))
    runs.write_json(root / runs.MANIFEST, {"runs": [
        {"method": m, "seed": s, "dir": f"{m}/seed{s}"} for m in ("mtsac", "imgrad") for s in range(7)
        if not (m == "mtsac" and s > 4)]})
    return root


def test_report_numbers_and_exclusions(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep), "--no-plots"]) == 0
    result = json.loads((sweep / "results.json").read_text())
    assert list(result["methods"]) == ["mtsac", "imgrad"]  # sweep.json's order
    mtsac, imgrad = result["methods"]["mtsac"], result["methods"]["imgrad"]
    assert mtsac["seeds"] == [0, 1, 2, 3] and imgrad["seeds"] == [0, 1, 2, 3]
    assert mtsac["final"]["mean"] == pytest.approx(0.3)
    assert mtsac["final"]["sem"] == pytest.approx(math.sqrt(0.14 / 3) / 2)
    assert mtsac["final"]["iqm"] == pytest.approx(0.25)
    assert mtsac["final"]["ci_low"] <= 0.3 <= mtsac["final"]["ci_high"]
    assert imgrad["final"] == pytest.approx({"n": 4, "mean": 0.25, "sem": 0.25, "ci_low": 0.0, "ci_high": 0.75,
                                             "iqm": 0.0})
    assert mtsac["max_over_training"]["mean"] == pytest.approx(0.8)
    assert mtsac["per_task"]["reach-v3"]["mean"] == pytest.approx(0.275)
    assert mtsac["curve"]["step"] == [20, 40] and mtsac["curve"]["mean"] == pytest.approx([0.8, 0.3])

    reasons = {(e["method"], e["seed"]): e["reason"] for e in result["excluded"]}
    assert set(reasons) == {("mtsac", 4), ("imgrad", 4), ("imgrad", 5), ("imgrad", 6)}
    assert reasons["mtsac", 4].startswith("failed (exit 1)") and "mtsac/seed4/train.log" in reasons["mtsac", 4]
    assert reasons["imgrad", 4] == "unfinished (trained to 20 of 40 steps)"
    assert reasons["imgrad", 5] == "different config: hidden_sizes=[32, 32] (others: [256, 256])"
    assert reasons["imgrad", 6] == "missing (never started)"

    rows = list(csv.DictReader(open(sweep / "results.csv")))
    first = rows[0]
    assert (first["method"], first["score"], first["n"]) == ("mtsac", "final", "4")
    assert float(first["mean"]) == pytest.approx(0.3)
    assert {r["score"] for r in rows} == {"final", "max_over_training", "final/reach-v3", "final/push-v3"}

    md = (sweep / "results.md").read_text()
    assert "| mtsac | 4 | 30.0 ± 10.8 |" in md
    assert "| imgrad | 4 | 25.0 ± 25.0 | [0.0, 75.0] | 0.0 |" in md
    assert "Max over training" in md and "ddof=1" in md and "percentile bootstrap" in md
    assert "| reach-v3 | 27.5 ± 12.5 | 25.0 ± 25.0 |" in md
    assert "Runs left out of the averages (4)" in md and "missing (never started)" in md
    out = capsys.readouterr().out
    assert "left out: mtsac seed 4: failed" in out


def test_report_single_seed_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    root = tmp_path / "one"
    make_run(root, "mtsac", 0, [0.5, 0.5])
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    final = result["methods"]["mtsac"]["final"]
    assert final["n"] == 1 and final["mean"] == 0.5 and final["sem"] is None and final["ci_low"] is None
    assert final["iqm"] is None  # below 4 seeds the trimmed mean trims nothing: not shown as an IQM
    assert "| mtsac | 1 | 50.0 | – | – |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    assert (tmp_path / "out" / "diagnostics.png").stat().st_size > 0


def test_report_single_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DIR may be one run directory (it used to raise ValueError in _label): the run is reported under its method
    from its config, not under its folder's name."""
    run = make_run(tmp_path / "sweep", "imgrad", 3, [0.25, 0.75])
    assert main([str(run), "--no-plots", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(result["methods"]) == ["imgrad"] and result["excluded"] == []
    imgrad = result["methods"]["imgrad"]
    assert imgrad["seeds"] == [3] and imgrad["final"]["mean"] == 0.5
    assert imgrad["per_seed"]["3"]["run"] == str(run.resolve())
    assert "imgrad: final success 0.500" in capsys.readouterr().out


def test_report_plots_draw_single_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny sweep whose runs logged one evaluation and one diagnostic each: every plotted curve of one point is a
    visible marker (a one-point line without a marker draws nothing), checked on the matplotlib artists."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    root = tmp_path / "sweep"
    for seed in range(2):
        path = make_run(root, "mtsac", seed, [0.5, 0.5])
        _patch_summary(path, history=[{"step": 40, "reach-v3": 0.5, "push-v3": 0.5, "mean": 0.5}])
        (path / "metrics.csv").write_text("step,key,value\n10,combiner/critic/cos_theta,0.5\n")
    saved: dict[str, Figure] = {}
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, name, **kw: (saved.__setitem__(Path(name).name, fig),
                                                                    original(fig, name, **kw)))
    assert main([str(root), "--resamples", "200"]) == 0
    for name, step in (("diagnostics.png", 10), ("curves.png", 40)):
        lines = [line for ax in saved[name].axes for line in ax.get_lines()]
        assert lines, name
        for line in lines:
            assert list(line.get_xdata()) == [step]
            assert line.get_marker() not in (None, "None", "", " "), f"{name}: a one-point line with no marker"


def test_report_without_matplotlib(sweep: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main([str(sweep)]) == 0
    assert f"matplotlib is not installed: no plots ({expected_hint('plots')})" in capsys.readouterr().out
    assert not (sweep / "curves.png").exists() and (sweep / "results.md").is_file()


def test_report_eval_source(sweep: Path) -> None:
    """``--source eval`` takes the final scores from eval.json of the final checkpoint; runs without one are listed
    (a stale eval.json of an earlier step counts as none)."""
    for seed in range(4):
        runs.write_json(runs.run_dir(sweep, "mtsac", seed) / "eval.json",
                        {"step": 40, "success": {"reach-v3": 1.0, "push-v3": 0.0, "mean": 0.5}})
    runs.write_json(runs.run_dir(sweep, "imgrad", 0) / "eval.json", {"step": 20, "success": {"mean": 1.0}})
    assert main([str(sweep), "--no-plots", "--source", "eval"]) == 0
    result = json.loads((sweep / "results.json").read_text())
    assert result["methods"]["mtsac"]["final"]["mean"] == 0.5
    assert result["methods"]["mtsac"]["final"]["sem"] == 0.0
    assert "imgrad" not in result["methods"]
    assert sum("no eval.json" in e["reason"] for e in result["excluded"]) == 5  # imgrad 0-3 and 5


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (([str(tmp_path / "nope")], "is not a directory"),
                          ([str(tmp_path)], "no runs under"),
                          ([str(tmp_path), "--resamples", "5"], "--resamples: must be")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def _patch_summary(path: Path, **fields: object) -> None:
    summary = json.loads((path / "summary.json").read_text())
    summary.update(fields)
    (path / "summary.json").write_text(json.dumps(summary))


def test_report_diverged_and_skipped_updates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A diverged run (summary status "diverged", no final score) is left out with where and why it stopped, also
    when it stopped at the last step; a finished run that skipped updates is averaged and named."""
    root = tmp_path / "sweep"
    for seed in range(3):
        make_run(root, "mtsac", seed, [0.5, 0.5])
    _patch_summary(runs.run_dir(root, "mtsac", 1), status="finished", skipped_updates=4,
                   combiner_fallbacks={"critic": 0, "actor": 1})
    early = make_run(root, "mtsac", 3, [0.0, 0.0])
    _patch_summary(early, status="diverged", final=None, final_step=25, skipped_updates=100,
                   stop_reason="100 consecutive updates skipped (critic loss non-finite)")
    runs.write_status(early, "failed", 3, 3.0, "new")
    late = make_run(root, "mtsac", 4, [0.0, 0.0])
    _patch_summary(late, status="diverged", final=None, final_step=40, stop_reason="actor loss\nnon-finite")
    assert main([str(root), "--no-plots"]) == 0
    result = json.loads((root / "results.json").read_text())
    assert result["methods"]["mtsac"]["seeds"] == [0, 1, 2]
    assert result["methods"]["mtsac"]["per_seed"]["1"]["skipped_updates"] == 4
    reasons = {(e["method"], e["seed"]): e["reason"] for e in result["excluded"]}
    assert reasons == {("mtsac", 3): "diverged at step 25: 100 consecutive updates skipped (critic loss non-finite)",
                       ("mtsac", 4): "diverged at step 40: actor loss non-finite"}
    assert [(e["seed"], e["skipped"]) for e in result["skipped_updates"]] == [(1, 4)]
    md = (root / "results.md").read_text()
    assert "| mtsac | 3 | 50.0 ± 0.0 |" in md
    assert f"| mtsac | 3 | {early} | diverged at step 25: 100 consecutive updates skipped" in md
    assert "Runs with skipped updates (averaged;" in md and "mtsac seed 1 (4 skipped)" in md
    out = capsys.readouterr().out
    assert "averaged with skipped updates: mtsac seed 1 (4 skipped)" in out


def test_report_workers_average_rollout_is_a_protocol(tmp_path: Path) -> None:
    """The worker count changes no transition: seeds with different counts are averaged. ``rollout=async`` sees
    data one step stale: such a seed is left out of a sync majority, with that reason."""
    root = tmp_path / "sweep"
    make_run(root, "mtsac", 0, [0.5, 0.5])
    make_run(root, "mtsac", 1, [0.5, 0.5], workers=3)
    make_run(root, "mtsac", 2, [0.5, 0.5], workers=2, compile=True)  # --compile: same numbers, averaged too
    make_run(root, "mtsac", 3, [0.5, 0.5], rollout="async", workers=2)
    assert main([str(root), "--no-plots"]) == 0
    result = json.loads((root / "results.json").read_text())
    assert result["methods"]["mtsac"]["seeds"] == [0, 1, 2]
    assert [e["reason"] for e in result["excluded"]] == [
        "different config: rollout=async differs from the other seeds' rollout=sync: async updates see data one "
        "step stale, a different protocol"]
