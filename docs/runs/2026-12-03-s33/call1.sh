#!/usr/bin/env bash
# Session 33, call 1: wu leads the backward's recompute (dr_wu_led, dr_state_split_led_*): wu's
# first rows alone, then the recompute with the rest of wu beside it on the same SMs (2 wu CTAs
# beside each pass CTA at K = 128). gdn-new: the delta-rule selftest (the new "recompute led by wu
# = not led, bitwise" rows), then gdn-main (6460d38) and gdn-new alternating, two rounds, on B4
# (led) and controls (B8·T2048: 256 CTAs, not led; K = 64: K-split recompute, not led).
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in main new; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait; ts compiled
GDN_CACHE_DIR=/tmp/gdn_cache_new timeout 200 target/device/gdn-new selftest --device cuda --filter delta_rule > $O/selftest_new.log 2>&1; echo "exit $?" >> $O/selftest_new.log
grep -i "NO \|checks\|exit\|rror" $O/selftest_new.log | head; grep -c "recompute led by wu" $O/selftest_new.log; grep "recompute led by wu" $O/selftest_new.log | head -4; ts selftest
R=4x4096x16x128x128,4x4096x8x128x128,8x2048x16x128x128,4x4096x16x64x64
for r in 1 2; do
  for b in main new; do
    GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 100 target/device/gdn-$b bench kernels --shapes $R --out /tmp/b_$b$r > /tmp/b_$b$r.log 2>&1; echo "$b run $r exit $?"
    grep "^| [0-9]" /tmp/b_$b$r.log | head -4 | cut -d'|' -f2-8; cat /tmp/b_$b$r.log >> $O/bench_ab.log
  done
done
GDN_CACHE_DIR=/tmp/gdn_cache_new timeout 60 target/device/gdn-new bench kernels --shapes 4x4096x16x128x128,4x4096x8x128x128 --breakdown > $O/breakdown_new.log 2>&1
grep -o "wu (from[^)]*)" $O/breakdown_new.log | head -3
ts bench
# The share formed first, forced (GDN_DR_LEAD=s), at B4·H16: is the model's pick near the best?
for s in 0.3 0.45 0.6; do
  GDN_DR_LEAD=$s GDN_CACHE_DIR=/tmp/gdn_cache_new timeout 60 target/device/gdn-new bench kernels --shapes 4x4096x16x128x128 > /tmp/s.log 2>&1
  echo "share $s: $(grep '^| 4 | 4096' /tmp/s.log | cut -d'|' -f7)"; cat /tmp/s.log >> $O/bench_share.log
done
ts end
