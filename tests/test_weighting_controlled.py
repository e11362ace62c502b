"""The controlled problem of issue 14: MT10 with task 0's reward scaled by 0.1 (``reward_scale``), so that its critic
losses and gradients are several times smaller than the others'.  A weighting that balances the tasks must raise
task 0's share of the critic's update direction against ``none``; IGBv2's λ must move from its start.

What is measured here is the update direction over the first ~140 updates of a tiny agent (32×32, batch 40,
α₀ = 0.01 so that the TD targets of the fresh critic are the rewards, not the entropy bonus), not learning: whether
any of this helps success on MT10 is the comparison the README's "Does IGB help?" names as not yet run.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from rl_mtl import weighting
from rl_mtl.config import ConfigError, build_config, parse_set
from rl_mtl.envs.rollout import make_rollout_env
from rl_mtl.trainer import Trainer
from rl_mtl.weighting.snr import main as snr_main
from rl_mtl.weighting.snr import variance_components

SCALE = (0.1,) + (1.0,) * 9
BASE = dict(env="mt10", method="mtsac", steps=160, warmup_steps=20, batch_size=40, hidden_sizes=(32, 32),
            init_alpha=0.01, eval_every=0, eval_episodes=1, max_episode_steps=20, log_every=20, checkpoint_every=0,
            torch_threads=1, diag_every=2, seed=0)
#: λ held for 10 updates (the run has 140), everything else at the defaults
OPTIONS = {"none": {}, "si": {}, "igbv1": {"hold": 10}, "igbv2": {"hold": 10}}
#: the other weightings, for the table of the slow test (uw changes λ every update, dwa keeps its window of 25)
MORE = {"rlw": {"hold": 10}, "grad_scale": {"hold": 10}, "uw": {}, "dwa": {}}


def series(run: Path, key: str) -> np.ndarray:
    """Every logged value of ``key`` in a run's ``metrics.csv``, in step order."""
    with open(run / "metrics.csv") as handle:
        return np.array([float(row["value"]) for row in csv.DictReader(handle) if row["key"] == key])


def test_reward_scale_option() -> None:
    cfg = build_config("mt10_cpu", parse_set(["reward_scale=0.1,1,1,1,1,1,1,1,1,1"]))
    assert cfg.reward_scale == SCALE and cfg.to_dict()["reward_scale"] == list(SCALE)
    assert build_config("mt10_cpu", parse_set(["reward_scale=0.5"])).reward_scale == (0.5,)
    assert build_config("mt10_cpu").reward_scale == ()
    for bad in ("0.1,1", "0,1,1,1,1,1,1,1,1,1", "-1", "nan"):
        with pytest.raises(ConfigError, match=r"^--set reward_scale: must be one positive number or 10"):
            build_config("mt10_cpu", parse_set([f"reward_scale={bad}"]))


def run_weightings(options: dict[str, dict[str, Any]], out: Path, env: Any) -> tuple[dict[str, np.ndarray],
                                                                                     dict[str, Trainer]]:
    """Train the controlled problem once per weighting; task 0's logged shares of the critic direction."""
    shares, trainers = {}, {}
    for name, opts in options.items():
        trainer = Trainer(build_config("mt10_cpu", {**BASE, "reward_scale": SCALE, "weighting": name,
                                                    "weighting_opts": opts}), out / name, progress=False, env=env)
        trainer.run()
        trainers[name] = trainer
        shares[name] = series(out / name, f"combiner/critic/direction_share/{env.task_names[0]}")
    return shares, trainers


@pytest.mark.slow
def test_table_of_every_weighting_on_the_controlled_problem(tmp_path: Path, mt10_env: Any) -> None:
    """The README's table: task 0's mean share of the critic direction (1/K = 0.1 is an equal share) and its
    critic loss over the mean, for every weighting — measured, not asserted beyond being finite."""
    torch.set_num_threads(1)
    shares, _ = run_weightings({**OPTIONS, **MORE}, tmp_path, mt10_env)
    for name, values in shares.items():
        ratio = (series(tmp_path / name, f"loss/critic/{mt10_env.task_names[0]}")
                 / series(tmp_path / name, "loss/critic/mean"))
        print(f"{name:<11} share of task 0: {values.mean():.3f} (intervals {np.round(values, 3).tolist()}); "
              f"its critic loss / mean: {ratio.mean():.3f}")
        assert np.isfinite(values).all()


@pytest.fixture(scope="module")
def mt10_env() -> Iterator[Any]:
    """One MT10 env for the runs of this file (each Trainer resets it)."""
    cfg = build_config("mt10_cpu", BASE)
    env = make_rollout_env(cfg.env, cfg.seed, rollout="sync", workers=0, **cfg.env_kwargs())
    yield env
    env.close()


def test_loss_weightings_raise_the_share_of_a_scaled_down_task(tmp_path: Path, mt10_env: Any) -> None:
    torch.set_num_threads(1)
    env = mt10_env
    # the scale reaches the replay: the warm-up transitions of a scaled and an unscaled run are the same
    # random actions on the same envs, so task 0's stored rewards differ by exactly the factor
    plain = Trainer(build_config("mt10_cpu", {**BASE, "steps": 20}), tmp_path / "unscaled", progress=False,
                    env=env)
    plain.run()
    shares, trainers = run_weightings(OPTIONS, tmp_path, env)
    scaled = trainers["none"].replay.reward[:, :20]
    unscaled = plain.replay.reward[:, :20]
    assert torch.allclose(scaled[0], 0.1 * unscaled[0]) and torch.equal(scaled[1:], unscaled[1:])
    loss_ratio = (series(tmp_path / "none", f"loss/critic/{env.task_names[0]}")
                  / series(tmp_path / "none", "loss/critic/mean"))
    assert loss_ratio.mean() < 0.35  # the imbalance is there: task 0's critic loss is a fraction of the mean
    mean_share = {name: float(values.mean()) for name, values in shares.items()}
    print("task 0's mean share of the critic direction:", mean_share)
    for name in ("si", "igbv1", "igbv2"):
        assert mean_share[name] > 2.0 * mean_share["none"], (name, mean_share)
    # IGBv2's policy moves: at the run's last state its greedy λ (the policy's mean action) differs from the
    # one its untrained policy (same seed, same initial networks) gives there
    igbv2 = trainers["igbv2"].combined["critic"].weighting
    meta_updates = series(tmp_path / "igbv2", "weighting/meta_updates")
    assert meta_updates[0] == 0 and meta_updates[-1] == igbv2.meta.updates_done > 0
    untrained = weighting.make("igbv2", **OPTIONS["igbv2"], seed=igbv2.seed)
    untrained.weights(torch.ones(len(env.task_names)))  # builds its meta-SAC
    state = igbv2._prev[0]
    moved = (igbv2.greedy_lambda(state) - untrained.greedy_lambda(state)).abs().max()
    print("IGBv2's greedy λ moved by", float(moved), "after", igbv2.meta.updates_done, "meta updates")
    assert float(moved) > 0.1


def test_meta_reward_snr_tool(tmp_path: Path, mt10_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m rl_mtl.weighting.snr`` on a (tiny) real MT10 checkpoint: finite figures, the variance split of a
    hand-made table, and one line for a run saved without its replay."""
    components = variance_components(np.array([[1.0, 3.0], [5.0, 7.0]]))
    assert components == {"signal_var": 7.0, "noise_var": 2.0, "snr": 3.5}  # means 2, 6: 8 − 2/2; within: 2
    run = tmp_path / "run"
    Trainer(build_config("mt10_cpu", {**BASE, "steps": 30, "save_replay": True, "method": "imgrad",
                                      "weighting": "igbv2"}), run, progress=False, env=mt10_env).run()
    assert snr_main(["--run", str(run), "--actions", "3", "--repeats", "2", "--hold", "4",
                     "--out", str(tmp_path / "snr.json")]) == 0
    result = json.loads((tmp_path / "snr.json").read_text())
    assert np.isfinite(result["rewards"]).all() and result["noise_var"] > 0 and math.isfinite(result["snr"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("snr=")
    bare = tmp_path / "bare"
    Trainer(build_config("mt10_cpu", {**BASE, "steps": 21}), bare, progress=False, env=mt10_env).run()
    assert snr_main(["--run", str(bare)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--save-replay" in err[0]
