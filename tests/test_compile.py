"""``--compile``: the compiled update (``rl_mtl/compiled.py``) against the eager one, which the other tests pin to
autograd and hand computations.  Tiny networks (compilation, not the sizes, is what costs here):

* three updates of a compiled agent equal three eager ones within float tolerance — parameters, target network,
  temperatures, Adam moments, metrics, combiner state — for plain MTSAC (multihead, task heads on their own
  gradient, active gradient clipping, diagnostics), IMGrad, FAMO and plain MTSAC under a loss weighting;
* a non-finite loss is skipped and counted as in the eager update, weights and optimiser state untouched;
* checkpoints are unaffected: same keys, an eager agent continues a compiled one's checkpoint and vice versa, and
  a checkpoint of a CUDA-graph run (``capturable=True``) loads into a CPU agent;
* the option: ``--compile`` / ``--set compile=true``, and a resume may switch it;
* a compiled run's console holds our lines only (no raw torch warning).
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import Tensor

from rl_mtl.agents import MTSAC, Batch, SACConfig
from rl_mtl.compiled import compile_update
from rl_mtl.config import build_config
from rl_mtl.routing import CombinedStep, build_steps
from rl_mtl.train import RESUMABLE, build_parser, cli_overrides

K, N, OBS, ACT = 4, 6, 9, 3
CLOSE = {"rtol": 1e-4, "atol": 1e-6}


@pytest.fixture(autouse=True)
def _no_silent_eager() -> Iterator[None]:
    """A compiled function that ran out of recompiles would run eagerly and pass trivially: make that an error.
    (Through torch's own ``config.patch``: pytest >= 9.2's monkeypatch deletes a torch config entry on undo.)"""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


def make_batch(seed: int, nan_reward: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(K, N, generator=g)
    if nan_reward:
        reward[1, 2] = float("nan")
    return Batch(obs=torch.randn(K, N, OBS, generator=g), action=torch.rand(K, N, ACT, generator=g) * 2 - 1,
                 reward=reward, next_obs=torch.randn(K, N, OBS, generator=g),
                 terminated=(torch.rand(K, N, generator=g) < 0.3).float(), task=torch.arange(K)[:, None].expand(K, N))


def learner(method: str, compiled: bool, weighting: str = "none", diag_every: int = 2,
            combine_params: str = "all", **sac: Any) -> tuple[MTSAC, dict[str, CombinedStep]]:
    """A seeded agent with ``method``'s combined steps (as the trainer builds them), compiled or eager."""
    torch.manual_seed(0)
    agent = MTSAC(OBS, ACT, K, SACConfig(hidden_sizes=(16, 16), **sac), "cpu")
    steps = build_steps(method, {}, "auto", diag_every, 0, weighting, {"hold": 1} if weighting != "none" else None,
                        combine_params=combine_params)
    agent.reducers.update(steps)
    if compiled:
        compile_update(agent, steps)
    return agent, steps


def run_updates(agent: MTSAC, seeds: range, nan_at: int | None = None) -> list[dict[str, Tensor]]:
    """Updates on fixed batches with torch's RNG seeded alike (the update draws its policy noise from it)."""
    torch.manual_seed(123)
    return [agent.update(make_batch(s, nan_reward=s == nan_at)) for s in seeds]


def adam_moments(agent: MTSAC) -> list[Tensor]:
    return [state[key] for opt in agent.optimizers() for state in opt.state.values()
            for key in ("exp_avg", "exp_avg_sq")]


CASES = {
    "mtsac-multihead-heads-clip": dict(method="mtsac", arch="multihead", combine_params="shared", grad_clip=0.05),
    "imgrad": dict(method="imgrad"),
    "famo": dict(method="famo"),
    "mtsac+rlw": dict(method="mtsac", weighting="rlw"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_updates_equal_eager(case: str) -> None:
    eager, eager_steps = learner(compiled=False, **CASES[case])
    compiled, compiled_steps = learner(compiled=True, **CASES[case])
    assert all(step.weighted_gradients is not None for step in compiled_steps.values())
    expected, got = run_updates(eager, range(3)), run_updates(compiled, range(3))
    for (name, p), q in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(q, p, **CLOSE, msg=lambda m, name=name: f"{name}: {m}")
    # the updates moved the weights by far more than the tolerance: the comparison is not vacuous
    assert max((p - q).abs().max() for p, q in zip(learner(compiled=False, **CASES[case])[0].state_dict().values(),
                                                    eager.state_dict().values())) > 1e-4
    torch.testing.assert_close(adam_moments(compiled), adam_moments(eager), **CLOSE)
    for e, c in zip(expected, got):
        assert e.keys() == c.keys()
        for key in e:
            torch.testing.assert_close(c[key], e[key], **CLOSE, msg=lambda m, key=key: f"{key}: {m}")
    assert compiled.skipped_steps == eager.skipped_steps == 0
    for part in eager_steps:
        e_state, c_state = eager_steps[part].combiner.state_dict(), compiled_steps[part].combiner.state_dict()
        assert e_state.keys() == c_state.keys()
        if "logits" in e_state:  # FAMO's learnt task logits follow the same losses
            torch.testing.assert_close(torch.tensor(c_state["logits"]), torch.tensor(e_state["logits"]), **CLOSE)
        e_stats, c_stats = eager_steps[part].pop_stats(), compiled_steps[part].pop_stats()
        assert e_stats[0].keys() == c_stats[0].keys() and e_stats[1].keys() == c_stats[1].keys()


def test_compiled_nonfinite_loss_is_skipped_and_counted() -> None:
    eager, _ = learner("imgrad", compiled=False)
    compiled, _ = learner("imgrad", compiled=True)
    critic_before = copy.deepcopy(compiled.critic.state_dict())
    run_updates(eager, range(1), nan_at=0)
    run_updates(compiled, range(1), nan_at=0)
    assert compiled.skipped_steps == eager.skipped_steps == 1  # the critic step; the actor's loss is finite
    for name, value in compiled.critic.state_dict().items():
        assert torch.equal(value, critic_before[name]), name
    assert not compiled.critic_optimizer.state  # Adam never stepped: no state was created
    torch.testing.assert_close(compiled.actor.state_dict(), eager.actor.state_dict(), **CLOSE)


def test_checkpoints_are_unaffected_by_compile() -> None:
    eager, _ = learner("imgrad", compiled=False)
    compiled, _ = learner("imgrad", compiled=True)
    run_updates(eager, range(2))
    run_updates(compiled, range(2))
    # copies: a state dict holds the live tensors, which the next update changes in place
    saved_compiled, saved_eager = copy.deepcopy(compiled.full_state_dict()), copy.deepcopy(eager.full_state_dict())
    assert saved_compiled["modules"].keys() == saved_eager["modules"].keys()
    assert saved_compiled.keys() == saved_eager.keys()
    # an eager agent continues the compiled agent's checkpoint, a compiled one the eager agent's
    resumed_eager, _ = learner("imgrad", compiled=False)
    resumed_eager.load_full_state_dict(copy.deepcopy(saved_compiled))
    resumed_compiled, _ = learner("imgrad", compiled=True)
    resumed_compiled.load_full_state_dict(copy.deepcopy(saved_eager))
    for agent in (eager, compiled, resumed_eager, resumed_compiled):
        run_updates(agent, range(2, 3))
    for agent in (compiled, resumed_eager, resumed_compiled):
        torch.testing.assert_close(agent.state_dict(), eager.state_dict(), **CLOSE)
        assert agent.num_updates == 3
    # a CUDA-graph run's optimisers are capturable; a CPU agent (which refuses capturable) still resumes it
    captured = copy.deepcopy(saved_eager)
    for key in ("critic_optimizer", "actor_optimizer", "alpha_optimizer"):
        for group in captured[key]["param_groups"]:
            group["capturable"] = True
    cpu_agent, _ = learner("imgrad", compiled=False)
    cpu_agent.load_full_state_dict(captured)
    assert not any(g["capturable"] for opt in cpu_agent.optimizers() for g in opt.param_groups)
    run_updates(cpu_agent, range(2, 3))
    torch.testing.assert_close(cpu_agent.state_dict(), eager.state_dict(), **CLOSE)


def test_compile_option_flag_and_resume() -> None:
    parser = build_parser()
    assert build_config("mt10_cpu").compile is False
    assert build_config("mt10_cpu", cli_overrides(parser.parse_args(["--compile"]))).compile is True
    assert build_config("mt10_cpu", cli_overrides(parser.parse_args(["--set", "compile=true"]))).compile is True
    assert "compile" in RESUMABLE  # it changes how the update runs, not what it computes


def test_compiled_training_console_holds_only_our_lines(tmp_path: Path) -> None:
    """A ``--compile`` run's console: the compile note once and no raw torch log line (dynamo's "Profiler record
    function ... will be ignored", which every compiled optimiser step used to print). A fresh process, since
    dynamo warns once per process."""
    run = subprocess.run(
        [sys.executable, "-m", "rl_mtl.train", "--env", "mt1:reach-v3", "--config", "mt10_cpu", "--compile",
         "--steps", "40", "--logdir", str(tmp_path / "run"), "--no-progress", "--set", "hidden_sizes=16,16",
         "--set", "batch_size=8", "--set", "warmup_steps=10", "--set", "max_episode_steps=20",
         "--set", "eval_every=0", "--set", "eval_episodes=1", "--set", "torch_threads=1"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = (run.stdout + run.stderr).splitlines()
    assert sum("--compile: the update was compiled" in line for line in lines) == 1, lines
    torch_lines = [line for line in lines if re.match(r"[IWE]\d{4} ", line) or "will be ignored" in line]
    assert not torch_lines, torch_lines
