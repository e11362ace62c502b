"""The learner on CUDA (skipped without a GPU; ``scripts/device_check.sh`` runs these on a GPU machine):

* an update on CUDA equals the same update on the CPU within float tolerance — plain MTSAC and IMGrad, eager and
  compiled (``--compile``: inductor kernels captured as CUDA graphs, none skipped) — with the policy noise drawn on
  the CPU for both, so that only the arithmetic differs; at the paper-scale shapes of ``scripts/bench_update.py``
  (mt10: 3×400 networks, batch 1280), so that the benchmark's compiles after these tests hit inductor's graph cache;
* a loop step's crossing to the device (``StepTransfer``) delivers the step's arrays, the replay stores and samples
  them there, and the acting policy (GPU actor or CPU copy) returns actions of the right shape and range;
* a short ``--device cuda --rollout async --compile`` run (mt10's networks and batch) resumes from its checkpoint
  and finishes, and an IMGrad + IGBv2 run interrupted mid log interval resumes on CUDA;
* without a GPU: the state comparison's criterion (:func:`state_mismatch`) accepts float rounding and rejects real
  bugs, on CPU updates; ``scripts/device_check.sh --cpu`` (the check's rehearsal at tiny sizes) runs and reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torch._dynamo.utils import counters

from rl_mtl.acting import ActingPolicy
from rl_mtl.agent_setup import sac_config
from rl_mtl.agents import MTSAC, Batch, SACConfig
from rl_mtl.agents.replay import MultiTaskReplay
from rl_mtl.compiled import compile_update
from rl_mtl.config import build_config
from rl_mtl.routing import build_steps
from rl_mtl.transfer import StepTransfer
from trainer_helpers import stop_at  # tests/trainer_helpers.py

ROOT = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine")

PAPER = build_config("mt10")  # scripts/bench_update.py's learner: the same graphs, so its compiles hit the cache
K, OBS, ACT = 10, 49, 4
N = PAPER.batch_size // K
CUDA = torch.device("cuda")
UPDATES = 3
STATE_RTOL, STATE_ATOL = 1e-3, 1e-5
# Adam moves a weight by about lr per step (at most a few lr): the bound on any element's difference after UPDATES
MAX_MOVE = 3 * max(PAPER.actor_lr, PAPER.critic_lr, PAPER.alpha_lr) * UPDATES


@pytest.fixture()
def _full_fp32() -> Iterator[None]:
    """Float32 matrix products in full precision (no TF32), so the CPU comparison is one of rounding alone.

    That is torch's default for matrix products; the flag is set only where it is not, because setting it (even to
    its default) changes inductor's cache key (``torch.backends.cuda.matmul.fp32_precision``), and the benchmark
    after these tests is to find their graphs in that cache.
    """
    matmul, cudnn_tf32 = torch.backends.cuda.matmul, torch.backends.cudnn.allow_tf32
    tf32 = matmul.allow_tf32
    if tf32:
        matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    if tf32:
        matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = cudnn_tf32


def make_batch(seed: int) -> Batch:
    """A random MT10-shaped batch on the CPU, laid out as ``MultiTaskReplay.sample``'s (contiguous)."""
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randn(K, N, OBS, generator=g), action=torch.rand(K, N, ACT, generator=g) * 2 - 1,
                 reward=torch.rand(K, N, generator=g) * 10, next_obs=torch.randn(K, N, OBS, generator=g),
                 terminated=(torch.rand(K, N, generator=g) < 0.05).float(),
                 task=torch.arange(K)[:, None].expand(K, N).contiguous())


def to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with every tensor on ``device``."""
    return Batch(**{f.name: getattr(batch, f.name).to(device) for f in fields(batch)})


def learner(method: str, device: torch.device, compiled: bool, sac: SACConfig | None = None) -> MTSAC:
    """The paper-scale agent as ``scripts/bench_update.py`` builds it (``sac``: other hyperparameters instead)."""
    torch.manual_seed(0)  # the networks are initialised on the CPU, then moved: the same weights on both devices
    agent = MTSAC(OBS, ACT, K, sac or sac_config(PAPER), device)
    steps = build_steps(method, {}, "auto", PAPER.diag_every, 0)
    agent.reducers.update(steps)
    if compiled:
        compile_update(agent, steps)
    return agent


def cpu_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.randn_like`` (the update's policy noise) from one CPU generator, moved to the tensor's device."""
    generator = torch.Generator().manual_seed(7)
    monkeypatch.setattr(torch, "randn_like", lambda t, **_: torch.randn(t.shape, generator=generator).to(t.device))


def state_mismatch(got: dict[str, Tensor], want: dict[str, Tensor], *, rtol: float = STATE_RTOL,
                   atol: float = STATE_ATOL, max_move: float = MAX_MOVE, outlier_fraction: float = 1e-3,
                   min_outliers: int = 8) -> str | None:
    """Why state ``got`` is not ``want`` up to float rounding (one line), or None when it is.

    Rounding (cuBLAS against MKL) agrees in bulk, not in every element: Adam's first step moves a weight by ±lr
    whatever its gradient's size, so a weight whose gradient is within rounding of zero may move either way (2·lr
    apart). Hence all but max(``min_outliers``, ``outlier_fraction``·n) of the n elements within ``rtol``/``atol``,
    and none further apart than ``max_move`` (what Adam can move a weight in the updates compared).
    """
    if got.keys() != want.keys():
        return f"different entries: {sorted(got.keys() ^ want.keys())}"
    total = outside = 0
    worst, worst_name = 0.0, ""
    for name, w in want.items():
        g = got[name]
        if g.shape != w.shape:
            return f"{name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        if not (torch.isfinite(g).all() and torch.isfinite(w).all()):
            return f"{name}: non-finite values"
        diff = (g.double() - w.double()).abs()
        total += w.numel()
        outside += int((diff > atol + rtol * w.double().abs()).sum())
        if diff.numel() and float(diff.max()) > worst:
            worst, worst_name = float(diff.max()), name
    allowed = max(min_outliers, int(outlier_fraction * total))
    if worst > max_move:
        return f"{worst_name}: an element {worst:.3g} apart, more than the {max_move:.3g} Adam can move it"
    if outside > allowed:
        return (f"{outside} of {total} elements outside rtol={rtol}, atol={atol} (at most {allowed} allowed); "
                f"largest difference {worst:.3g} in {worst_name}")
    return None


def updated(method: str, device: torch.device, compiled: bool, batches: list[Batch], monkeypatch: pytest.MonkeyPatch,
            sac: SACConfig | None = None) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """The agent's state and each update's metrics (on the CPU) after one update per batch, on ``device``."""
    cpu_noise(monkeypatch)
    agent = learner(method, device, compiled, sac)
    metrics = [agent.update(to_device(batch, device)) for batch in batches]
    assert agent.skipped_steps == 0
    return ({k: v.detach().cpu() for k, v in agent.state_dict().items()},
            [{k: v.cpu() for k, v in m.items()} for m in metrics])


@needs_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("method", ["mtsac", "imgrad"])
@pytest.mark.usefixtures("_full_fp32")
def test_cuda_update_equals_cpu_update(method: str, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """After three updates: the states agree in bulk (:func:`state_mismatch`), every metric within tolerance."""
    batches = [make_batch(seed) for seed in range(UPDATES)]
    cpu_state, cpu_metrics = updated(method, torch.device("cpu"), False, batches, monkeypatch)
    skips = counters["inductor"]["cudagraph_skips"]
    gpu_state, gpu_metrics = updated(method, CUDA, compiled, batches, monkeypatch)
    if compiled:  # every compiled part ran as a CUDA graph (else inductor warned "skipping cudagraphs due to ...")
        assert counters["inductor"]["cudagraph_skips"] == skips, "CUDA graphs were skipped (see the warnings)"
    mismatch = state_mismatch(gpu_state, cpu_state)
    assert mismatch is None, mismatch
    for c, g in zip(cpu_metrics, gpu_metrics):
        for key in c:
            torch.testing.assert_close(g[key], c[key], rtol=1e-3, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")


@needs_cuda
def test_transfer_replay_and_acting_on_cuda() -> None:
    rng = np.random.default_rng(0)
    transfer = StepTransfer(K, OBS, ACT, CUDA)
    replay = MultiTaskReplay(K, OBS, ACT, 16, CUDA, seed=0)
    steps = []
    for _ in range(5):  # more than the two pinned buffers: they alternate
        step = (rng.normal(size=(K, OBS)).astype(np.float32), rng.uniform(-1, 1, (K, ACT)).astype(np.float32),
                rng.uniform(0, 10, K).astype(np.float32), rng.normal(size=(K, OBS)).astype(np.float32),
                rng.uniform(size=K) < 0.5, rng.normal(size=(K, OBS)).astype(np.float32))
        moved = transfer(*step)
        replay.add(moved.obs, moved.action, moved.reward, moved.next_obs, moved.terminated)
        steps.append((step, moved))
    step, moved = steps[-1]  # the device buffer is reused: the views of the last step hold that step
    for host, dev in zip(step, (moved.obs, moved.action, moved.reward, moved.next_obs, moved.terminated,
                                moved.act_obs)):
        assert dev.device.type == "cuda"
        np.testing.assert_array_equal(dev.cpu().numpy(), host)
    for i, (step, _) in enumerate(steps):
        np.testing.assert_array_equal(replay.obs[:, i].cpu().numpy(), step[0])
    batch = replay.sample(K * 4)
    assert batch.obs.device.type == "cuda" and batch.obs.shape == (K, 4, OBS)
    agent = learner("mtsac", CUDA, False)
    for mode in ("learner", "cpu_copy"):
        policy = ActingPolicy(agent.actor, K, OBS, mode=mode)
        actions = policy.act(step[5], moved.act_obs)
        assert actions.shape == (K, ACT) and np.all(np.abs(actions) <= 1.0)
        policy.refresh()


@needs_cuda
def test_short_cuda_async_compiled_run_resumes(tmp_path: Path) -> None:
    from rl_mtl.train import main

    run = tmp_path / "run"
    # mt10's networks and batch (the graphs of test_cuda_update_equals_cpu_update[compiled-mtsac]: inductor's cache)
    short = ["--env", "mt10", "--config", "mt10", "--device", "cuda", "--rollout", "async", "--workers", "2",
             "--compile", "--logdir", str(run), "--set", "buffer_size=10000",
             "--set", "warmup_steps=10", "--set", "eval_every=0", "--set", "eval_episodes=1",
             "--set", "max_episode_steps=20", "--set", "log_every=10", "--set", "checkpoint_every=20", "--no-progress"]
    assert main([*short, "--steps", "30"]) == 0
    assert main(["--logdir", str(run), "--resume", "--steps", "50", "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_step"] == 50 and summary["skipped_updates"] == 0


@needs_cuda
def test_cuda_resume_mid_interval_with_a_weighting(tmp_path: Path) -> None:
    """Interrupted mid log interval (SIGTERM at step 15 of a 10-step interval), an IMGrad + IGBv2 run on CUDA resumes:
    the checkpoint's RNG states (CPU tensors that ``map_location`` moves to the GPU) and the interval's pending
    diagnostics and weighting sums (some on the CPU, some on the GPU) are restored where they belong."""
    from rl_mtl.trainer import Trainer

    run = tmp_path / "run"
    cfg = build_config("mt10_cpu", {"env": "mt10", "method": "imgrad", "weighting": "igbv2", "device": "cuda",
                                    "steps": 30, "batch_size": 40, "hidden_sizes": (32, 32), "warmup_steps": 5,
                                    "eval_every": 0, "eval_episodes": 1, "max_episode_steps": 20, "log_every": 10,
                                    "checkpoint_every": 0, "diag_every": 1, "save_replay": True,
                                    "weighting_opts": {"hold": 2, "warmup": 1, "learn_after": 1}})
    trainer = Trainer(cfg, run, resume=False, progress=False)
    stop_at(trainer, 15)
    assert trainer.run()["interrupted"]
    resumed = Trainer(cfg, run, resume=True, progress=False).run()
    assert resumed["mean"] >= 0.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_step"] == 30 and summary["skipped_updates"] == 0


def test_state_mismatch_allows_a_few_rounding_flips_and_no_large_move() -> None:
    """Rounding and up to max(8, 0.1 %) Adam flips pass; one more flip, one element moved too far, a wrong shape, a
    missing entry or a NaN is named."""
    want = {"w": torch.linspace(-0.05, 0.05, 20_000), "log_alpha": torch.zeros(3)}  # weights of the init's size
    allowed = 20  # max(8, 0.1 % of 20 003)
    assert state_mismatch(want, want) is None
    assert state_mismatch({k: v * (1 + 1e-6) for k, v in want.items()}, want) is None
    flip = 2 * PAPER.critic_lr  # a weight whose gradient is within rounding of zero, moved the other way by Adam
    flipped = {"w": want["w"].clone(), "log_alpha": want["log_alpha"]}
    flipped["w"][:allowed] += flip
    assert state_mismatch(flipped, want) is None
    flipped["w"][allowed] += flip
    assert "21 of 20003 elements outside" in (state_mismatch(flipped, want) or "")
    one_far = {"w": want["w"].clone(), "log_alpha": want["log_alpha"]}
    one_far["w"][5] += 1.01 * MAX_MOVE
    assert (state_mismatch(one_far, want) or "").startswith("w: an element")
    assert "shape" in (state_mismatch({**want, "w": want["w"][:-1]}, want) or "")
    assert "different entries" in (state_mismatch({"w": want["w"]}, want) or "")
    assert "non-finite" in (state_mismatch({**want, "log_alpha": torch.full((3,), float("nan"))}, want) or "")


def test_state_criterion_accepts_rounding_and_rejects_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU updates at the CUDA test's shapes: inputs perturbed at float rounding (1e-6 relative, the size of
    cuBLAS-vs-MKL differences) pass; a wrong learning rate or one task's reward with the wrong sign fails."""
    cpu = torch.device("cpu")
    batches = [make_batch(seed) for seed in range(UPDATES)]
    want, _ = updated("mtsac", cpu, False, batches, monkeypatch)
    g = torch.Generator().manual_seed(1001)

    def rounded(t: Tensor) -> Tensor:
        return t * (1 + 1e-6 * torch.randn(t.shape, generator=g))
    perturbed = [replace(b, obs=rounded(b.obs), action=rounded(b.action), reward=rounded(b.reward),
                         next_obs=rounded(b.next_obs)) for b in batches]
    got, _ = updated("mtsac", cpu, False, perturbed, monkeypatch)
    assert any(not torch.equal(got[k], want[k]) for k in want)  # the rounding did change the result
    assert state_mismatch(got, want) is None
    bugs = {"critic lr 10 % off": (batches, replace(sac_config(PAPER), critic_lr=1.1 * PAPER.critic_lr)),
            "task 0's reward negated": ([replace(b, reward=torch.cat([-b.reward[:1], b.reward[1:]])) for b in batches],
                                        None)}
    for bug, (data, sac) in bugs.items():
        got, _ = updated("mtsac", cpu, False, data, monkeypatch, sac)
        assert "elements outside" in (state_mismatch(got, want) or ""), bug


@pytest.mark.skipif(sys.platform != "linux", reason="the device check is a Linux bash script")
def test_device_check_cpu_rehearsal(tmp_path: Path) -> None:
    """``scripts/device_check.sh --cpu`` runs every step of the GPU check at tiny sizes and reports each figure."""
    log, out_dir = tmp_path / "check.log", tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(out_dir)}  # $OUT: the folder a device call brings back
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--cpu", "--log", str(log)],
                          capture_output=True, text=True, timeout=400, env=env)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]
    for section in ("1. install", "2. CUDA tests", "3. update benchmarks", "4. training run", "summary"):
        assert f"===== {section}" in out, section
    assert "torch before=" in out and "imports ok" in out
    for key in ("compile_vs_eager", "compile_s", "first_updates_s"):
        assert f"{key}_mt10_cpu_imgrad=" in out, key
    assert "cudagraph_skips_mt10_cpu_imgrad=0" in out  # no CUDA graphs on the CPU
    assert "test_state_criterion_accepts_rounding_and_rejects_bugs PASSED" in out  # pytest -v: each test's outcome
    assert "compile_note_lines=1" in out  # the compile time is printed once
    for figure in ("loop_steps_per_s=", "sim_ms=", "update_ms=", "overlap_vs_max=", "projected_2M_steps_h="):
        assert figure in out, figure
    assert "device_check: ok" in out and log.is_file() and "===== device_check mode=cpu" in log.read_text()
    for name in ("bench.txt", "run.txt", "metrics.csv", "summary.json", "config.yaml"):
        assert (out_dir / "device_check" / name).is_file(), name
