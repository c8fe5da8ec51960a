#!/usr/bin/env bash
# Session 23, call 2: gdn-comb (seg_combine streams A through shared memory, NB = 4 tiles in
# flight across segments) against gdn-lp (dad43eb). Full selftest and the model selftest over
# 40 seeds (per-token logits rows) on gdn-comb; B1·T16384 breakdowns alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; M=target/device/gdn-lp; N=target/device/gdn-comb
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $M $N; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 240 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head
ts selftest
for s in $(seq 100 139); do
  echo "== seed $s"
  timeout 60 $N selftest --device cuda --filter model --seed $s 2>&1 | grep "logits\|checks\| NO "
done > $O/model_seeds.log 2>&1
grep -c "checks passed" $O/model_seeds.log; grep " NO " $O/model_seeds.log | head
ts model
S=1x16384x16x128x128,1x16384x16x64x64,1x16384x16x64x128
{
for r in 1 2; do
  for b in $M $N; do
    ts "$b run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| 1 | 16384\|segment starts\|combine"
  done
done
for b in $M $N; do
  ts "$b B4"; timeout 100 $b bench kernels --shapes 4x4096x16x128x128 2>&1 | grep "^| 4 | 4096"
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
