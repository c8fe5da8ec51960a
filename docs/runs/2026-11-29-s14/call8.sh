#!/usr/bin/env bash
# Session 14, call 8: the final binary (d67fa14: the chunk table from a pure function) — full
# selftest and the model selftest, gdn's kernels at the three target shapes.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
timeout 120 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
timeout 60 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
timeout 60 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512 > $O/bench.log 2>&1
tail -2 $O/selftest.log; tail -2 $O/model_selftest.log; cat $O/bench.log
