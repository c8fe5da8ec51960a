#!/usr/bin/env bash
# Session 15, call 8: the bitwise row against the split pass forced unsplit —
# full selftest, model selftest, the kernels.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
timeout 150 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
timeout 90 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
timeout 90 $N bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x128 > $O/bench.log 2>&1
tail -2 $O/selftest.log; grep "warp-specialised = " $O/selftest.log | cut -c1-60; grep -c "warp-specialised = " $O/selftest.log; tail -2 $O/model_selftest.log; grep "^| [0-9]" $O/bench.log
