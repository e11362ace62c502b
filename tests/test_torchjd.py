"""TorchJD's weightings behind the combiner seam (``rl_mtl/combiners/torchjd_adapter.py``): each bridged method's
direction is TorchJD's own aggregation of the same Jacobian (times the documented rescale), on random and
adversarial task gradients; the state of the stateful ones survives checkpoints; every method trains on MT10; and
without TorchJD ``--method upgrad`` stops with the install line."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from install_helpers import expected_hint
from trainer_helpers import stop_at
from rl_mtl import combiners
from rl_mtl.config import ConfigError, build_config, parse_set
from rl_mtl.train import main

#: setup.cfg's torchjd extra as a pip command, or the checkout's pip install -e (tests/install_helpers.py)
INSTALL = expected_hint("torchjd")
#: the bridged methods, as the registry lists them
BRIDGED = [n for n in combiners.names() if combiners.get_class(n).__module__.endswith("torchjd_adapter")]
K = 10


# ---------------------------------------------------------------------------------------------- without TorchJD
def test_without_torchjd_the_method_exits_2_with_the_install_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """TorchJD absent (``None`` in ``sys.modules`` blocks its import): one line naming --method and the install
    command, exit 2, before any env is built; ``--help`` and the registry still work and show the line too."""
    monkeypatch.setitem(sys.modules, "torchjd", None)
    with pytest.raises(SystemExit) as info:
        main(["--env", "mt10", "--method", "upgrad", "--logdir", str(tmp_path / "run"), "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("python -m rl_mtl.train: error: --method: method upgrad needs torchjd")
    assert err[0].endswith(INSTALL)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ModuleNotFoundError, match=re.escape(INSTALL)):
        combiners.make("gradvac")
    assert combiners.hparams("gradvac") == {"beta": 0.5, "eps": 1e-8, "seed": 0}
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for name in BRIDGED:
        line = next(line for line in help_text.splitlines() if line.strip().startswith(f"{name}:"))
        assert INSTALL in line, line
    assert "fairgrad: alpha=2.0, max_iters=None" in help_text


# ---------------------------------------------------------------------------------------------- the references
def references() -> dict[str, tuple[dict[str, Any], Callable[[], Any], str]]:
    """case → (our hyperparameters, TorchJD's aggregator built with the same ones, the rescale: '1', '1/K' or
    '1/sum' — the module table restated)."""
    from torchjd import aggregation as A

    pref = [0.05, 0.15, 0.1, 0.1, 0.05, 0.15, 0.1, 0.1, 0.05, 0.15]
    return {
        "upgrad": ({}, A.UPGrad, "1"),
        "upgrad-pref": ({"pref_vector": pref}, lambda: A.UPGrad(pref_vector=torch.tensor(pref, dtype=torch.float64)),
                        "1"),
        "dualproj": ({}, A.DualProj, "1"),
        "imtl_g": ({}, A.IMTLG, "1"),
        "fairgrad": ({}, lambda: A.FairGrad(alpha=2.0), "1/sum"),
        "fairgrad-alpha0.5": ({"alpha": 0.5}, lambda: A.FairGrad(alpha=0.5), "1/sum"),
        "gradvac": ({}, A.GradVac, "1/K"),
        "gradvac-beta0.9": ({"beta": 0.9}, lambda: A.GradVac(beta=0.9), "1/K"),
        "cr_mogm": ({}, lambda: A.GramianWeightedAggregator(A.CRMOGMWeighting(A.UPGradWeighting())), "1"),
        "cr_mogm-gradvac": ({"inner": "gradvac", "alpha": 0.5}, lambda: A.GramianWeightedAggregator(
            A.CRMOGMWeighting(A.GradVacWeighting(), alpha=0.5)), "1/K"),
        "modo": ({}, lambda: A.GramianWeightedAggregator(A.MoDoWeighting()), "1"),
        "modo-gamma": ({"gamma": 0.5, "rho": 0.0}, lambda: A.GramianWeightedAggregator(
            A.MoDoWeighting(gamma=0.5, rho=0.0)), "1"),
        "sdmgrad": ({}, lambda: A.GramianWeightedAggregator(A.SDMGradWeighting()), "1"),
        "pcd": ({}, A.PCD, "1"),
        "pcd-tau": ({"tau": 0.2, "beta": 0.9}, lambda: A.PCD(tau=0.2, beta=0.9), "1"),
        "random_weighting": ({}, A.Random, "1"),
    }


CASES = ["upgrad", "upgrad-pref", "dualproj", "imtl_g", "fairgrad", "fairgrad-alpha0.5", "gradvac", "gradvac-beta0.9",
         "cr_mogm", "cr_mogm-gradvac", "modo", "modo-gamma", "sdmgrad", "pcd", "pcd-tau", "random_weighting"]


def test_every_bridged_method_has_a_reference_case() -> None:
    assert sorted({case.split("-")[0] for case in CASES}) == sorted(BRIDGED)
    assert len(BRIDGED) == 10


def jacobians(seed: int = 0, dim: int = 64) -> list[torch.Tensor]:
    """Random and adversarial (K, dim) Jacobians, task-gradient norms spread up to 1e3, each scaled to
    tr(JJᵀ)/K = 1 — the scale at which the adapter hands TorchJD the Gram — so TorchJD's call on J itself is the
    reference: random with a shared part; pure imbalance; one task against the others; rank 3; nearly parallel."""
    rng = np.random.default_rng(seed)
    norms = np.logspace(0.0, 3.0, K)
    rng.shuffle(norms)

    def unit_rows(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    shared = rng.standard_normal(dim)
    random = rng.standard_normal((K, dim)) * np.exp(rng.uniform(0.0, np.log(1e3), K))[:, None] + 0.3 * shared
    imbalance = unit_rows(rng.standard_normal((K, dim))) * norms[:, None]
    against = unit_rows(rng.standard_normal((K, dim)) + shared)
    against[0] = -against[1:].sum(0) / np.linalg.norm(against[1:].sum(0)) + 0.1 * rng.standard_normal(dim) / dim
    against = unit_rows(against) * norms[:, None]
    rank3 = unit_rows(rng.standard_normal((K, 3)) @ rng.standard_normal((3, dim))) * norms[:, None]
    parallel = unit_rows(shared + 0.05 * rng.standard_normal((K, dim))) * norms[:, None]
    out = []
    for j in (random, imbalance, against, rank3, parallel, imbalance[::-1].copy(), random * 1.5, against):
        out.append(torch.from_numpy(j / np.sqrt(np.trace(j @ j.T) / K)))
    return out


#: the Jacobians of :func:`jacobians` on which FairGrad's equation has a solution its least squares reaches (the
#: others are near-singular: TorchJD's iterate stops short there and moves with the last bit of the Gram)
WELL_POSED = (0, 1, 4, 5, 6)


def sequence_for(case: str, seed: int) -> list[torch.Tensor]:
    """:func:`jacobians`, for FairGrad only the well-posed ones."""
    sequence = jacobians(seed)
    return [sequence[i] for i in WELL_POSED] if case.startswith("fairgrad") else sequence


def losses() -> torch.Tensor:
    return torch.ones(K, dtype=torch.float64)


def rescaled(direction: torch.Tensor, kind: str, raw_weights: Callable[[], torch.Tensor]) -> torch.Tensor:
    """TorchJD's direction times the documented factor: 1, 1/K, or 1/Σw (the raw weights asked only then)."""
    if kind == "1/K":
        return direction / K
    if kind == "1/sum":
        return direction / raw_weights().sum()
    return direction


@pytest.mark.parametrize("case", CASES)
def test_direction_is_torchjd_own_aggregation(case: str) -> None:
    """Along a sequence of 8 Jacobians (stateful methods carry their state along it), d = Σ w_k g_k from our
    weights equals TorchJD's aggregator on the same J, rescaled; seeded methods draw what TorchJD draws after
    ``torch.manual_seed(seed)``."""
    pytest.importorskip("torchjd")
    from torchjd.aggregation import FairGradWeighting

    from rl_mtl.combiners.base import _normalise

    options, aggregator, kind = references()[case]
    ours = combiners.make(case.split("-")[0], seed=5, **options)
    reference = aggregator()
    sequence = jacobians()
    torch.manual_seed(5)
    compared = 0
    for step, jac in enumerate(sequence):
        gram = jac @ jac.T
        weights = ours(gram, losses())
        assert ours.stats()["fallback"] == 0.0
        if kind == "1/sum" and ours.stats()["residual"] > 1e-8:
            # FairGrad's least squares stops short on near-singular Grams (against, rank 3): its iterate then moves
            # with the last bit of the Gram, so the reference is TorchJD on the exact Gram the adapter hands it
            fair = FairGradWeighting(alpha=options.get("alpha", 2.0))(torch.from_numpy(_normalise(gram.numpy())[0]))
            torch.testing.assert_close(weights, fair / fair.sum(), rtol=1e-12, atol=0.0)
            continue
        d_ref = rescaled(reference(jac), kind, lambda: FairGradWeighting(alpha=options.get("alpha", 2.0))(gram))
        scale = float(jac.norm(dim=1).max())
        torch.testing.assert_close(weights @ jac, d_ref, rtol=1e-9, atol=1e-9 * scale, msg=f"step {step}")
        compared += 1
    assert compared >= 5


@pytest.mark.parametrize("case", CASES)
def test_weights_are_scale_free(case: str) -> None:
    """The Gram is trace-normalised before TorchJD sees it: the same sequence at gradient scales 1e-3 and 1e2
    (Grams × 1e-6 and × 1e4) gives the weights of the unit-scale sequence (MoDo's γ included)."""
    pytest.importorskip("torchjd")
    name, options = case.split("-")[0], references()[case][0]
    runs = []
    for factor in (1.0, 1e-6, 1e4):
        comb = combiners.make(name, seed=2, **options)
        runs.append(torch.stack([comb(factor * (j @ j.T), losses()) for j in sequence_for(case, seed=1)]))
    rtol = 1e-6 if name == "fairgrad" else 1e-8  # FairGrad: scipy's least squares stops at xtol = 1e-8
    torch.testing.assert_close(runs[1], runs[0], rtol=rtol, atol=rtol * 1e-2)
    torch.testing.assert_close(runs[2], runs[0], rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("case", CASES)
def test_checkpointed_state_continues_exactly(case: str) -> None:
    """State after 4 calls, through ``torch.save``/``torch.load`` as in a checkpoint, loaded into a combiner built
    with another seed: the next 4 calls are bit-identical; for stateful methods a fresh combiner differs (the
    state matters); ``reset()`` gives the fresh combiner's weights."""
    pytest.importorskip("torchjd")
    name, options = case.split("-")[0], references()[case][0]
    sequence = sequence_for(case, seed=3)
    comb = combiners.make(name, seed=4, **options)
    for jac in sequence[:4]:
        comb(jac @ jac.T, losses())
    buffer = io.BytesIO()
    torch.save(comb.state_dict(), buffer)
    buffer.seek(0)
    restored = combiners.make(name, seed=99, **options)
    restored.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=False))
    fresh = combiners.make(name, seed=4, **options)
    expected = [comb(j @ j.T, losses()) for j in sequence[4:]]
    got = [restored(j @ j.T, losses()) for j in sequence[4:]]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    stateful = name in ("gradvac", "cr_mogm", "modo", "sdmgrad", "pcd", "random_weighting")
    fresh_out = [fresh(j @ j.T, losses()) for j in sequence[4:]]
    assert stateful != all(torch.equal(a, b) for a, b in zip(expected, fresh_out))
    comb.reset()
    again = combiners.make(name, seed=4, **options)
    assert torch.equal(comb(sequence[0] @ sequence[0].T, losses()), again(sequence[0] @ sequence[0].T, losses()))


@pytest.mark.parametrize("name", BRIDGED)
def test_agreeing_tasks_give_mtsac_direction(name: str) -> None:
    """The mean convention, by hand: when every task has the same gradient g (no conflict, no imbalance), mtsac's
    d = (1/K) Σ g_k = g, and so is every bridged method's d once rescaled (TorchJD's GradVac alone would give K g)."""
    pytest.importorskip("torchjd")
    g = torch.from_numpy(np.random.default_rng(0).standard_normal(32)) * 3.0
    jac = g.repeat(K, 1)
    comb = combiners.make(name)
    for _ in range(3):  # the stateful ones stay there
        torch.testing.assert_close(comb(jac @ jac.T, losses()) @ jac, g, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["gradvac", "random_weighting"])
def test_random_draws_leave_the_global_torch_stream_alone(name: str) -> None:
    """TorchJD draws from torch's global RNG; the adapter gives it a private generator instead."""
    pytest.importorskip("torchjd")
    comb = combiners.make(name)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    comb(jacobians()[0] @ jacobians()[0].T, losses())
    assert torch.equal(torch.rand(3), expected)


def test_a_solver_error_falls_back_to_the_mean_and_is_counted() -> None:
    pytest.importorskip("torchjd")
    comb = combiners.make("upgrad")

    def fail(gram: torch.Tensor) -> torch.Tensor:
        raise ValueError("Failed to solve the quadratic programming problem.")

    comb._weighting.forward = fail  # quadprog's failure on a pathological Gram, without hunting for one
    weights = comb(jacobians()[0] @ jacobians()[0].T, losses())
    assert weights.numpy() == pytest.approx(np.full(K, 1.0 / K))
    stats = comb.stats()
    assert stats["fallback"] == 1.0 and stats["solver_error"] == 1.0 and comb.fallbacks == 1
    assert "quadratic programming" in comb.last_error


@pytest.mark.parametrize(("settings", "flag", "text"), [
    (["combiner.beta=2"], "--set combiner.beta", "beta must be a number in [0, 1], got 2"),
    (["combiner.pref_vector=[0.5, 0.5]"], "--set combiner.pref_vector", "has 2 entries, the 10 tasks"),
    (["combiner.tau=[0.1, 0.1]"], "--set combiner.tau", "has 2 entries, the 9 tasks"),
    (["combiner.inner=mgda"], "--set combiner.inner", "inner must be one of upgrad, dualproj"),
    (["combiner.n_iter=0.5"], "--set combiner.n_iter", "n_iter must be an integer >= 1"),
    (["combiner.nope=1"], "--set combiner.nope", "unknown option"),
])
def test_bad_options_name_their_flag(settings: list[str], flag: str, text: str) -> None:
    pytest.importorskip("torchjd")
    method = {"beta": "gradvac", "pref_vector": "upgrad", "tau": "pcd", "inner": "cr_mogm", "n_iter": "sdmgrad",
              "nope": "modo"}[settings[0].split("=")[0].split(".")[1]]
    with pytest.raises(ConfigError) as info:
        build_config("mt10_cpu", {"method": method, **parse_set(settings)})
    assert info.value.flag == flag and text in str(info.value)


# ---------------------------------------------------------------------------------------------- training on MT10
TINY = ["steps=14", "warmup_steps=8", "batch_size=20", "hidden_sizes=32,32", "eval_every=0", "eval_episodes=1",
        "max_episode_steps=20", "log_every=7", "diag_every=2", "checkpoint_every=0", "torch_threads=1"]


@pytest.fixture(scope="module")
def mt10() -> Any:
    """One MT10 env for every run of this module (building it costs more than a tiny run), with its fresh state."""
    pytest.importorskip("torchjd")
    from rl_mtl.envs.metaworld import make_env

    env = make_env("mt10", seed=0, max_episode_steps=20)
    env.reset(seed=0)
    yield env, env.get_state()
    env.close()


def rows(run: Path, prefixes: tuple[str, ...]) -> list[tuple[str, str, str]]:
    with open(run / "metrics.csv") as handle:
        return [(r["step"], r["key"], r["value"]) for r in csv.DictReader(handle)
                if r["key"].startswith(prefixes) and "solver_ms" not in r["key"]]


@pytest.mark.parametrize("name", BRIDGED)
def test_every_bridged_method_trains_on_mt10(name: str, mt10: Any, tmp_path: Path) -> None:
    """Six real updates of both losses per method, configured as ``--method NAME --set ...`` is: finite losses,
    the Pareto diagnostics and the adapter's own (TorchJD's raw weight sum) logged, no fallback."""
    from rl_mtl.trainer import Trainer

    env, fresh = mt10
    env.set_state(fresh)
    cfg = build_config("mt10_cpu", {"method": name, **parse_set(TINY)})
    result = Trainer(cfg, tmp_path / name, progress=False, env=env).run()
    assert 0.0 <= result["mean"] <= 1.0
    logged = {key: float(value) for _, key, value in rows(tmp_path / name, ("loss/", "combiner/"))}
    for key in ("loss/critic/mean", "loss/actor/mean", "combiner/critic/cos_theta", "combiner/actor/min_cos_dk",
                "combiner/critic/pareto_failure_rate", "combiner/critic/grad_norm/push-v3",
                "combiner/actor/weight/reach-v3", "combiner/critic/raw_weight_sum", "combiner/actor/raw_weight_sum"):
        assert key in logged, key
    assert all(np.isfinite(v) for v in logged.values())
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["combiner_fallbacks"] == {"critic": 0, "actor": 0}


def test_resume_keeps_the_torchjd_state(mt10: Any, tmp_path: Path) -> None:
    """CR-MOGM over GradVac (two nested EMAs and GradVac's private RNG): a run stopped at loop step 13 (SIGTERM's
    checkpoint) and resumed with its saved replay logs the uninterrupted run's losses and combiner diagnostics and
    ends with its parameters and combiner state, bit for bit."""
    from rl_mtl.trainer import Trainer

    env, fresh = mt10
    settings = [s for s in TINY if not s.startswith(("steps=", "log_every="))]
    settings += ["steps=20", "log_every=1", "save_replay=true", "combiner.inner=gradvac", "combiner.alpha=0.5"]
    cfg = build_config("mt10_cpu", {"method": "cr_mogm", **parse_set(settings)})
    env.set_state(fresh)
    straight = tmp_path / "straight"
    Trainer(cfg, straight, progress=False, env=env).run()

    env.set_state(fresh)
    resumed = tmp_path / "resumed"
    first = Trainer(cfg, resumed, progress=False, env=env)
    stop_at(first, 13)
    assert first.run() == {"interrupted": True, "step": 13}
    saved = torch.load(resumed / "checkpoints" / "last.pt", weights_only=False)["combined"]["critic"]["combiner"]
    assert saved["num_tasks"] == K and saved["torchjd"]["_lambda"].abs().sum() > 0
    assert saved["torchjd"]["weighting._phi_t"].abs().sum() > 0
    second = Trainer(cfg, resumed, resume=True, progress=False, env=env)
    assert str(second.combined["critic"].combiner.state_dict()) == str(saved)
    second.run()

    prefixes = ("loss/", "alpha/", "combiner/", "train/")
    assert len(rows(straight, ("combiner/critic/raw_weight_sum",))) == 6  # diag_every=2 of 12 updates
    assert rows(resumed, prefixes) == rows(straight, prefixes)
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=False) for r in (straight, resumed))
    assert all(torch.equal(a["agent"]["modules"][k], b["agent"]["modules"][k]) for k in a["agent"]["modules"])
    for part in ("critic", "actor"):
        assert str(a["combined"][part]["combiner"]) == str(b["combined"][part]["combiner"])
