#!/usr/bin/env bash
# Session 15, call 7: fwd_o and the warp-specialised output warps share p_frags / out_tiles —
# full selftest (warp-specialised = split bitwise rows), model selftest, the kernels.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
timeout 150 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
timeout 90 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
timeout 90 $N bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x128 > $O/bench.log 2>&1
tail -2 $O/selftest.log; grep -c "warp-specialised = split" $O/selftest.log; tail -2 $O/model_selftest.log; grep "^| [0-9]" $O/bench.log
