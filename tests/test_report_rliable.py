"""Statistics over runs × tasks (Agarwal et al. 2021) against hand computations and rliable itself, and ``report``
scoring single-task SAC (``stl``: one ``mt1:<task>`` run per MT10 task and seed) as one MT10 run."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from install_helpers import expected_hint  # tests/install_helpers.py
from rl_mtl import runs, stats
from rl_mtl.config import TrainConfig, build_config, save_config
from rl_mtl.report import main

# Meta-World's MT10, in metaworld.env_dict.MT10_V3's order (tests/test_envs.py checks the env's task names)
MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]


@functools.lru_cache(maxsize=1)
def _rliable_problem() -> str:
    """Why rliable's library cannot be used here ("" when it can); tried once per session."""
    try:
        stats.load_rliable()
    except RuntimeError as exc:
        return str(exc)
    return ""


def _rliable_or_skip() -> None:
    """Skip unless rliable's library imports (the ``report`` extra; arch < 8, rliable's pin, needs pandas < 3)."""
    if _rliable_problem():
        pytest.skip(_rliable_problem())


# ---------------------------------------------------------------------------------------------------------------
# hand computations
def test_probability_of_improvement_hand_computed() -> None:
    # task 0: X = (1, 0) vs Y = (0, 0): pairs 1>0, 1>0, 0=0 (½), 0=0 (½) → 3/4; task 1: all ties → ½; mean 0.625
    x, y = np.array([[1.0, 1.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])
    assert stats.probability_of_improvement(x, y) == pytest.approx(0.625)
    assert stats.probability_of_improvement(y, x) == pytest.approx(0.375)  # P(X > Y) + P(Y > X) = 1 with ½ ties
    # different run counts: X = (0.5, 0.2, 0.9) vs Y = (0.4, 0.6): wins 0.5>0.4, 0.9>0.4, 0.9>0.6 → 3/6
    assert stats.probability_of_improvement(np.array([[0.5], [0.2], [0.9]]), np.array([[0.4], [0.6]])) == 0.5


def test_aggregates_hand_computed() -> None:
    x = np.array([[0.0, 0.2, 1.0], [0.4, 0.6, 0.8], [0.1, 0.3, 0.9], [0.5, 0.7, 1.0]])  # 4 runs × 3 tasks
    # IQM: the 12 pooled scores sorted, 3 cut at each end → mean(0.3, 0.4, 0.5, 0.6, 0.7, 0.8) = 0.55
    assert stats.iqm_runs_tasks(x) == pytest.approx(0.55)
    assert stats.mean_runs_tasks(x) == pytest.approx(6.5 / 12)
    # task means 0.25, 0.45, 0.925 → median 0.45
    assert stats.median_task_means(x) == pytest.approx(0.45)
    assert stats.optimality_gap(x) == pytest.approx(1 - 6.5 / 12)
    # γ = 0.5: min(x, 0.5) sums to 4.5 over 12 cells → gap 0.5 − 0.375
    assert stats.optimality_gap(x, gamma=0.5) == pytest.approx(0.125)
    # the run-score distribution: fraction of the 12 scores above τ
    assert stats.run_score_profile(x, [0.0, 0.5, 0.95]).tolist() == pytest.approx([11 / 12, 6 / 12, 2 / 12])


def test_stratified_bootstrap_resamples_runs_within_each_task() -> None:
    """Task A has runs (0, 1), task B (0.5, 0.5): the resampled mean is (A's resampled mean + 0.5) / 2 with A's mean
    0, ½, 1 at P = ¼, ½, ¼ → 0.25, 0.5, 0.75, so the 95 % percentile CI is exactly (0.25, 0.75). Pooling the four
    scores across tasks would reach below 0.25 (e.g. four draws of 0)."""
    x = np.array([[0.0, 0.5], [1.0, 0.5]])
    interval = stats.bootstrap_interval(x, stats.mean_runs_tasks, resamples=4000)
    assert (interval.point, interval.low, interval.high) == (0.5, 0.25, 0.75)
    # each task's run slots are drawn on their own: the same slot of two tasks holds the same run only 1/N of the
    # time (resampling whole runs would keep them equal), and every run is equally likely
    idx = stats.stratified_indices(4, 3, 20_000, np.random.default_rng(0))
    assert (idx[..., 0] == idx[..., 1]).mean() == pytest.approx(0.25, abs=0.01)
    assert np.bincount(idx.ravel(), minlength=4) / idx.size == pytest.approx([0.25] * 4, abs=0.01)
    # identical runs: nothing to resample, the interval collapses; one run: undefined
    same = stats.aggregate_intervals(np.array([[0.2, 0.4]] * 3), resamples=200)
    assert all(v.low == v.high == v.point for v in same.values())
    single = stats.aggregate_intervals(np.array([[0.2, 0.4]]), resamples=200)
    assert single["mean"].point == pytest.approx(0.3) and math.isnan(single["mean"].low)
    with pytest.raises(ValueError, match="NaN"):
        stats.aggregate_intervals(np.array([[0.2, math.nan], [0.1, 0.1]]))


def test_stratified_ci_matches_normal_approximation() -> None:
    """10 runs × 5 tasks: the stratified bootstrap mean has variance Σ_m σ_m² / (N M²) (σ_m² with ddof = 0)."""
    x = np.random.default_rng(3).random((10, 5))
    half = 1.96 * math.sqrt(x.var(axis=0).sum() / (10 * 25))
    interval = stats.aggregate_intervals(x, resamples=10_000)["mean"]
    assert interval.low == pytest.approx(x.mean() - half, abs=0.01)
    assert interval.high == pytest.approx(x.mean() + half, abs=0.01)
    assert stats.aggregate_intervals(x, resamples=10_000)["mean"] == interval  # seeded


def test_poi_interval_exact() -> None:
    """X = (1, 0), Y = (0, 0) on one task: Y resamples to (0, 0) always; X to both 1 (¼, P = 1), one of each (½,
    P = ¾), both 0 (¼, P = ½) → CI (0.5, 1.0) around 0.75."""
    interval = stats.poi_interval(np.array([[1.0], [0.0]]), np.array([[0.0], [0.0]]), resamples=4000)
    assert (interval.point, interval.low, interval.high) == (0.75, 0.5, 1.0)
    assert math.isnan(stats.poi_interval(np.array([[1.0]]), np.array([[0.0], [1.0]])).low)
    # X against itself: resampled independently the two copies differ, so the interval straddles ½ (resampled with
    # shared indices every resample would tie at exactly ½)
    x = np.random.default_rng(1).random((8, 3))
    itself = stats.poi_interval(x, x, resamples=2000)
    assert itself.point == 0.5 and itself.low < 0.4 and itself.high > 0.6


def test_performance_profile_hand_computed() -> None:
    x = np.array([[0.0, 0.5], [1.0, 0.5]])
    profile = stats.performance_profile(x, taus=[0.0, 0.5, 0.99], resamples=500)
    assert profile["fraction"] == pytest.approx([0.75, 0.25, 0.25])
    assert all(lo <= f <= hi for lo, f, hi in zip(profile["ci_low"], profile["fraction"], profile["ci_high"]))


def test_iqm_curve_steps_shared_by_every_run() -> None:
    runs_ = [{10: [0.0, 1.0], 20: [0.5, 0.5]}, {10: [1.0, 1.0], 20: [0.5, 1.0], 30: [1.0, 1.0]}]
    curve = stats.iqm_curve(runs_, resamples=200)
    assert curve["step"] == [10, 20] and curve["n"] == [2, 2]
    # step 10: pooled (0, 1, 1, 1), one cut at each end → 1.0; step 20: (0.5, 0.5, 0.5, 1) → 0.5
    assert curve["iqm"] == pytest.approx([1.0, 0.5])


# ---------------------------------------------------------------------------------------------------------------
# rliable itself (the `report` extra): the same numbers; on rliable's own resampling stream the same intervals to
# rounding, on ours (another stream) within 0.01 at 2,000 resamples
def rliable_stream(seed: int, resamples: int, *shapes: tuple[int, int]) -> list[np.ndarray]:
    """The run indices rliable's stratified bootstraps draw after ``np.random.seed(seed)``: per resample, for each
    input in turn, ``np.random.choice(N, (N, M))`` (checked below by reproducing its intervals exactly)."""
    state = np.random.RandomState(seed)
    draws: list[list[np.ndarray]] = [[] for _ in shapes]
    for _ in range(resamples):
        for out, (n, m) in zip(draws, shapes):
            out.append(state.choice(n, (n, m)))
    return [np.stack(d) for d in draws]


def test_aggregates_match_rliable() -> None:
    _rliable_or_skip()
    from rliable import metrics

    rng = np.random.default_rng(7)
    x = np.clip(rng.normal(0.5, 0.25, (10, 10)), 0.0, 1.0)
    assert stats.iqm_runs_tasks(x) == pytest.approx(metrics.aggregate_iqm(x), abs=1e-12)
    assert stats.mean_runs_tasks(x) == pytest.approx(metrics.aggregate_mean(x), abs=1e-12)
    assert stats.median_task_means(x) == pytest.approx(metrics.aggregate_median(x), abs=1e-12)
    assert stats.optimality_gap(x) == pytest.approx(metrics.aggregate_optimality_gap(x), abs=1e-12)
    theirs = stats.rliable_intervals(x, 2000, seed=3)
    (replayed,) = rliable_stream(3, 2000, x.shape)
    ours = stats.aggregate_intervals(x, 2000)
    for name, statistic in stats.AGGREGATES.items():
        same = stats.bootstrap_interval(x, statistic, indices=replayed)
        assert (same.point, same.low, same.high) == pytest.approx((theirs[name].point, theirs[name].low,
                                                                   theirs[name].high), abs=1e-12), name
        assert ours[name].point == pytest.approx(theirs[name].point, abs=1e-12), name
        assert ours[name].low == pytest.approx(theirs[name].low, abs=0.01), name
        assert ours[name].high == pytest.approx(theirs[name].high, abs=0.01), name
    # the rliable call is seeded too (its sampler uses NumPy's global generator, restored afterwards)
    state = np.random.get_state()[1].copy()
    assert stats.rliable_intervals(x, 2000, seed=3) == theirs
    assert (np.random.get_state()[1] == state).all()


def test_poi_and_profile_match_rliable() -> None:
    _rliable_or_skip()
    from rliable import metrics

    rng = np.random.default_rng(11)
    x, y = rng.integers(0, 6, (6, 3)) / 5, rng.integers(0, 6, (5, 3)) / 5  # ties, as with success rates
    hand_x, hand_y = np.array([[1, 1], [0, 1]]), np.array([[0, 1], [0, 1]])
    assert metrics.probability_of_improvement(hand_x, hand_y) == pytest.approx(0.625)
    assert stats.probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
    theirs = stats.rliable_poi(x, y, 1000, seed=5)
    same = stats.poi_interval(x, y, indices=tuple(rliable_stream(5, 1000, x.shape, y.shape)))
    assert (same.point, same.low, same.high) == pytest.approx((theirs.point, theirs.low, theirs.high), abs=1e-12)
    z = rng.random((10, 10))
    theirs_p = stats.rliable_profile(z, resamples=2000, seed=2)
    ours_p = stats.performance_profile(z, indices=rliable_stream(2, 2000, z.shape)[0])
    for key in ("fraction", "ci_low", "ci_high"):
        assert ours_p[key] == pytest.approx(theirs_p[key], abs=1e-12), key
    # on our own stream: the profile moves in steps of 1 / (N·M) = 0.01, so two streams may differ by one step
    ours_p = stats.performance_profile(z, resamples=2000)
    for key in ("ci_low", "ci_high"):
        assert np.abs(np.subtract(ours_p[key], theirs_p[key])).max() <= 0.01 + 1e-9


# ---------------------------------------------------------------------------------------------------------------
# report: the rliable block, the baseline, stl
@functools.lru_cache(maxsize=None)
def _config(env: str, method: str, steps: int, overrides: tuple[tuple[str, object], ...]) -> TrainConfig:
    """One build per protocol (building a config takes ~0.1 s; a test sweep holds dozens of runs)."""
    return build_config("mt10_cpu", {"env": env, "method": method, "steps": steps, **dict(overrides)})


def make_run(root: Path, label: str, seed: int, final: dict[str, float], env: str = "mt10", steps: int = 40,
             final_step: int | None = None, history: dict[int, float] | None = None, task: str | None = None,
             **overrides: object) -> Path:
    """A finished run as the trainer leaves it (config.yaml, summary.json with per-task history rows)."""
    path = runs.run_dir(root, label, seed, task)
    path.mkdir(parents=True)
    cfg = _config(env, "mtsac" if label == "stl" else label, steps, tuple(sorted(overrides.items())))
    save_config(dataclasses.replace(cfg, seed=seed), path / "config.yaml")
    last = {**final, "mean": float(np.mean(list(final.values())))}
    rows = [{"step": s, **{t: v for t in final}, "mean": v} for s, v in (history or {}).items()]
    rows.append({"step": final_step or steps, **last})
    summary = {"status": "finished", "final": last, "final_step": final_step or steps,
               "max_over_training": max(r["mean"] for r in rows), "history": rows}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def make_stl_seed(root: Path, seed: int, success: dict[str, float], history: dict[int, float] | None = None,
                  skip: tuple[str, ...] = (), **overrides: object) -> None:
    """``<root>/stl/seed<k>/<task>/``: one mt1 run per MT10 task (but ``skip``), each scoring ``success[task]``."""
    for task in MT10:
        if task not in skip:
            make_run(root, "stl", seed, {task: success.get(task, 0.0)}, env=f"mt1:{task}", history=history,
                     task=task, **overrides)


@pytest.fixture()
def stl_sweep(tmp_path: Path) -> Path:
    """mtsac: 3 MT10 runs failing every task; stl: seeds 0-2 solve reach-v3 (and push-v3 at 0.2 × seed), seed 3
    lacks a task, seed 4 has only an unfinished task run, seed 5 one of another config, seed 6 only in sweep.json."""
    root = tmp_path / "sweep"
    for seed in range(3):
        make_run(root, "mtsac", seed, {t: 0.0 for t in MT10}, history={20: 0.1})
    for seed in range(3):
        make_stl_seed(root, seed, {"reach-v3": 1.0, "push-v3": 0.2 * seed}, history={20: 0.5 + 0.1 * seed})
    make_stl_seed(root, 3, {"reach-v3": 1.0}, skip=("window-close-v3",))
    make_run(root, "stl", 4, {"push-v3": 1.0}, env="mt1:push-v3", task="push-v3", final_step=20)
    make_stl_seed(root, 5, {"reach-v3": 1.0}, skip=("door-open-v3",))
    make_run(root, "stl", 5, {"door-open-v3": 1.0}, env="mt1:door-open-v3", task="door-open-v3",
             hidden_sizes=(32, 32))
    entries = [{"method": "mtsac", "seed": s, "dir": f"mtsac/seed{s}"} for s in range(3)]
    entries += [{"method": "stl", "seed": s, "dir": f"stl/seed{s}/{t}"} for s in range(7) for t in MT10]
    runs.write_json(root / runs.MANIFEST, {"env": "mt10", "runs": entries})
    return root


def test_report_scores_stl_seeds_as_mt10_runs(stl_sweep: Path) -> None:
    assert main([str(stl_sweep), "--no-plots", "--resamples", "1000"]) == 0
    result = json.loads((stl_sweep / "results.json").read_text())
    assert list(result["methods"]) == ["mtsac", "stl"]
    stl, mtsac = result["methods"]["stl"], result["methods"]["mtsac"]
    # three complete seeds, each one MT10-shaped run (not 30 runs of one task)
    assert stl["seeds"] == [0, 1, 2] and stl["n"] == 3
    assert stl["per_seed"]["1"]["final"] == pytest.approx((1.0 + 0.2) / 10)
    assert len(stl["per_seed"]["0"]["parts"]) == 10
    assert list(stl["per_task"]) == MT10
    assert stl["per_task"]["reach-v3"]["mean"] == 1.0 and stl["per_task"]["push-v3"]["mean"] == pytest.approx(0.2)
    assert stl["final"]["mean"] == pytest.approx((1.0 + 0.2) / 10)
    # max over training: the best step of the ten together; at step 20 each task scored 0.5 + 0.1 seed
    assert stl["max_over_training"]["mean"] == pytest.approx(0.6)
    assert stl["curve"]["step"] == [20, 40] and stl["iqm_curve"]["step"] == [20, 40]
    block = stl["rliable"]
    assert (block["runs"], block["tasks"], block["baseline"]) == (3, 10, "mtsac")
    # P(stl > mtsac): reach-v3 always wins (1), push-v3 wins for seeds 1, 2 and ties for seed 0 (5/6),
    # the other eight tasks tie (½) → (1 + 5/6 + 8 · ½) / 10
    assert block["poi"] == pytest.approx((1 + 5 / 6 + 4) / 10)
    assert block["mean"] == pytest.approx(0.12) and block["median"] == 0.0
    assert mtsac["rliable"]["poi"] is None and mtsac["rliable"]["optimality_gap"] == 1.0
    # the protocol check takes stl's mt1:<task> runs as the MT10 run they are scored as
    reasons = {(e["method"], e["seed"]): e["reason"] for e in result["excluded"]}
    assert set(reasons) == {("stl", 3), ("stl", 4), ("stl", 5), ("stl", 6)}
    assert reasons["stl", 3] == ("incomplete stl seed (one mt1 run per mt10 task): no run of 1 of its 10 mt10 "
                                 "tasks (window-close-v3)")
    assert reasons["stl", 4].startswith("incomplete stl seed (one mt1 run per mt10 task): no run of 9 of its 10 "
                                        "mt10 tasks (reach-v3, pick-place-v3, ")
    assert reasons["stl", 4].endswith("window-close-v3); push-v3: unfinished (trained to 20 of 40 steps)")
    assert reasons["stl", 5].endswith("door-open-v3: different config: hidden_sizes=[32, 32] (others: [256, 256])")
    assert reasons["stl", 6] == "missing (never started)"
    md = (stl_sweep / "results.md").read_text()
    assert "| stl | 3 × 10 |" in md and "| mtsac | 3 × 10 |" in md and "| baseline |" in md
    assert "mt10, 40 loop steps" in md


def test_report_stl_divergence_and_protocol(tmp_path: Path) -> None:
    """A diverged task run leaves its seed out; stl runs of another protocol than the majority are left out with
    the option that differs (env alone never counts)."""
    root = tmp_path / "sweep"
    for seed in range(2):
        make_run(root, "mtsac", seed, {t: 0.5 for t in MT10})
    make_stl_seed(root, 0, {t: 1.0 for t in MT10})
    diverged = runs.run_dir(root, "stl", 0, "drawer-open-v3") / "summary.json"
    summary = json.loads(diverged.read_text())
    diverged.write_text(json.dumps({**summary, "status": "diverged", "final": None, "final_step": 25,
                                    "stop_reason": "critic loss non-finite"}))
    make_stl_seed(root, 1, {t: 1.0 for t in MT10}, steps=80)
    assert main([str(root), "--no-plots", "--resamples", "200"]) == 0
    result = json.loads((root / "results.json").read_text())
    assert "stl" not in result["methods"]
    reasons = {(e["method"], e["seed"]): e["reason"] for e in result["excluded"]}
    assert reasons["stl", 0].endswith("drawer-open-v3: diverged at step 25: critic loss non-finite")
    assert reasons["stl", 1] == "different config: steps=80 (others: 40)"


def test_report_baseline_flag_and_evals_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--baseline`` picks the method P(X > Y) is taken against, task by task whatever order each run lists its
    tasks in; one without averaged runs is exit 2. Per-task history missing from summary.json comes from
    evals.jsonl."""
    root = tmp_path / "sweep"
    tasks = {"push-v3": 0.0, "reach-v3": 0.5}  # the other order than cagrad's
    for seed in range(2):
        make_run(root, "cagrad", seed, {"reach-v3": 1.0, "push-v3": 0.5})
        path = make_run(root, "imgrad", seed, tasks)
        summary = json.loads((path / "summary.json").read_text())
        summary["history"] = [{"step": 40, "mean": 0.25}]
        (path / "summary.json").write_text(json.dumps(summary))
        (path / "evals.jsonl").write_text(json.dumps({"step": 40, **tasks, "mean": 0.25}) + "\n{half a line")
    assert main([str(root), "--no-plots", "--resamples", "200"]) == 0  # no mtsac: no baseline
    result = json.loads((root / "results.json").read_text())
    assert result["aggregates"]["baseline"] is None and result["methods"]["cagrad"]["rliable"]["poi"] is None
    assert result["methods"]["imgrad"]["iqm_curve"]["step"] == [40]
    assert "No probability of improvement" in (root / "results.md").read_text()
    assert main([str(root), "--no-plots", "--resamples", "200", "--baseline", "imgrad"]) == 0
    result = json.loads((root / "results.json").read_text())
    # reach-v3 1.0 > 0.5 and push-v3 0.5 > 0.0 in every pair (columns paired by name, not position: 0.75)
    assert result["methods"]["cagrad"]["rliable"]["poi"] == 1.0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(root), "--no-plots", "--baseline", "pcgrad"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--baseline: no averaged runs of 'pcgrad' (methods: cagrad, imgrad)" in err
    assert len(err.strip().splitlines()) == 1


def test_report_stats_rliable_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``--stats rliable`` without a usable rliable is one line and exit 2; with it, the numbers agree with ours."""
    root = tmp_path / "sweep"
    rng = np.random.default_rng(5)
    for label in ("mtsac", "imgrad"):
        for seed in range(8):
            make_run(root, label, seed, dict(zip(MT10[:4], rng.random(4).tolist())))

    def unusable() -> None:
        raise RuntimeError("rliable cannot be imported (ModuleNotFoundError: No module named 'rliable')")

    with monkeypatch.context() as patch:
        patch.setattr(stats, "load_rliable", unusable)
        with pytest.raises(SystemExit) as info:
            main([str(root), "--no-plots", "--stats", "rliable"])
    assert info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--stats: rliable cannot be imported" in line and line.endswith(f"; {expected_hint('report')}")
    _rliable_or_skip()
    assert main([str(root), "--no-plots", "--resamples", "1000"]) == 0
    ours = json.loads((root / "results.json").read_text())["methods"]["imgrad"]
    assert main([str(root), "--no-plots", "--resamples", "1000", "--stats", "rliable"]) == 0
    result = json.loads((root / "results.json").read_text())
    assert result["aggregates"]["backend"] == "rliable" and "rliable's metrics" in result["conventions"]["rliable"]
    theirs = result["methods"]["imgrad"]
    for name in ("iqm", "mean", "median", "optimality_gap", "poi"):
        assert ours["rliable"][name] == pytest.approx(theirs["rliable"][name], abs=1e-12)
        # another resampling stream, 8 runs: Monte Carlo noise only (the exact agreement is checked above)
        assert ours["rliable"][f"{name}_ci"] == pytest.approx(theirs["rliable"][f"{name}_ci"], abs=0.03)
    assert ours["profile"]["fraction"] == theirs["profile"]["fraction"]


def test_report_plots_rliable_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    root = tmp_path / "sweep"
    for seed in range(2):
        make_run(root, "mtsac", seed, {"reach-v3": 0.5 * seed, "push-v3": 0.0}, history={20: 0.1})
    make_stl_seed(root, 0, {"reach-v3": 1.0}, history={20: 0.5})
    assert main([str(root), "--resamples", "200"]) == 0
    for name in ("curves.png", "profiles.png", "intervals.png"):
        assert (root / name).stat().st_size > 0
    md = (root / "results.md").read_text()
    assert "![profiles](profiles.png)" in md and "![intervals](intervals.png)" in md
