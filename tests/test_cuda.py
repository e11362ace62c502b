"""The learner on CUDA (skipped without a GPU; ``scripts/device_check.sh`` runs these on a GPU machine):

* an update on CUDA equals the same update on the CPU within float tolerance — plain MTSAC and IMGrad, eager and
  compiled (``--compile``: inductor kernels captured as CUDA graphs) — with the policy noise drawn on the CPU for
  both, so that only the arithmetic differs;
* a loop step's crossing to the device (``StepTransfer``) delivers the step's arrays, the replay stores and samples
  them there, and the acting policy (GPU actor or CPU copy) returns actions of the right shape and range;
* a short ``--device cuda --rollout async --compile`` run resumes from its checkpoint and finishes;
* without a GPU: ``scripts/device_check.sh --cpu`` (the check's rehearsal at tiny sizes) runs and reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from rl_mtl.acting import ActingPolicy
from rl_mtl.agents import MTSAC, Batch, SACConfig
from rl_mtl.agents.replay import MultiTaskReplay
from rl_mtl.compiled import compile_update
from rl_mtl.routing import build_steps
from rl_mtl.transfer import StepTransfer

ROOT = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine")

K, N, OBS, ACT = 10, 32, 49, 4
CUDA = torch.device("cuda")


@pytest.fixture()
def _full_fp32() -> Iterator[None]:
    """Float32 matrix products in full precision (no TF32), so the CPU comparison is one of rounding alone."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def make_batch(seed: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(seed)
    batch = Batch(obs=torch.randn(K, N, OBS, generator=g), action=torch.rand(K, N, ACT, generator=g) * 2 - 1,
                  reward=torch.rand(K, N, generator=g) * 10, next_obs=torch.randn(K, N, OBS, generator=g),
                  terminated=(torch.rand(K, N, generator=g) < 0.05).float(), task=torch.arange(K)[:, None].expand(K, N))
    return Batch(*(t.to(device) for t in (batch.obs, batch.action, batch.reward, batch.next_obs, batch.terminated,
                                          batch.task)))


def learner(method: str, device: torch.device, compiled: bool) -> MTSAC:
    torch.manual_seed(0)  # the networks are initialised on the CPU, then moved: the same weights on both devices
    agent = MTSAC(OBS, ACT, K, SACConfig(hidden_sizes=(256, 256)), device)
    steps = build_steps(method, {}, "auto", 2, 0)
    agent.reducers.update(steps)
    if compiled:
        compile_update(agent, steps)
    return agent


def cpu_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.randn_like`` (the update's policy noise) from one CPU generator, moved to the tensor's device."""
    generator = torch.Generator().manual_seed(7)
    monkeypatch.setattr(torch, "randn_like", lambda t, **_: torch.randn(t.shape, generator=generator).to(t.device))


@needs_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("method", ["mtsac", "imgrad"])
@pytest.mark.usefixtures("_full_fp32")
def test_cuda_update_equals_cpu_update(method: str, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    results: dict[str, tuple[dict[str, Tensor], list[dict[str, Tensor]]]] = {}
    for name, device, comp in (("cpu", torch.device("cpu"), False), ("cuda", CUDA, compiled)):
        cpu_noise(monkeypatch)
        agent = learner(method, device, comp)
        metrics = [agent.update(make_batch(seed, device)) for seed in range(3)]
        results[name] = ({k: v.cpu() for k, v in agent.state_dict().items()},
                         [{k: v.cpu() for k, v in m.items()} for m in metrics])
        assert agent.skipped_steps == 0
    (cpu_state, cpu_metrics), (gpu_state, gpu_metrics) = results["cpu"], results["cuda"]
    torch.testing.assert_close(gpu_state, cpu_state, rtol=1e-3, atol=1e-5)
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
    tiny = ["--env", "mt10", "--config", "mt10_cpu", "--device", "cuda", "--rollout", "async", "--workers", "2",
            "--compile", "--logdir", str(run), "--set", "hidden_sizes=64,64", "--set", "batch_size=40",
            "--set", "warmup_steps=10", "--set", "eval_every=0", "--set", "eval_episodes=1",
            "--set", "max_episode_steps=20", "--set", "log_every=10", "--set", "checkpoint_every=20", "--no-progress"]
    assert main([*tiny, "--steps", "30"]) == 0
    assert main(["--logdir", str(run), "--resume", "--steps", "50", "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_step"] == 50 and summary["skipped_updates"] == 0


@pytest.mark.skipif(sys.platform != "linux", reason="the device check is a Linux bash script")
def test_device_check_cpu_rehearsal(tmp_path: Path) -> None:
    """``scripts/device_check.sh --cpu`` runs every step of the GPU check at tiny sizes and reports each figure."""
    log = tmp_path / "check.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--cpu", "--log", str(log)],
                          capture_output=True, text=True, timeout=400, env=env)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]
    for section in ("1. install", "2. CUDA tests", "3. update benchmarks", "4. training run", "summary"):
        assert f"===== {section}" in out, section
    assert "torch before=" in out and "imports ok" in out
    assert "compile_vs_eager_mt10_cpu_imgrad=" in out and "compile_s_mt10_cpu_imgrad=" in out
    assert "compile_note_lines=1" in out  # the compile time is printed once
    for figure in ("loop_steps_per_s=", "sim_ms=", "update_ms=", "overlap_vs_max=", "projected_2M_steps_h="):
        assert figure in out, figure
    assert "device_check: ok" in out and log.is_file() and "===== device_check mode=cpu" in log.read_text()
