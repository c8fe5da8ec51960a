#!/usr/bin/env bash
# Session 31, call 4: call 3's kernels were 4-15 % slower than session 28's: the lead's waits,
# compiled into every state pass, had made ptxas spill (split pass K = 256: 8 → 44-64 bytes; the
# warp-specialised forward K = 128: 0 → 36; prep K = 128: 0 → 12). gdn-new2 keeps the unled
# kernels as they were (ptxas: the same registers and spills as cb3ab3f) and adds led variants
# (dr_state_ws_led, dr_prep_led). The delta-rule selftest on gdn-new2, then gdn-base (cb3ab3f) and
# gdn-new2 alternating on the README shapes and the led ones, two rounds.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in base new2; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait; ts compiled
GDN_CACHE_DIR=/tmp/gdn_cache_new2 timeout 120 target/device/gdn-new2 selftest --device cuda --filter delta_rule > $O/selftest_new2.log 2>&1; echo "exit $?" >> $O/selftest_new2.log
grep -i "NO \|checks\|exit\|rror" $O/selftest_new2.log | head; grep -c "led by prep.*yes" $O/selftest_new2.log; ts selftest
R=8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64,4x4096x8x128x128
for r in 1 2; do
  for b in base new2; do
    GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 100 target/device/gdn-$b bench kernels --shapes $R --out /tmp/b_$b$r > /tmp/b_$b$r.log 2>&1; echo "$b run $r exit $?"
    grep "^| [0-9]" /tmp/b_$b$r.log | head -7 | cut -d'|' -f2-8; cat /tmp/b_$b$r.log >> $O/bench_ab.log
  done
done
ts end
