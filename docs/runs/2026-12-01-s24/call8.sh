#!/usr/bin/env bash
# Session 24, call 8: the last binary (the groups' launch loop as one helper, run_followed; the
# bench's plan line with the groups): selftest, and the K = 256 shapes of call 7.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-last
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 300 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head
timeout 100 $N bench kernels --shapes 8x4096x6x256x512,6x4096x6x256x512,4x4096x6x256x512 --breakdown > $O/bench.log 2>&1
grep "^| [0-9]\|^breakdown" $O/bench.log | head -12
ts end
