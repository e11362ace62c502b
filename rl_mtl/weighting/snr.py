"""Signal-to-noise ratio of IGBv2's meta-reward on a run's real critic losses (issue 14, "IGBv2's reward signal").

From a checkpoint saved with ``--save-replay``: ``--actions`` meta-actions ``a ~ U(−1, 1)^K`` (IGBv2's warm-up
distribution, ``λ = K·((1−ε)·softmax(logit_scale·a) + ε/K)``), each tried ``--repeats`` times from the same agent
state for one hold window of real updates (the run's method and loss, its critic weighted by that λ in log space,
fresh replay batches per repeat).  Each window's reward is IGBv2's: the soft-min over tasks of the mean same-batch
declines of the log critic losses, sampled where IGBv2 samples them, in units of their RMS over every window
measured here.  A one-way variance decomposition over the actions gives

    noise = mean_a Var_r[R | a],    signal = Var_a(mean_r R | a) − noise / repeats,    SNR = signal / noise,

the share of a window's reward variance that the meta-SAC's action explains (SNR ≪ 1: its critic must average
many windows to see which weights help).  Prints one line per action and ``snr=<x>`` last; ``--out`` writes JSON.

    python -m rl_mtl.weighting.snr --run runs/mt10_imgrad-igbv2_seed0 [--actions 8] [--repeats 4] [--hold 100]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from rl_mtl import checkpoint
from rl_mtl.weighting.base import Weighting, floored_weights, softmin

PROG = "python -m rl_mtl.weighting.snr"


class _FixedWindow(Weighting):
    """λ fixed for a window, recording IGBv2's same-batch log declines at IGBv2's sampling positions."""

    name = "fixed_window"

    def __init__(self, lam: Tensor, hold: int, reward_samples: int, eps: float) -> None:
        super().__init__(hold=hold, floor=0.0, space="log", eps=eps)
        self.fixed, self.reward_samples = lam, int(reward_samples)
        self.declines: list[Tensor] = []

    def weights(self, losses: Tensor, info: dict[str, Any] | None = None) -> Tensor:
        self.calls += 1
        self._lambda = self.fixed.to(losses)
        return self._lambda

    def needs_after(self) -> bool:
        stride = max(1, self.hold // self.reward_samples)
        return self.window_position % stride == stride - 1  # as IGBv2.needs_after

    def observe(self, before: Tensor, after: Tensor | None = None) -> None:
        if after is not None:
            self.declines.append((torch.log(before.clamp_min(0) + self.eps)
                                  - torch.log(after.clamp_min(0) + self.eps)).double().cpu())

    def _choose(self, ratio: Tensor, mean: Tensor, info: dict[str, Any]) -> Tensor:
        return self.fixed / self.fixed.sum()


def variance_components(rewards: np.ndarray) -> dict[str, float]:
    """``rewards (A, R)`` → signal and noise variances and their ratio (see the module docstring)."""
    repeats = rewards.shape[1]
    noise = float(rewards.var(axis=1, ddof=1).mean())
    signal = float(rewards.mean(axis=1).var(ddof=1)) - noise / repeats
    return {"signal_var": signal, "noise_var": noise, "snr": signal / noise if noise > 0 else math.inf}


def measure(run: Path, actions: int = 8, repeats: int = 4, hold: int | None = None, seed: int = 0,
            device: str = "cpu") -> dict[str, Any]:
    """The SNR of IGBv2's meta-reward at the agent state of ``run``'s last checkpoint (needs its replay)."""
    from rl_mtl.agents.mtsac import MTSAC
    from rl_mtl.agents.replay import MultiTaskReplay
    from rl_mtl.agent_setup import sac_config
    from rl_mtl.config import build_config, load_config_file, num_tasks
    from rl_mtl.routing import build_steps
    from rl_mtl.weighting import hparams

    cfg = build_config(base=load_config_file(run / "config.yaml"))
    state = checkpoint.load(run / "checkpoints" / checkpoint.CHECKPOINT_NAME, map_location=device)
    if not state.get("replay_file"):
        raise checkpoint.CheckpointError(f"{run} was not saved with --save-replay: no replay to sample batches from")
    replay_state = checkpoint.load(run / "checkpoints" / state["replay_file"], map_location=device)["replay"]
    k = num_tasks(cfg.env)
    opts = {**hparams("igbv2"), **(cfg.weighting_opts if cfg.weighting == "igbv2" else {})}
    hold = int(hold or opts["hold"])
    agent = MTSAC(replay_state["obs_dim"], replay_state["action_dim"], k, sac_config(cfg), device)
    agent.load_full_state_dict(state["agent"])
    start = copy.deepcopy(agent.full_state_dict())
    replay = MultiTaskReplay(k, replay_state["obs_dim"], replay_state["action_dim"], replay_state["capacity"], device)
    replay.load_state_dict(replay_state)
    rng = np.random.default_rng(seed)
    lambdas = [floored_weights(torch.softmax(opts["logit_scale"] * torch.as_tensor(
        rng.uniform(-1.0, 1.0, k), dtype=torch.float64), 0), opts["floor"]) for _ in range(actions)]
    declines = np.zeros((actions, repeats, k))
    for r in range(repeats):
        for a, lam in enumerate(lambdas):
            agent.load_full_state_dict(copy.deepcopy(start))
            steps = build_steps(cfg.method, cfg.combiner, cfg.combine, 0, cfg.seed, combine_params=cfg.combine_params)
            window = _FixedWindow(lam, hold, opts["reward_samples"], opts["eps"])
            steps["critic"].weighting = window
            agent.reducers.update(steps)
            replay.generator.manual_seed(seed + 1000 * r)  # repeat r: the same batches for every action
            torch.manual_seed(seed + 1000 * r)
            for _ in range(hold):
                agent.update(replay.sample(cfg.batch_size))
            declines[a, r] = torch.stack(window.declines).mean(0).numpy()
    rms = math.sqrt(float((declines**2).mean()))
    rewards = np.array([[float(softmin(torch.from_numpy(declines[a, r]) / (rms + 1e-12), opts["softmin_temp"]))
                         for r in range(repeats)] for a in range(actions)])
    return {"run": str(run), "step": int(state["step"]), "hold": hold, "actions": actions, "repeats": repeats,
            "lambdas": [lam.tolist() for lam in lambdas], "rewards": rewards.tolist(),
            **variance_components(rewards)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints the rewards per action and ``snr=<x>``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory whose checkpoint was saved with --save-replay")
    parser.add_argument("--actions", type=int, default=8, help="meta-actions tried")
    parser.add_argument("--repeats", type=int, default=4, help="windows per action (fresh batches each)")
    parser.add_argument("--hold", type=int, default=None, help="updates per window (default: the run's or 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.actions < 2 or args.repeats < 2:
        print(f"{PROG}: error: --actions and --repeats must be >= 2", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        result = measure(Path(args.run), args.actions, args.repeats, args.hold, args.seed)
    except (checkpoint.CheckpointError, OSError, ValueError) as exc:
        print(f"{PROG}: error: --run: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for lam, rewards in zip(result["lambdas"], result["rewards"]):
        print(f"lambda={np.round(lam, 2).tolist()} rewards={np.round(rewards, 3).tolist()}")
    print(f"step={result['step']} hold={result['hold']} signal_var={result['signal_var']:.4g} "
          f"noise_var={result['noise_var']:.4g}")
    print(f"snr={result['snr']:.4g}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
