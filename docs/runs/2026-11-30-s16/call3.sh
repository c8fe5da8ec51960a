#!/usr/bin/env bash
# Session 16, call 3: the final binary (warp-specialised reverse pass at B4·T4096·K128 and the K = 64
# shapes, kernel 4 v6; the warp-specialised forward as in session 15, picked at
# B8·T2048 and B4·T4096 for K = 128 and at K = 64) — full selftest, model selftest, gdn's kernels
# at the README shapes (decode included), the breakdown, then FLA 0.6.0 at the three target
# shapes in the same call.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
timeout 150 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
timeout 90 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
{
ts "gdn bench kernels (README shapes, decode)"; timeout 150 $N bench kernels --out $O 2>&1 | tail -n 40
ts "B8, B2, K64"; timeout 60 $N bench kernels --shapes 8x2048x16x128x128,2x8192x16x128x128,4x4096x16x64x64,4x4096x16x64x128 2>&1 | grep "^| [0-9]\|forward"
ts "breakdown"; timeout 90 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: \|bwd: "
ts done
} > $O/bench.log 2>&1
SHAPES="4,4096,16,128,128;1,16384,16,128,128;4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O \
  timeout 300 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
tail -3 $O/selftest.log; tail -2 $O/model_selftest.log; cat $O/fla_stages.log | grep "^FLA"; cat $O/bench.log
