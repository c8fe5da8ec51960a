#!/usr/bin/env bash
# Session 19, call 7: the final binary (main with the K = 256 batched staged stores): full
# selftest, model selftest, the README bench (decode included), the breakdown at the three
# target shapes and at the 1.3B training shape.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log
timeout 120 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log
ts "README bench"; timeout 200 $N bench kernels > $O/bench.log 2>&1; echo "bench exit $?" >> $O/bench.log
timeout 100 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,8x4096x6x256x512 --breakdown > $O/breakdown.log 2>&1
ts done
tail -22 $O/bench.log; grep "^| [0-9]\|fwd: \|bwd: " $O/breakdown.log
