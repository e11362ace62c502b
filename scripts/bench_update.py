"""Milliseconds per multi-task SAC update, eager and compiled (``--compile``), for the mt10 and mt10_cpu presets.

Measured in one process on random replay data of MT10's shapes (obs 49, action 4, K = 10), so the figures are the
learner's cost alone. For every preset and method an eager and a compiled agent (built identically, each with the
method's combined steps, as the trainer builds them) are timed in interleaved rounds, so that a change in the
machine's load hits both alike; the compiled agent's first updates (its compilation) are not timed. Right after
each pair (so that a run cut short keeps the pairs done) it prints the pair's table row and its ``key=value`` lines:
``update_ms_<preset>_<method>_eager=`` and ``_compiled=``, ``compile_vs_eager_<preset>_<method>=`` (compiled /
eager median time), ``compile_s_`` (dynamo's compile seconds), ``first_updates_s_`` (the wall time of the untimed
first compiled updates: also Triton autotuning, CUDA-graph recording and numba, which compile_s leaves out),
``cudagraph_skips_`` (inductor's count of compiled graphs not captured as CUDA graphs during the pair; 0 on the CPU)
and ``fxgraph_cache_hits_`` (graphs inductor took from its on-disk cache). A pair that raises prints its traceback
and ``pair_failed_<preset>_<method>=1``, the others still run, the exit status is then 1. Last come the eager
``ratio_default_vs_cpu`` and ``update_ms_default`` and ``compile_vs_eager=<x>``: the ratio for IMGrad on mt10_cpu
(or the last pair measured).

    python scripts/bench_update.py [--device cpu|cuda] [--presets mt10,mt10_cpu] [--methods mtsac,imgrad]
        [--repeats 20] [--budget 60] [--threads 1] [--no-compile] [--hidden 32,32 --batch 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback

import numpy as np
import torch
from torch._dynamo.utils import counters

from benchutil import ACTION_DIM, K, OBS_DIM, parse_device_args, update_times
from rl_mtl.agents.mtsac import MTSAC
from rl_mtl.agents.replay import MultiTaskReplay
from rl_mtl.agent_setup import sac_config
from rl_mtl.compiled import compile_seconds, compile_update
from rl_mtl.config import TrainConfig, build_config
from rl_mtl.routing import build_steps


def learner(cfg: TrainConfig, method: str, device: torch.device, compiled: bool) -> MTSAC:
    """The preset's agent (seed 0) with ``method``'s combined steps installed, compiled or eager."""
    torch.manual_seed(0)
    agent = MTSAC(OBS_DIM, ACTION_DIM, K, sac_config(cfg), device)
    steps = build_steps(method, {}, "auto", cfg.diag_every, 0)
    agent.reducers.update(steps)
    if compiled:
        compile_update(agent, steps)
    return agent


def random_replay(device: torch.device, fill: int) -> MultiTaskReplay:
    """A replay holding ``fill`` random MT10-shaped transitions per task."""
    replay = MultiTaskReplay(K, OBS_DIM, ACTION_DIM, fill, device, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(fill):
        replay.add(rng.normal(size=(K, OBS_DIM)), rng.uniform(-1, 1, (K, ACTION_DIM)), rng.uniform(0, 10, K),
                   rng.normal(size=(K, OBS_DIM)), rng.uniform(size=K) < 0.01)
    return replay


def timed_update(agent: MTSAC, replay: MultiTaskReplay, batch_size: int) -> float:
    """Wall time (ms) of one update on a freshly sampled batch (the sampling untimed), synchronised on CUDA."""
    return update_times(agent, replay, batch_size, repeats=1, warmup=0)[0]


def bench_pair(cfg: TrainConfig, method: str, device: torch.device, replay: MultiTaskReplay, repeats: int,
               budget_s: float, with_compile: bool) -> dict[str, float]:
    """Median ms of the eager (and compiled) update of one preset and method, in interleaved rounds of at most
    ``repeats``, fewer (3 at least) once ``budget_s`` seconds are spent; ``compile_s``: the compiled agent's
    compilation (its first updates), ``first_updates_s`` their wall time; ``cudagraph_skips`` and
    ``fxgraph_cache_hits``: inductor's counts over the pair."""
    skips, hits = inductor_count("cudagraph_skips"), inductor_count("fxgraph_cache_hit")
    agents = {"eager": learner(cfg, method, device, False)}
    out: dict[str, float] = {}
    if with_compile:
        agents["compiled"] = learner(cfg, method, device, True)
        before, t0 = compile_seconds(), time.perf_counter()
        for _ in range(3):  # compiles (the optimisers' second step recompiles once their state exists)
            timed_update(agents["compiled"], replay, cfg.batch_size)
        out["compile_s"] = compile_seconds() - before
        out["first_updates_s"] = time.perf_counter() - t0
    for _ in range(3):
        timed_update(agents["eager"], replay, cfg.batch_size)
    times: dict[str, list[float]] = {name: [] for name in agents}
    start = time.perf_counter()
    for i in range(repeats):
        for name, agent in agents.items():
            times[name].append(timed_update(agent, replay, cfg.batch_size))
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    for name, values in times.items():
        out[name] = statistics.median(values)
        out[f"{name}_p90"] = sorted(values)[(9 * len(values)) // 10]
    out["rounds"] = len(times["eager"])
    if with_compile:
        out["ratio"] = out["compiled"] / out["eager"]
    out["cudagraph_skips"] = inductor_count("cudagraph_skips") - skips
    out["fxgraph_cache_hits"] = inductor_count("fxgraph_cache_hit") - hits
    return out


def inductor_count(name: str) -> int:
    """torch._dynamo's running count ``counters["inductor"][name]`` (0 until inductor bumps it)."""
    return int(counters["inductor"][name])


def pair_lines(preset: str, method: str, r: dict[str, float]) -> list[str]:
    """The ``key=value`` lines of one measured pair."""
    tag = f"{preset}_{method}"
    lines = [f"update_ms_{tag}_eager={r['eager']:.2f}"]
    if "ratio" in r:
        lines += [f"update_ms_{tag}_compiled={r['compiled']:.2f}", f"compile_s_{tag}={r['compile_s']:.1f}",
                  f"first_updates_s_{tag}={r['first_updates_s']:.1f}", f"compile_vs_eager_{tag}={r['ratio']:.2f}",
                  f"cudagraph_skips_{tag}={int(r['cudagraph_skips'])}",
                  f"fxgraph_cache_hits_{tag}={int(r['fxgraph_cache_hits'])}"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="mt10,mt10_cpu", help="comma-separated presets")
    parser.add_argument("--methods", default="mtsac,imgrad", help="comma-separated methods (mtsac = plain)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per pair (at most)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per pair after which rounds stop")
    parser.add_argument("--no-compile", action="store_true", help="time the eager update only")
    parser.add_argument("--hidden", default="", help="override the presets' hidden_sizes (e.g. 32,32: tiny)")
    parser.add_argument("--batch", type=int, default=0, help="override the presets' batch_size (multiple of 10)")
    args, device = parse_device_args(parser)
    overrides: dict[str, object] = {}
    if args.hidden:
        overrides["hidden_sizes"] = args.hidden
    if args.batch:
        overrides["batch_size"] = args.batch
    presets, methods = args.presets.split(","), args.methods.split(",")
    print(f"device={device} torch_threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'preset':<10} {'method':<8} {'hidden':<16} {'batch':>6} {'eager_ms':>9} {'compiled_ms':>12} "
          f"{'ratio':>6} {'compile_s':>10} {'rounds':>6}")
    results: dict[tuple[str, str], dict[str, float]] = {}
    failed: list[str] = []
    replay = random_replay(device, 2_000)
    for preset in presets:
        cfg = build_config(preset, overrides)
        for method in methods:
            try:
                r = bench_pair(cfg, method, device, replay, args.repeats, args.budget, not args.no_compile)
            except Exception:  # noqa: BLE001 -- one failing pair must not lose the others' figures
                traceback.print_exc()
                print(f"pair_failed_{preset}_{method}=1", flush=True)
                failed.append(f"{preset}_{method}")
                continue
            results[preset, method] = r
            compiled = (f"{r['compiled']:>12.2f} {r['ratio']:>6.2f} {r['compile_s']:>10.1f}" if "ratio" in r
                        else f"{'-':>12} {'-':>6} {'-':>10}")
            print(f"{preset:<10} {method:<8} {str(cfg.hidden_sizes):<16} {cfg.batch_size:>6} {r['eager']:>9.2f} "
                  f"{compiled} {int(r['rounds']):>6}")
            print("\n".join(pair_lines(preset, method, r)), flush=True)
    if ("mt10", "mtsac") in results and ("mt10_cpu", "mtsac") in results:
        print(f"ratio_default_vs_cpu={results['mt10', 'mtsac']['eager'] / results['mt10_cpu', 'mtsac']['eager']:.2f}")
        print(f"update_ms_default={results['mt10', 'mtsac']['eager']:.2f}")
    measured = [r for r in results.values() if "ratio" in r]
    if measured:
        headline = results.get(("mt10_cpu", "imgrad"), measured[-1])
        print(f"compile_vs_eager={headline['ratio']:.2f}", flush=True)
    if failed:
        print(f"bench_update: failed pairs: {' '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
