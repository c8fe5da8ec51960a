#!/usr/bin/env bash
# Session 23, call 1: gdn-dbg (main + kept-forward rows over segments in the delta-rule selftest,
# + GDN_DEBUG_LOGITS_DIR dumps of the model selftest's logits). Full selftest; the model selftest
# over 40 seeds (the logits rows' spread; session 22's 3.5e-2 outlier seed dumped).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-dbg
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 240 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head; grep -c "kept forward, sequence-parallel" $O/selftest.log
ts selftest
mkdir -p $O/dump
GDN_DEBUG_LOGITS_DIR=$O/dump timeout 60 $N selftest --device cuda --filter model --seed 1796068082207568701 > $O/model_outlier.log 2>&1
for s in 11 12; do mkdir -p $O/dump$s; GDN_DEBUG_LOGITS_DIR=$O/dump$s timeout 60 $N selftest --device cuda --filter model --seed $s > /dev/null 2>&1; done
ts dumps
for s in $(seq 100 139); do
  echo "== seed $s"
  timeout 60 $N selftest --device cuda --filter model --seed $s 2>&1 | grep "model logits\|checks" | grep -v "blocks of"
done > $O/model_seeds.log 2>&1
grep -c "checks passed" $O/model_seeds.log
ts end
