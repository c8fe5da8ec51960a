#!/usr/bin/env bash
# Session 14, call 7: the state passes take (start, len) of a chunk from the sequence's bounds
# instead of a ctab row per step (new) against f521051 (base): kernels alternating, breakdown,
# the selftest.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; B=target/device/gdn-base; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512
{
( $B bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1 ) &
$N bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1
wait
for r in base1:$B new1:$N base2:$B new2:$N; do
  name=${r%%:*}; bin=${r#*:}
  ts "bench $name"; timeout 100 $bin bench kernels --shapes $SH 2>&1 | grep "^| [0-9]"
done
for r in base:$B new:$N; do
  name=${r%%:*}; bin=${r#*:}
  ts "breakdown $name"
  timeout 90 $bin bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: \|bwd: "
done
ts "selftest new"
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "exit $?"; tail -1 $O/selftest.log
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
