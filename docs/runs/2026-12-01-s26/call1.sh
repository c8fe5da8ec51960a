#!/usr/bin/env bash
# Session 26, call 1: L2 prefetch of later-phase inputs. pf1: wy's dṼ, V, T asked of L2 as each
# dqkwy CTA starts; V in prep (K >= 128) and wu; dO's later slices in dvloc. pf2: pf1 + the next
# resident dqkwy CTA's first slices asked of L2 as a CTA starts wy. A/B/C against base (main),
# alternating; per-stage breakdown; the delta-rule selftest on pf2.
set -u
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
W=1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64
for b in base pf1 pf2; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
GDN_CACHE_DIR=/tmp/gdn_cache_pf2 timeout 200 target/device/gdn-pf2 selftest --device cuda --filter delta_rule > $O/selftest_pf2.log 2>&1; echo "selftest exit $?" >> $O/selftest_pf2.log
tail -2 $O/selftest_pf2.log; grep "FAIL" $O/selftest_pf2.log | head -20
ts selftest
S=4x4096x16x128x128,8x2048x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64
{
for r in 1 2; do
  for b in base pf1 pf2; do
    ts "$b run $r"; GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 120 target/device/gdn-$b bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -5
  done
done
for b in base pf1 pf2; do
  ts "$b breakdown"; GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 120 target/device/gdn-$b bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512,4x4096x16x64x64 --breakdown 2>&1 | grep "^breakdown\|^| [a-z]"
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
