#!/usr/bin/env bash
# Session 25, call 7: the final binary (main after the reverts; its code is aafef50's, which
# session 24 never ran on the GPU): full selftest, model selftest, README bench, 1.3B step.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 240 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head
ts selftest
timeout 120 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "model selftest exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log
ts "README bench"; timeout 150 $N bench kernels > $O/bench.log 2>&1; echo "bench exit $?" >> $O/bench.log
grep "^| [0-9]\|exit" $O/bench.log | head -40
ts "1.3B step"; timeout 150 $N bench train --save auto --memory-limit 68.9 --out $O/gdn_auto > $O/train.log 2>&1
grep -v "^\s*$" $O/train.log | tail -5
ts end
