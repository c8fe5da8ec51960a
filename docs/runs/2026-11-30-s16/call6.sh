#!/usr/bin/env bash
# Session 16, call 6: p_rows and p_frags as one helper (the A operand through a fetcher: kernel 4
# and the dṼ_loc warps read K's rows as they go, 80 → 58 registers in kernel 4) — the full
# selftest, then the kernels against call 3's binary (gdn-old), alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; P=target/device/gdn-old
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
{
ts "selftest"
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "exit $?"; tail -1 $O/selftest.log
grep "| no" $O/selftest.log | head
for r in old1:$P new1:$N old2:$P new2:$N; do
  name=${r%%:*}; b=${r#*:}
  ts "$name"
  timeout 60 $b bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,4x4096x6x256x512,4x4096x16x64x128 2>&1 | grep "^| [0-9]" | head -5
done
for r in old:$P new:$N; do
  name=${r%%:*}; b=${r#*:}
  ts "breakdown $name"
  timeout 60 $b bench kernels --shapes 4x4096x16x128x128,2x8192x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|dvloc\|fwd_o\|state_ws"
done
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
