#!/usr/bin/env bash
# Session 17, call 8: the slice ring of dqk and wy fills every buffer in the prologue (A), and A
# with three dqk buffers at K = 128 (B). Full selftest of A and B; breakdowns alternating base
# (c797af8), A and B; the README bench (decode included) of A and B; FLA 0.6.0 at the three
# target shapes in the same call.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-base; A=target/device/gdn-a; B=target/device/gdn-b
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1 &
for b in $BASE $A $B; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
for b in $A $B; do
 timeout 150 $b selftest --device cuda > $O/selftest_$(basename $b).log 2>&1; echo "selftest exit $?" >> $O/selftest_$(basename $b).log
 tail -2 $O/selftest_$(basename $b).log
done
timeout 90 $B selftest --device cuda --filter model > $O/model_selftest_b.log 2>&1; echo "exit $?" >> $O/model_selftest_b.log
tail -2 $O/model_selftest_b.log
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64,8x2048x16x128x128
for r in 1 2; do
 for b in $BASE $A $B; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|bwd: dqk"
 done
done
for b in $A $B; do ts "$b README bench"; timeout 150 $b bench kernels 2>&1 | tail -n 30; done
ts done
} > $O/bench.log 2>&1
SHAPES="4,4096,16,128,128;1,16384,16,128,128;4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O \
  timeout 300 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log; grep "===\|bwd: dqk" $O/bench.log | head -40
