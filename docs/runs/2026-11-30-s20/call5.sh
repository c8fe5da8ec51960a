#!/usr/bin/env bash
# Session 20, call 5: the final binary (P formed by prep for the warp-specialised forward): full selftest,
# model selftest, the README bench (decode included), the breakdown at the three target shapes and the
# 1.3B shape, FLA 0.6.0 at the three, and
# the 1.3B step at FLA's memory.
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
ts "train auto 68.9"; timeout 60 $N bench train --save auto --memory-limit 68.9 2>&1 | grep "s/step" > $O/train.log
cat $O/train.log
ts done
tail -40 $O/bench.log; grep "^| [0-9]\|fwd: \|bwd: " $O/breakdown.log
timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
SHAPES="4,4096,16,128,128;1,16384,16,128,128;4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O \
  timeout 270 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log
