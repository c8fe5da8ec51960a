#!/usr/bin/env bash
# Session 22, call 9: gdn-seg7 (store_state and launch_combine helpers; same arithmetic) — full
# selftest, then the README shapes and B1·T16384 K64 against gdn-seg6 (call 8's binary).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; S6=target/device/gdn-seg6; N=target/device/gdn-seg7
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $S6 $N; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64,1x1024x6x256x512 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL" $O/selftest.log | head
ts selftest
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,1x16384x16x64x64
for b in $S6 $N; do
  ts "$b"; timeout 60 $b bench kernels --shapes $S 2>&1 | grep "^| [14] | [14][06][93][68] | [16]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]"
done
ts end
