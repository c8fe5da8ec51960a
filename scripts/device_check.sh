#!/usr/bin/env bash
# The one script to run on the GPU machine, from the repository root, with the release binary
# carried at ./target/release/gdn and FLA's wheels in ./.whl (see bench/README.md). Every step
# runs under `timeout`; the whole script stays under ~9 minutes. Logs and JSON go to $OUT.
#
#   OUT=/some/dir bash scripts/device_check.sh
set -u
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_check.log") 2>&1
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 ))s] $* ==="; }

BIN=${GDN_BIN:-./target/release/gdn}
SHARED=""
# ../shared does not travel to the GPU machine: copy its bench/ into the ignored .peer/ and carry it.
for d in ../shared ./shared .peer /work/shared; do
  if [ -f "$d/bench/fla_ops.py" ]; then SHARED=$d; break; fi
done

step "GPU"
timeout 30 nvidia-smi -L || echo "nvidia-smi failed"
timeout 30 nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv || true

step "CUDA toolkit for NVRTC (headers + libnvrtc)"
. "$(dirname "$0")/device_env.sh"
echo "CUDA_HOME=$CUDA_HOME"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
ls "${CUDA_HOME:-/nonexistent}"/lib64/libnvrtc* 2>/dev/null | head -3
export GDN_CACHE_DIR=${GDN_CACHE_DIR:-/tmp/gdn_cache}

if [ ! -x "$BIN" ]; then
  echo "missing $BIN (build with: cargo build --release, and carry target/release/gdn)"
else
  step "gdn selftest --device cuda"
  [ -n "${SKIP_SELFTEST:-}" ] && echo "skipped (SKIP_SELFTEST set)" || timeout 200 "$BIN" selftest --device cuda --json "$OUT/selftest.json" 2>&1 | tail -n 120
  echo "selftest exit: ${PIPESTATUS[0]}"

  step "gdn bench kernels"
  timeout 180 "$BIN" bench kernels --out "$OUT" 2>&1 | tail -n 60
  echo "bench exit: ${PIPESTATUS[0]}"
fi

step "FLA peer benchmark"
if [ -n "${SKIP_FLA:-}" ]; then
  echo "skipped (SKIP_FLA set)"
elif [ -n "$SHARED" ] && ls .whl/*.whl >/dev/null 2>&1; then
  # FLA_STAGES=1: scripts/fla_stages.py (graph fwd and fwd+bwd of the five chunked shapes and FLA's
  # kernels one by one, ~70 s a shape) instead of the peer's fla_ops.py (eager, SDPA and decode
  # too, over 400 s).
  if [ -n "${FLA_STAGES:-}" ]; then
    fla=scripts/fla_stages.py
    export SHAPES="8,2048,16,128,128;4,4096,16,128,128;2,8192,16,128,128;1,16384,16,128,128;4,4096,6,256,512"
  else
    fla=$SHARED/bench/fla_ops.py
  fi
  timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    && PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} OUT="$OUT" timeout 420 python3 "$fla" 2>&1 | grep -v Warning | tail -n 80
  echo "$fla exit: ${PIPESTATUS[0]}"
else
  echo "skipped: shared=${SHARED:-not found}, wheels: $(ls .whl 2>/dev/null | tr '\n' ' ')"
fi

step "comparison"
if [ -f "$OUT/gdn_bench.json" ]; then
  timeout 30 python3 scripts/compare_fla.py "$OUT" | tee "$OUT/compare.md"
else
  echo "no gdn_bench.json"
fi
step "done"
ls -la "$OUT"
