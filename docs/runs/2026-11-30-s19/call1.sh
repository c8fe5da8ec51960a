#!/usr/bin/env bash
# Session 19, call 1 (timing only; the hacked binaries' gradients are wrong): dq/dk + WY with
# dq and dv stored as bf16 (A) and with dk (partial and final) as bf16 too (B), against the
# landed kernels (base = 8d78ef4): breakdowns alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-final; A=target/device/gdn-a; B=target/device/gdn-b
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A $B; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64
for r in 1 2; do
 for b in $BASE $A $B; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
