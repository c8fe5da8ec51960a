#!/usr/bin/env bash
# Session 28, call 6: the final binary (call 4's kernels). Full selftest, model + GPU-decode
# selftest, and the README bench.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 250 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 250 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO \|rror" $O/selftest.log | head -10
ts selftest
timeout 240 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "model selftest exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log; grep "FAIL\| NO " $O/model_selftest.log | head
ts "model selftest"
timeout 200 $N bench kernels --out $O/bench > $O/bench.log 2>&1; echo "bench exit $?" >> $O/bench.log
grep "^| \|exit" $O/bench.log | head -30
ts end
