"""Per-call time of every combiner at K = 10 vs the same problem solved by its cached cvxpy problem (architecture §9).

Gram matrices come from Gaussian task gradients with log-uniform norms (ratio up to 1e3) plus a shared
component, the regime of MT10 critics.  Each method is timed as the trainer calls it, ``combiner(gram, losses)``
(validation, normalisation, solve; diagnostics are lazy), and, where it has one, with ``solver="cvxpy"`` (the
parametrised problem compiled once, outside the timing).  The "new Gram" column times a drifting sequence in which
every call gets a different Gram, as in training (warm starts then help less).  Prints a table, the smallest
speed-up and, last, IMGrad-Nash's and Nash-MTL's new-Gram times (``imgrad_nash_new_gram_ms=``,
``nashmtl_new_gram_ms=``).

    python scripts/bench_combiners.py [--k 10] [--grams 20] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

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


def time_stream(name: str, grams: list[torch.Tensor], losses: torch.Tensor, hparams: dict | None = None) -> float:
    """Median time of one call per Gram along ``grams`` (every call sees a new Gram), in seconds."""
    comb = combiners.make(name, **(hparams or {}))
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


#: methods whose cvxpy reference is timed on the drifting stream against the "new Gram" column: IMGrad-Nash's
#: iteration (where the two solvers differ) runs only on imbalanced, conflicting Grams; on the realistic ones both
#: take the exact bargaining-point shortcut
STREAM_REFERENCE = {"imgrad_nash"}


def has_cvxpy(name: str) -> bool:
    try:
        combiners.make(name, solver="cvxpy")
    except ValueError:
        return False
    return True


def is_torchjd(name: str) -> bool:
    """Whether ``name`` is one of TorchJD's weightings bridged by ``rl_mtl/combiners/torchjd_adapter.py``."""
    return combiners.get_class(name).__module__.endswith("torchjd_adapter")


def time_call(fn: Callable[[], object], repeats: int) -> float:
    """Median time of ``fn()`` over ``repeats`` calls after one warm-up call, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_torchjd(grams: list[torch.Tensor], stream: list[torch.Tensor], losses: torch.Tensor, repeats: int) -> None:
    """Per call of each bridged TorchJD method: through the adapter (as the trainer calls it), along a drifting
    stream, and TorchJD's own weighting on the same trace-normalised Gram (the adapter's overhead); then TorchJD's
    MGDA and CAGrad against ours (time, and MGDA's min-norm objective above the exact optimum)."""
    bridged = [n for n in combiners.names() if is_torchjd(n)]
    missing = combiners.missing_extra(bridged[0])
    if missing:
        print(f"TorchJD methods not timed: {missing}")
        return
    from torchjd.aggregation import CAGradWeighting, MGDAWeighting

    k = int(grams[0].shape[0])
    units = [g / (torch.trace(g) / k) for g in grams]
    print(f"{'TorchJD':<18}{'adapter ms':>11}{'(min)':>8}{'new Gram':>10}{'torchjd ms':>11}{'overhead':>10}")
    for name in bridged:
        exact, exact_min = time_per_call(name, {}, grams, losses, repeats)
        new_gram = time_stream(name, stream, losses)
        own = combiners.make(name)._weighting  # TorchJD's module itself, called directly
        direct = statistics.median(time_call(lambda g=g: own(g), max(repeats // 3, 1)) for g in units)
        print(f"{name:<18}{exact * 1e3:>11.4f}{exact_min * 1e3:>8.4f}{new_gram * 1e3:>10.4f}{direct * 1e3:>11.4f}"
              f"{exact / direct:>9.2f}x")
    print(f"{'shared method':<18}{'ours ms':>11}{'torchjd ms':>11}{'speed-up':>10}{'min-norm gap':>14}")
    for name, theirs in (("mgda", MGDAWeighting()), ("cagrad", CAGradWeighting(c=0.9))):
        ours = combiners.make(name)
        t_ours = statistics.median(time_call(lambda g=g: ours(g, losses), repeats) for g in grams)
        t_theirs = statistics.median(time_call(lambda g=g: theirs(g), max(repeats // 3, 1)) for g in units)
        gap = "-"
        if name == "mgda":  # wᵀĜw of Frank–Wolfe's w over the exact minimum, worst over the Grams
            gaps = [float(theirs(g) @ g @ theirs(g)) / float(ours(g, losses) @ g @ ours(g, losses)) - 1.0
                    for g in units]
            gap = f"{max(gaps):.2e}"
        print(f"{name:<18}{t_ours * 1e3:>11.4f}{t_theirs * 1e3:>11.4f}{t_theirs / t_ours:>9.1f}x{gap:>14}")


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
    new_grams = {}
    for name in [n for n in combiners.names() if not is_torchjd(n)]:  # TorchJD's: bench_torchjd below
        exact, exact_min = time_per_call(name, {}, grams, losses, args.repeats)
        new_gram = new_grams[name] = time_stream(name, stream, losses)
        if has_cvxpy(name):
            base = exact
            if name in STREAM_REFERENCE:
                base = new_gram
                reference = ref_min = time_stream(name, stream[: 3 + args.grams * 3], losses, {"solver": "cvxpy"})
            else:
                reference, ref_min = time_per_call(name, {"solver": "cvxpy"}, grams, losses, max(args.repeats // 10, 1))
            ratios.append(reference / base)
            print(
                f"{name:<14}{exact * 1e3:>10.4f}{exact_min * 1e3:>8.4f}{new_gram * 1e3:>10.4f}"
                f"{reference * 1e3:>10.3f}{ref_min * 1e3:>8.3f}"
                f"{reference / base:>9.1f}x"
            )
        else:
            print(f"{name:<14}{exact * 1e3:>10.4f}{exact_min * 1e3:>8.4f}{new_gram * 1e3:>10.4f}{'-':>10}{'-':>8}"
                  f"{'-':>10}")
    bench_torchjd(grams, stream, losses, args.repeats)
    print(f"speedup_vs_cvxpy_min={min(ratios):.1f}")
    print(f"imgrad_nash_new_gram_ms={new_grams['imgrad_nash'] * 1e3:.4f}")
    print(f"nashmtl_new_gram_ms={new_grams['nashmtl'] * 1e3:.4f}")


if __name__ == "__main__":
    main()
