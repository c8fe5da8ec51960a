#!/usr/bin/env bash
# Session 14, call 4: the keeping forward and the backward from it (new) — selftest (its bitwise
# rows), bench kernels at the README shapes with the kept table, against fe17a83 (base: the session-13 binary, before .ca).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; B=target/device/gdn-base; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512
{
ts "selftest new"
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "exit $?"; tail -2 $O/selftest.log
grep -E "kept|keeping|KeptForward" $O/selftest.log | head -40
for r in new1:$N base1:$B new2:$N; do
  name=${r%%:*}; bin=${r#*:}
  ts "bench $name"; timeout 150 $bin bench kernels --shapes $SH --out $O/$name 2>&1 | grep -v "^device"
done
ts done
} > $O/bench.log 2>&1
tail -70 $O/bench.log
