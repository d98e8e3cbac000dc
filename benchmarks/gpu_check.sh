#!/usr/bin/env bash
# GPU check: the Triton kernels' self-check, the kernel tests compiled on CUDA, the stages on
# CUDA against the CPU, the kernel timings and the streaming benchmark, in one run that writes a
# Markdown results table to benchmarks/results/gpu_check.md (and prints it).
#
#   benchmarks/gpu_check.sh             # on a CUDA machine, from anywhere in the repo
#   benchmarks/gpu_check.sh --dry-run   # print the commands only (works without a GPU)
#
# Options: --python PATH (default .venv/bin/python, made by `RANDSAE_EXTRAS=dev,gpu make setup`),
# --out FILE (default benchmarks/results/gpu_check.md), --budget SECONDS (default 450: the whole
# run stays under ~8 minutes on one H100/H200; a step that would start with under 20 s left is
# skipped and reported as such).
#
# It only reads the GPU's state (nvidia-smi --query-gpu, torch.cuda): it never changes clocks,
# power limits, persistence or compute mode, and sets no CUDA environment variables. Without a
# GPU it stops before running anything and writes no results.

set -uo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY="$ROOT/.venv/bin/python"
OUT="$ROOT/benchmarks/results/gpu_check.md"
BUDGET=450
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --python) PY=${2:?--python needs a path}; shift ;;
    --out) OUT=${2:?--out needs a file}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
cd "$ROOT" || exit 2

# name | time cap in seconds | command. The caps add up to more than the budget on purpose:
# the budget is what bounds the run, a cap only stops one step that hangs.
STEPS=(
  "self-check|90|$PY benchmarks/kernels_bench.py --device cuda --self-check"
  "kernel tests (tests/kernels, Triton compiled on CUDA + interpreter subprocess)|240|$PY -m pytest tests/kernels -q -p no:cacheprovider"
  "stages on CUDA vs CPU (tests/test_devices.py)|150|$PY -m pytest tests/test_devices.py -q -p no:cacheprovider"
  "kernel timings fp32 (SAE-step shape)|60|$PY benchmarks/kernels_bench.py --device cuda --dtype fp32 --reps 20"
  "kernel timings bf16 (SAE-step shape)|60|$PY benchmarks/kernels_bench.py --device cuda --dtype bf16 --reps 20"
  "kernel timings fp32 (d=1024, 64k latents, 8192 tokens)|60|$PY benchmarks/kernels_bench.py --device cuda --dtype fp32 --reps 20 --n 8192 --d 1024 --latents 65536"
)
STREAM="benchmarks/stream_bench.py"
STREAM_NAME="streaming benchmark ($STREAM)"
STREAM_CAP=120

if [ "$DRY" = 1 ]; then
  echo "gpu_check --dry-run: from $ROOT, each step under a time cap (total budget ${BUDGET}s):"
  echo "  [preflight] nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader"
  echo "  [preflight] $PY -c 'import torch, triton; assert torch.cuda.is_available()'"
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name cap cmd <<<"$s"
    echo "  [${cap}s] $cmd    # $name"
  done
  if [ -f "$STREAM" ]; then
    echo "  [${STREAM_CAP}s] $PY $STREAM --device cuda    # if its --help lists --device, else skipped"
  else
    echo "  (skipped: $STREAM does not exist yet)"
  fi
  echo "results would be written to $OUT"
  exit 0
fi

# --- preflight: fail clearly without a GPU --------------------------------------------------
fail() { echo "gpu_check: $*; no results written" >&2; exit 1; }
command -v nvidia-smi >/dev/null 2>&1 || fail "nvidia-smi not found: this is not a machine with an NVIDIA GPU"
GPUS=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) \
  || fail "nvidia-smi sees no GPU ($GPUS)"
[ -x "$PY" ] || fail "no python at $PY (run 'RANDSAE_EXTRAS=dev,gpu make setup', or pass --python)"
VERSIONS=$("$PY" - <<'EOF' 2>&1
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")
try:
    import triton
except ImportError:
    sys.exit("triton is not installed: install the gpu extra (RANDSAE_EXTRAS=dev,gpu make setup)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}, "
      f"device 0: {torch.cuda.get_device_name(0)} (capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))})")
EOF
) || fail "$VERSIONS"

LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
START=$SECONDS
ROWS=()
SECTIONS=()
ANY_FAIL=0

run_step() {  # name cap command...
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  local log="$LOGS/step${#ROWS[@]}.log"
  if [ "$left" -lt 20 ]; then
    ROWS+=("| $name | \`$*\` | skipped: time budget spent | |")
    return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "== $name (cap ${cap}s): $*" >&2
  local t0=$SECONDS rc
  PYTHONUNBUFFERED=1 timeout --kill-after=10 "$cap" "$@" 2>&1 | tee "$log" >&2
  rc=${PIPESTATUS[0]}
  local took=$((SECONDS - t0)) status
  case $rc in
    0) status="pass" ;;
    124|137) status="TIMEOUT after ${cap}s"; ANY_FAIL=1 ;;
    *) status="FAIL (exit $rc)"; ANY_FAIL=1 ;;
  esac
  local summary
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
  [ -n "$summary" ] && status="$status: $summary"
  ROWS+=("| $name | \`$*\` | $status | $took |")
  if [ $rc -eq 0 ] && [[ "$name" != *tests* ]]; then
    SECTIONS+=("### $name"$'\n\n'"\`$*\`"$'\n\n'"$(cat "$log")")
  elif [ $rc -ne 0 ]; then
    SECTIONS+=("### $name: last lines of its output"$'\n\n```\n'"$(tail -40 "$log")"$'\n```')
  fi
}

for s in "${STEPS[@]}"; do
  IFS='|' read -r name cap cmd <<<"$s"
  # shellcheck disable=SC2086  # the command is a word list on purpose
  run_step "$name" "$cap" $cmd
done

if [ ! -f "$STREAM" ]; then
  ROWS+=("| $STREAM_NAME | | skipped: $STREAM does not exist | |")
elif ! timeout 60 "$PY" "$STREAM" --help 2>/dev/null | grep -q -- '--device'; then
  ROWS+=("| $STREAM_NAME | | skipped: $STREAM has no --device option (would not run on the GPU) | |")
else
  run_step "$STREAM_NAME" "$STREAM_CAP" "$PY" "$STREAM" --device cuda
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
[ -n "$(git status --porcelain 2>/dev/null)" ] && DIRTY=" (working tree has uncommitted changes)"
mkdir -p "$(dirname "$OUT")"
{
  echo "# GPU check"
  echo
  echo "\`benchmarks/gpu_check.sh\`, $(date -u +%Y-%m-%dT%H:%MZ), commit $COMMIT$DIRTY, $((SECONDS - START)) s in all."
  echo
  echo "- GPU (nvidia-smi): $GPUS"
  echo "- $VERSIONS"
  echo
  echo "| step | command | result | seconds |"
  echo "|---|---|---|---:|"
  printf '%s\n' "${ROWS[@]}"
  for sec in "${SECTIONS[@]}"; do
    echo
    echo "$sec"
  done
} | sed "s|$ROOT/||g" >"$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo
cat "$OUT"
echo
echo "gpu_check: results in ${OUT#"$ROOT"/}"
exit $ANY_FAIL
