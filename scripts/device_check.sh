#!/usr/bin/env bash
# The GPU check (README "Device check"): install from a folder of wheels, CUDA tests, update benchmarks at paper
# scale (eager and --compile), a 3-minute overlapped MT10 IMGrad run with its throughput and the projected hours for
# 2M loop steps, all into one log file; 8 minutes at most in all.
#
#   scripts/device_check.sh [--wheels DIR] [--log FILE] [--run-seconds S]   on a Linux machine with a CUDA GPU,
#                                     Python 3.12 and torch installed, no network (DIR default: .whl)
#   scripts/device_check.sh --cpu     the same steps at tiny sizes on the CPU (tests/test_device_check.py)
#   scripts/device_check.sh --download DIR   where pip reaches PyPI: fill DIR with the cp312 manylinux wheels
#
# The install never touches torch: the wheels go in with --no-deps (no resolver, so nothing is up- or downgraded),
# the folder holds no torch, and the torch version is checked before and after.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
MODE=gpu
WHEELS=""
LOG=""
RUN_SECONDS=180
BUDGET_SECONDS=480
DOWNLOAD=""

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
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
# tqdm, absl-py, etils, imageio, ...), pinned to versions that fit in the 64 MiB a device call carries (~60 MB):
# cvxpy 1.6 needs neither highspy nor sparsediffpy, and scs 3.2.7 is a quarter of 3.3's size.
WHEEL_LIST=(metaworld==3.1.1 mujoco==3.3.0 gymnasium==1.4.0 farama-notifications==0.0.6 glfw==2.11.0
            pyopengl==3.1.10 cvxpy==1.6.7 clarabel==0.11.1 osqp==0.6.7.post3 qdldl==0.1.9.post1 scs==3.2.7.post2
            cffi==2.1.1 pycparser==3.12)
if [ -n "$DOWNLOAD" ]; then
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64 any; do platforms+=(--platform "$p"); done
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$DOWNLOAD" "${WHEEL_LIST[@]}" || exit 1
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
export PYTHONUNBUFFERED=1
section() { echo; echo "===== $* (t=$(elapsed) s)"; }
FAILED=()

section "device_check mode=$MODE log=$LOG"
echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ) host=$(uname -n) cores=$(nproc)"
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" \
    || { echo "FATAL: $PYTHON cannot import torch"; exit 1; }
if [ "$MODE" = gpu ]; then
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "FATAL: no CUDA device visible to torch (use --cpu for the CPU rehearsal)"; exit 1; }
fi

# ---------------------------------------------------------------------------------------------- 1. install
section "1. install"
[ -z "$WHEELS" ] && [ "$MODE" = gpu ] && WHEELS="$ROOT/.whl"
TORCH_BEFORE=$("$PYTHON" -c "import torch; print(torch.__version__)")
if [ -n "$WHEELS" ]; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "FATAL: no wheels in $WHEELS (fill it with: scripts/device_check.sh --download $WHEELS)"; exit 1
    fi
    if ls "$WHEELS"/torch-*.whl >/dev/null 2>&1; then
        echo "FATAL: $WHEELS holds a torch wheel; remove it (the device's own torch is used)"; exit 1
    fi
    echo "wheels: $(ls "$WHEELS"/*.whl | wc -l) files, $(du -sh "$WHEELS" | cut -f1)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-cache-dir --find-links "$WHEELS" "$WHEELS"/*.whl \
        || { echo "FATAL: installing the wheels failed"; exit 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e . \
        || { echo "FATAL: installing the project failed"; exit 1; }
else
    echo "no wheel folder: using the installed packages"
fi
TORCH_AFTER=$("$PYTHON" -c "import torch; print(torch.__version__)")
echo "torch before=$TORCH_BEFORE after=$TORCH_AFTER"
[ "$TORCH_BEFORE" = "$TORCH_AFTER" ] || { echo "FATAL: the install changed torch"; exit 1; }
"$PYTHON" -c "import metaworld, mujoco, gymnasium, cvxpy, numba, rl_mtl.agents.mtsac, rl_mtl.envs.metaworld
print('imports ok: metaworld', metaworld.__version__ if hasattr(metaworld, '__version__') else '', 'mujoco',
      mujoco.__version__, 'gymnasium', gymnasium.__version__, 'cvxpy', cvxpy.__version__, 'numba', numba.__version__)" \
    || { echo "FATAL: the project's dependencies do not import"; exit 1; }

# ---------------------------------------------------------------------------------------------- 2. CUDA tests
section "2. CUDA tests"
# (not the CPU rehearsal of this very script, which lives in the same file)
timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py -k "not rehearsal" -rs \
    2>&1 | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("cuda tests")

# ---------------------------------------------------------------------------------------------- 3. benchmarks
section "3. update benchmarks (ms per update, eager and --compile)"
if [ "$MODE" = gpu ]; then
    BENCH=(--device cuda --presets mt10 --methods mtsac,imgrad,nashmtl,famo --repeats 40 --budget 15)
else
    BENCH=(--device cpu --presets mt10_cpu --methods imgrad --hidden 32,32 --batch 40 --repeats 3 --threads 1)
fi
(cd scripts && timeout 200 "$PYTHON" bench_update.py "${BENCH[@]}") 2>&1 | grep -v "Warning\|^W[0-9]" \
    | tee "$WORK/bench.txt"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("benchmarks")

# ---------------------------------------------------------------------------------------------- 4. training run
CORES=$(nproc)
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
timeout -s INT -k 30 "$RUN_SECONDS" "$PYTHON" -m rl_mtl.train "${RUN[@]}" --logdir "$WORK/run" --no-progress \
    2>&1 | tee "$WORK/run.txt" | grep -v "^W[0-9]" | tail -15
RUN_STATUS=${PIPESTATUS[0]}
echo "run exit status $RUN_STATUS (0: finished, 130: stopped by the time limit)"
[ "$RUN_STATUS" = 0 ] || [ "$RUN_STATUS" = 130 ] || FAILED+=("training run")
echo "compile_note_lines=$(grep -c -- "--compile: the update was compiled" "$WORK/run.txt")"
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
grep -E "^(update_ms_|compile_s_|compile_vs_eager)" "$WORK/bench.txt" || true
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
rm -rf "$WORK"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "device_check: FAILED: ${FAILED[*]} (log: $LOG)"
    exit 1
fi
echo "device_check: ok (log: $LOG)"
