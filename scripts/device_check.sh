#!/usr/bin/env bash
# The GPU check (README "Device check"): install from a folder of wheels, CUDA tests, update benchmarks at paper
# scale (eager and --compile), a 3-minute overlapped MT10 IMGrad run with its throughput and the projected hours for
# 2M loop steps, all into one log file; 8 minutes at most in all. A failed set-up step is recorded and the steps
# that do not need it still run (the tests and benchmarks need only torch, numpy, scipy, numba, pyyaml, tqdm, pytest).
#
#   scripts/device_check.sh [--wheels DIR] [--log FILE] [--run-seconds S]   on a Linux machine with a CUDA GPU,
#                                     Python 3.12 and torch >= 2.6 installed, no network (DIR default: .whl)
#   scripts/device_check.sh --cpu     the same steps at tiny sizes on the CPU (tests/test_cuda.py runs it)
#   scripts/device_check.sh --download DIR   where pip reaches PyPI: fill DIR with the cp312 manylinux wheels
#
# The install never touches torch: the wheels go in with --no-deps, the folder holds no torch, and the torch version
# is checked before and after. With $OUT set the log, bench.txt, run.txt and the run's metrics go to $OUT.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PYTHON="${PYTHON:-python3}"
MODE=gpu
WHEELS=""
LOG=""
RUN_SECONDS=180
BUDGET_SECONDS=480
DOWNLOAD=""

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
        --log) LOG="${2:?--log needs a file}"; shift ;;
        --run-seconds) RUN_SECONDS="${2:?--run-seconds needs a number}"; shift ;;
        --download) DOWNLOAD="${2:?--download needs a folder}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "device_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# ---------------------------------------------------------------------------------------------- --download DIR
# What the device lacks of the project's dependencies (its image has torch, numpy, scipy, numba, tensorboard, pyyaml,
# tqdm, absl-py, etils, imageio, ...), pinned to versions that fit in the 64 MiB a device call carries (wheels
# ~62.6 MB + the tree ~2.8 MB): cvxpy 1.6 needs neither highspy nor sparsediffpy, scs 3.2.7 is a quarter of 3.3's
# size. pytest and its dependencies (installed only where pytest is missing): pytest 8.3 needs no pygments (8.4 does).
WHEEL_LIST=(metaworld==3.1.1 mujoco==3.3.0 gymnasium==1.4.0 farama-notifications==0.0.6 glfw==2.11.0
            pyopengl==3.1.10 cvxpy==1.6.7 clarabel==0.11.1 osqp==0.6.7.post3 qdldl==0.1.9.post1 scs==3.2.7.post2
            cffi==2.1.1 pycparser==3.12)
TEST_WHEEL_LIST=(pytest==8.3.5 pluggy==1.6.0 iniconfig==2.3.0 packaging==26.2)
TEST_WHEEL_NAMES='^(pytest|pluggy|iniconfig|packaging)-'
if [ -n "$DOWNLOAD" ]; then
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64 any; do platforms+=(--platform "$p"); done
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$DOWNLOAD" "${WHEEL_LIST[@]}" "${TEST_WHEEL_LIST[@]}" || exit 1
    du -ch "$DOWNLOAD"/*.whl | tail -1
    exit 0
fi

START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
if [ -z "$LOG" ]; then
    if [ -n "${OUT:-}" ]; then LOG="$OUT/device_check.log"; else LOG="$ROOT/device_check_$MODE.log"; fi
fi
mkdir -p "$(dirname "$LOG")"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")"
export PYTHONUNBUFFERED=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
section() { echo; echo "===== $* (t=$(elapsed) s)"; }
FAILED=()
fail() { echo "ERROR: $2"; FAILED+=("$1"); }
# why a command under `timeout LIMIT` ended with status $1
ended() { case "$1" in 124|137) echo "cut at $2 s (exit status $1)" ;; *) echo "exit status $1" ;; esac; }
# Steps 3-4 run with TORCH_LOGS=recompiles,graph_breaks; their raw output is kept (bench.txt, run.txt). On the
# console torch's warnings and log lines (W1201 ..., V1201 ...) are dropped except the diagnostics of the compiled
# update: skipped CUDA graphs, recompilations (one line each), graph breaks and errors.
DYNAMO_LOGS="${TORCH_LOGS:-recompiles,graph_breaks}"
quiet() {
    awk '/^V[0-9]/ { if ($0 ~ /Recompiling function/) { print; fflush() } next }
         /cudagraph|[Rr]ecompil|[Gg]raph break|rror|last reason/ { print; fflush(); next }
         /Warning|^W[0-9]/ { next } { print; fflush() }'
}
dynamo_counts() {
    echo "dynamo ($1): recompilations=$(grep -c "Recompiling function" "$2")" \
         "graph_breaks=$(grep -c "Graph Break Reason" "$2")" \
         "cudagraph_skip_lines=$(grep -ci "skipping cudagraphs" "$2") (all of it in $(basename "$2"))"
}
save_artifacts() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT/device_check"
    for f in "$WORK/bench.txt" "$WORK/run.txt" "$WORK/run/metrics.csv" "$WORK/run/summary.json" \
             "$WORK/run/config.yaml"; do
        [ -f "$f" ] && cp "$f" "$OUT/device_check/"
    done
    return 0
}
trap 'save_artifacts; rm -rf "$WORK"' EXIT
trap 'echo "device_check: interrupted (t=$(elapsed) s)"; exit 130' INT
trap 'echo "device_check: terminated (t=$(elapsed) s)"; exit 143' TERM

section "device_check mode=$MODE log=$LOG"
echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ) host=$(uname -n) cores=$(nproc)"
"$PYTHON" - <<'EOF' || exit 1
"""The interpreter, torch and its device; FATAL when torch is older than 2.6."""
import re, sys
try:
    import torch
except Exception as exc:  # noqa: BLE001
    print(f"FATAL: {sys.executable} cannot import torch: {exc}"); sys.exit(1)
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
m = re.match(r"(\d+)\.(\d+)", torch.__version__)
if not m or (int(m[1]), int(m[2])) < (2, 6):
    print(f"FATAL: torch {torch.__version__} is older than 2.6: the update uses torch.nn.utils.clip_grads_with_norm_"
          " and get_total_norm (torch 2.6)"); sys.exit(1)
EOF
if [ "$MODE" = gpu ]; then
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "FATAL: no CUDA device visible to torch (use --cpu for the CPU rehearsal)"; exit 1; }
fi

# ---------------------------------------------------------------------------------------------- 1. install
section "1. install"
[ -z "$WHEELS" ] && [ "$MODE" = gpu ] && WHEELS="$ROOT/.whl"
TORCH_BEFORE=$("$PYTHON" -c "import torch; print(torch.__version__)")
pip_install() { "$PYTHON" -m pip install -q --no-index --no-cache-dir "$@"; }
if [ -n "$WHEELS" ]; then
    MAIN_WHEELS=(); TEST_WHEELS=()
    for w in "$WHEELS"/*.whl; do
        [ -f "$w" ] || continue
        name=$(basename "$w")
        if [[ "$name" == torch-* ]]; then fail "torch wheel" "$WHEELS holds $name: left out (the device's torch stays)"
        elif [[ "${name,,}" =~ $TEST_WHEEL_NAMES ]]; then TEST_WHEELS+=("$w")
        else MAIN_WHEELS+=("$w"); fi
    done
    if [ ${#MAIN_WHEELS[@]} -eq 0 ]; then
        fail "wheels" "no wheels in $WHEELS (fill it with: scripts/device_check.sh --download $WHEELS)"
    else
        echo "wheels: ${#MAIN_WHEELS[@]} + ${#TEST_WHEELS[@]} (pytest's) files, $(du -sh "$WHEELS" | cut -f1)"
        if ! pip_install --no-deps "${MAIN_WHEELS[@]}"; then
            echo "installing the wheels together failed; one at a time:"
            bad=()
            for w in "${MAIN_WHEELS[@]}"; do pip_install --no-deps "$w" || bad+=("$(basename "$w")"); done
            [ ${#bad[@]} -eq 0 ] || fail "wheel install" "these wheels did not install: ${bad[*]}"
        fi
    fi
    if "$PYTHON" -c "import pytest" 2>/dev/null; then
        echo "pytest $("$PYTHON" -c "import pytest; print(pytest.__version__)") is installed: its wheels are left out"
    elif [ ${#TEST_WHEELS[@]} -gt 0 ]; then  # resolved from the folder: only what pytest lacks is added
        pip_install --find-links "$WHEELS" pytest || fail "pytest install" "installing pytest from $WHEELS failed"
    fi
    pip_install --no-deps --no-build-isolation -e . || fail "project install" "installing the project (-e .) failed"
else
    echo "no wheel folder: using the installed packages"
fi
if ! "$PYTHON" -c "import rl_mtl.agents" 2>/dev/null; then
    # without the editable install: rl_mtl with agents/, envs/, configs/ inside it (setup.cfg's package_dir) as
    # links on PYTHONPATH; PYTHONSAFEPATH keeps `python -m` from putting the checkout's own rl_mtl/ first (and a
    # script's folder: scripts/ goes on PYTHONPATH for the benchmarks' benchutil)
    mkdir -p "$WORK/path/rl_mtl"
    ln -s "$ROOT"/rl_mtl/* "$WORK/path/rl_mtl/"
    for d in agents envs configs; do ln -s "$ROOT/$d" "$WORK/path/rl_mtl/$d"; done
    export PYTHONPATH="$WORK/path:$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    echo "rl_mtl is not installed: using it from the checkout through PYTHONPATH=$WORK/path"
fi
TORCH_AFTER=$("$PYTHON" -c "import torch; print(torch.__version__)")
echo "torch before=$TORCH_BEFORE after=$TORCH_AFTER"
[ "$TORCH_BEFORE" = "$TORCH_AFTER" ] || { echo "FATAL: the install changed torch"; exit 1; }
"$PYTHON" -c "import numpy, scipy, numba, yaml, tqdm, rl_mtl.agents.mtsac, rl_mtl.compiled, rl_mtl.routing
print('imports ok: the learner: numpy', numpy.__version__, 'scipy', scipy.__version__, 'numba', numba.__version__)" \
    || fail "learner imports" "the learner's dependencies do not import: the tests and benchmarks will fail"
SIM=1
"$PYTHON" -c "import metaworld, mujoco, gymnasium, rl_mtl.envs.metaworld
print('imports ok: the simulator: metaworld', getattr(metaworld, '__version__', '?'), 'mujoco', mujoco.__version__,
      'gymnasium', gymnasium.__version__)" \
    || { SIM=0; fail "simulator imports" "metaworld/mujoco/gymnasium do not import: what needs them is skipped"; }
"$PYTHON" -c "import cvxpy; print('imports ok: cvxpy', cvxpy.__version__, cvxpy.installed_solvers())" \
    || fail "cvxpy import" "cvxpy does not import (nothing in this check needs it; the cvxpy solvers would)"
PYTEST=1
"$PYTHON" -c "import pytest; print('imports ok: pytest', pytest.__version__)" \
    || { PYTEST=0; fail "pytest import" "pytest does not import: the CUDA tests are skipped"; }

# ---------------------------------------------------------------------------------------------- 2. CUDA tests
section "2. CUDA tests"
# not the CPU rehearsal of this very script (it lives in the same file); without the simulator not the training run
SELECT="not rehearsal"
[ "$SIM" = 1 ] || SELECT="not rehearsal and not short_cuda"
if [ "$PYTEST" = 1 ]; then
    echo "pytest -k \"$SELECT\""
    timeout -s INT -k 20 180 "$PYTHON" -m pytest -v --tb=short -rfEs --durations=10 -p no:cacheprovider \
        -o addopts="" tests/test_cuda.py -k "$SELECT"
    STATUS=$?
    [ "$STATUS" = 0 ] || fail "cuda tests" "tests/test_cuda.py: $(ended "$STATUS" 180)"
else
    echo "skipped: no pytest"
fi

# ---------------------------------------------------------------------------------------------- 3. benchmarks
section "3. update benchmarks (ms per update, eager and --compile)"
# shellcheck disable=SC2054  # (the commas are in the options' values)
if [ "$MODE" = gpu ]; then  # IMGrad first: it carries the <= 3 ms target
    BENCH=(--device cuda --presets mt10 --methods imgrad,mtsac,nashmtl,famo --repeats 40 --budget 15)
else
    BENCH=(--device cpu --presets mt10_cpu --methods imgrad --hidden 32,32 --batch 40 --repeats 3 --threads 1)
fi
(cd scripts && TORCH_LOGS="$DYNAMO_LOGS" timeout -s INT -k 20 200 "$PYTHON" bench_update.py "${BENCH[@]}") 2>&1 \
    | tee "$WORK/bench.txt" | quiet
STATUS=${PIPESTATUS[0]}
dynamo_counts benchmarks "$WORK/bench.txt"
[ "$STATUS" = 0 ] || fail "benchmarks" "bench_update.py: $(ended "$STATUS" 200)"

# ---------------------------------------------------------------------------------------------- 4. training run
CORES=$(nproc)
# shellcheck disable=SC2054  # (the commas are in the options' values)
if [ "$MODE" = gpu ]; then
    WORKERS=$(( CORES > 3 ? CORES - 2 : 1 ))
    LEFT=$(( BUDGET_SECONDS - $(elapsed) - 20 ))
    if [ "$LEFT" -lt "$RUN_SECONDS" ]; then
        echo "(the run is cut to ${LEFT} s to stay within ${BUDGET_SECONDS} s)"
        RUN_SECONDS=$(( LEFT > 60 ? LEFT : 60 ))
    fi
    RUN=(--config mt10 --method imgrad --device cuda --rollout async --workers "$WORKERS" --compile
         --steps 2000000 --set eval_every=0 --set log_every=500)
else
    WORKERS=1
    RUN=(--env mt10 --config mt10_cpu --method imgrad --device cpu --rollout async --workers 1 --compile
         --steps 50 --set hidden_sizes=32,32 --set batch_size=40 --set warmup_steps=10 --set max_episode_steps=20
         --set eval_every=0 --set eval_episodes=1 --set log_every=10 --set torch_threads=1)
    RUN_SECONDS=150
fi
section "4. training run: ${RUN[*]} for at most ${RUN_SECONDS} s"
if [ "$SIM" = 1 ]; then
    TORCH_LOGS="$DYNAMO_LOGS" timeout -s INT -k 30 "$RUN_SECONDS" "$PYTHON" -m rl_mtl.train "${RUN[@]}" \
        --logdir "$WORK/run" --no-progress 2>&1 | tee "$WORK/run.txt" | quiet | tail -40
    RUN_STATUS=${PIPESTATUS[0]}
    dynamo_counts "training run" "$WORK/run.txt"
    echo "run exit status $RUN_STATUS (0: finished, 130: stopped by the time limit)"
    [ "$RUN_STATUS" = 0 ] || [ "$RUN_STATUS" = 130 ] || fail "training run" "the training run: exit status $RUN_STATUS"
    echo "compile_note_lines=$(grep -c -- "--compile: the update was compiled" "$WORK/run.txt")"
else
    echo "skipped: the simulator does not import"
fi
"$PYTHON" - "$WORK/run/metrics.csv" "$WORK/run/config.yaml" <<'EOF'
"""Loop throughput after the warm-up and the compilation: the median of the log intervals from the third one on."""
import csv, statistics, sys
from pathlib import Path
import yaml
metrics, config = Path(sys.argv[1]), Path(sys.argv[2])
if not metrics.is_file():
    print("loop figures: not measured (no metrics.csv)"); sys.exit(0)
cfg = yaml.safe_load(config.read_text())
rows: dict[str, dict[int, float]] = {}
with open(metrics) as handle:
    for r in csv.DictReader(handle):
        rows.setdefault(r["key"], {})[int(r["step"])] = float(r["value"])
rate = rows.get("perf/loop_steps_per_s", {})
steps = sorted(s for s in rate if s > cfg["warmup_steps"])[2:]  # the first intervals hold the compilation
if not steps:
    print("loop figures: not measured (too few log intervals after the warm-up)"); sys.exit(0)
med = lambda key: statistics.median(rows[key][s] for s in steps if s in rows.get(key, {}))
loop, sim, update = med("perf/loop_steps_per_s"), med("perf/sim_ms"), med("perf/update_ms")
loop_ms = 1e3 / loop
print(f"intervals={len(steps)} (steps {steps[0]}..{steps[-1]}, log_every={cfg['log_every']})")
print(f"loop_steps_per_s={loop:.1f}")
print(f"loop_ms={loop_ms:.2f} sim_ms={sim:.2f} update_ms={update:.2f}  (sim_ms: the part not hidden behind the update)")
print(f"overlap_vs_max={loop_ms / max(sim, update):.2f}  (loop / max(sim, update); an upper bound: sim_ms is exposed sim)")
print(f"projected_2M_steps_h={2e6 / loop / 3600:.2f}")
EOF

# ---------------------------------------------------------------------------------------------- summary
section "summary"
grep -E "^(update_ms_|compile_s_|first_updates_s_|compile_vs_eager|cudagraph_skips_|fxgraph_cache_hits_|pair_failed_)" \
    "$WORK/bench.txt" || true
if [ "$MODE" = gpu ]; then
    "$PYTHON" - "$WORK/bench.txt" "$LOG" <<'EOF'
"""The GPU targets (issue 15 §4) against what this check measured."""
import re, sys
text = open(sys.argv[1]).read() + open(sys.argv[2]).read()
def value(name):
    m = re.findall(rf"^{name}=([0-9.]+)", text, re.M)
    return float(m[-1]) if m else None
checks = [("paper-scale IMGrad update compiled <= 3 ms", value("update_ms_mt10_imgrad_compiled"), 3.0),
          ("overlapped loop step <= 1.1 x max(sim, update)", value("overlap_vs_max"), 1.1),
          ("projected_2M_steps_h <= 2", value("projected_2M_steps_h"), 2.0)]
for label, got, limit in checks:
    print(f"target: {label}: " + ("not measured" if got is None else f"{got:.2f} -> {'met' if got <= limit else 'NOT met'}"))
EOF
fi
echo "total_s=$(elapsed)"
if [ -n "${OUT:-}" ]; then save_artifacts; echo "files in $OUT/device_check/: $(cd "$OUT/device_check" && echo *)"; fi
if [ ${#FAILED[@]} -gt 0 ]; then
    joined=$(printf '%s; ' "${FAILED[@]}")
    echo "device_check: FAILED: ${joined%; } (log: $LOG)"
    exit 1
fi
echo "device_check: ok (log: $LOG)"
