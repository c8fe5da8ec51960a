#!/usr/bin/env bash
# Session 18, call 3: prep with a 5-CTA register cap at K <= 128 (C), and C plus the saved T
# stored in whole sectors (B), against 38002e6 (base: pair_store). Delta-rule selftest of B and C;
# breakdowns alternating base, B, C; FLA 0.6.0 at the three target shapes in the same call.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-base; B=target/device/gdn-b; C=target/device/gdn-c
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1 &
for b in $BASE $B $C; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
for b in $B $C; do
 timeout 150 $b selftest --device cuda --filter delta_rule > $O/selftest_$(basename $b).log 2>&1; echo "selftest exit $?" >> $O/selftest_$(basename $b).log
 tail -2 $O/selftest_$(basename $b).log
done
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64,8x2048x16x128x128
for r in 1 2; do
 for b in $BASE $B $C; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: prep\|bwd: wu"
 done
done
ts done
} > $O/bench.log 2>&1
SHAPES="4,4096,16,128,128;1,16384,16,128,128;4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O \
  timeout 300 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log; grep "===\|^| 4 | 4096 | 16 | 128 | 128 | 0\|^| 4 | 4096 | 6 | 256 | 512 | 0\|fwd: prep" $O/bench.log | head -60
