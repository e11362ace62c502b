"""Per-call time of every combiner at K = 10 vs the same problem solved by its cached cvxpy problem (DESIGN §9).

Gram matrices come from Gaussian task gradients with log-uniform norms (ratio up to 1e3) plus a shared
component, the regime of MT10 critics.  Each method is timed as the trainer calls it, ``combiner(gram, losses)``
(validation, normalisation, solve; diagnostics are lazy), and, where it has one, with ``solver="cvxpy"`` (the
parametrised problem compiled once, outside the timing).  The "new Gram" column times a drifting sequence in which
every call gets a different Gram, as in training (warm starts then help less).  Prints a table and, last, the
smallest speed-up.

    python scripts/bench_combiners.py [--k 10] [--grams 20] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl_mtl import combiners  # noqa: E402


def realistic_grams(k: int, count: int, seed: int = 0, dim: int = 2000) -> list[torch.Tensor]:
    """``count`` Grams (K, K) of gradients with log-uniform norms in [1e-3, 1] and a shared component."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        g = rng.standard_normal((k, dim)) * np.exp(rng.uniform(np.log(1e-3), 0.0, k))[:, None]
        g += 0.3 * np.exp(rng.uniform(np.log(1e-3), 0.0)) * rng.standard_normal(dim)
        out.append(torch.from_numpy(g @ g.T))
    return out


def drifting_grams(k: int, count: int, seed: int = 1, dim: int = 2000) -> list[torch.Tensor]:
    """``count`` successive Grams of gradients that drift by ~5 % per step (each task at its own scale)."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(1e-3), 0.0, k))[:, None]
    g = rng.standard_normal((k, dim)) * scales
    out = []
    for _ in range(count):
        g = g + 0.05 * rng.standard_normal((k, dim)) * scales
        out.append(torch.from_numpy(g @ g.T))
    return out


def time_stream(name: str, grams: list[torch.Tensor], losses: torch.Tensor) -> float:
    """Median time of one call per Gram along ``grams`` (every call sees a new Gram), in seconds."""
    comb = combiners.make(name)
    for gram in grams[:3]:
        comb(gram, losses)
    times = []
    for gram in grams[3:]:
        start = time.perf_counter()
        comb(gram, losses)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_per_call(
    name: str, hparams: dict, grams: list[torch.Tensor], losses: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """(median, minimum) over Grams and repeats of one ``combiner(gram, losses)`` call, in seconds.

    The minimum is printed too because on a shared machine the median also measures the neighbours' load.
    """
    comb = combiners.make(name, **hparams)
    for gram in grams[:3]:
        comb(gram, losses)  # warm-up: imports, cvxpy compilation
    times = []
    for gram in grams:
        for _ in range(repeats):
            start = time.perf_counter()
            comb(gram, losses)
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def has_cvxpy(name: str) -> bool:
    try:
        combiners.make(name, solver="cvxpy")
    except ValueError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--grams", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    grams = realistic_grams(args.k, args.grams)
    stream = drifting_grams(args.k, args.grams * args.repeats)
    losses = torch.from_numpy(np.random.default_rng(1).uniform(0.5, 2.0, args.k))
    print(f"K = {args.k}, {args.grams} Grams x {args.repeats} repeats, median time per call")
    print(f"{'method':<14}{'exact ms':>10}{'(min)':>8}{'new Gram':>10}{'cvxpy ms':>10}{'(min)':>8}{'speed-up':>10}")
    ratios = []
    for name in combiners.names():
        exact, exact_min = time_per_call(name, {}, grams, losses, args.repeats)
        new_gram = time_stream(name, stream, losses)
        if has_cvxpy(name):
            reference, ref_min = time_per_call(name, {"solver": "cvxpy"}, grams, losses, max(args.repeats // 10, 1))
            ratios.append(reference / exact)
            print(
                f"{name:<14}{exact * 1e3:>10.4f}{exact_min * 1e3:>8.4f}{new_gram * 1e3:>10.4f}"
                f"{reference * 1e3:>10.3f}{ref_min * 1e3:>8.3f}"
                f"{reference / exact:>9.1f}x"
            )
        else:
            print(f"{name:<14}{exact * 1e3:>10.4f}{exact_min * 1e3:>8.4f}{new_gram * 1e3:>10.4f}{'-':>10}{'-':>8}"
                  f"{'-':>10}")
    print(f"speedup_vs_cvxpy_min={min(ratios):.1f}")


if __name__ == "__main__":
    main()
