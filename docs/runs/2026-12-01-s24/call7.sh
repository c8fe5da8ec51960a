#!/usr/bin/env bash
# Session 24, call 7: gdn-group (K = 256 passes whose one grid would fill the GPU run in groups
# of sequences, each followed) — selftest, then A/B against GDN_DR_FOLLOW=0 in the same binary
# and gdn-final2 (call 6: followers only where one grid leaves SMs), and the 1.3B step.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-group
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 300 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head; grep -c "groups of one" $O/selftest.log
ts selftest
S=8x4096x6x256x512,6x4096x6x256x512,4x4096x6x256x512,16x2048x6x256x512
{
for r in 1 2; do
  ts "off run $r"; GDN_DR_FOLLOW=0 timeout 150 $N bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -4
  ts "final2 run $r"; timeout 150 target/device/gdn-final2 bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -4
  ts "group run $r"; timeout 150 $N bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -4
done
timeout 100 $N bench kernels --shapes 8x4096x6x256x512 --breakdown 2>&1 | grep "^breakdown"
} > $O/ab.log 2>&1
cat $O/ab.log
ts "1.3B step"; timeout 150 $N bench train --save auto --memory-limit 68.9 --out $O/gdn_auto > $O/train.log 2>&1
grep "s/step" $O/train.log
ts "1.3B step, final2"; timeout 150 target/device/gdn-final2 bench train --save auto --memory-limit 68.9 --out $O/gdn_auto2 > $O/train2.log 2>&1
grep "s/step" $O/train2.log
ts end
