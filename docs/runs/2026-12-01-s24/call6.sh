#!/usr/bin/env bash
# Session 24, call 6: the bench's state-plan line names the following kernels (host-side change
# only): selftest again, the three target shapes with --breakdown.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final2
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 300 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head
timeout 100 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,2x4096x6x256x512 --breakdown > $O/bench.log 2>&1
grep "^| [0-9]\|^breakdown" $O/bench.log | head -20
ts end
