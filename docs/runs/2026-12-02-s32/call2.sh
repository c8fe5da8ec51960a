#!/usr/bin/env bash
# Session 32, call 2: the warp-specialised forward forms U itself (u_tiles_t: U = tb V + diag(β) V
# from V, β and prep's tb), so prep (dr_prep_tb, dr_prep_led) writes tb (8 KB a chunk and head)
# instead of U (16 KB) and reads no V. gdn-new: the delta-rule selftest (the "warp-specialised =
# unsplit split pass, bitwise" and led rows), then gdn-main (39a63e3) and gdn-new alternating on
# the shapes the warp-specialised forward serves, two rounds, and each one's stage breakdown.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in main new; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait; ts compiled
GDN_CACHE_DIR=/tmp/gdn_cache_new timeout 150 target/device/gdn-new selftest --device cuda --filter delta_rule > $O/selftest_new.log 2>&1; echo "exit $?" >> $O/selftest_new.log
grep -i "NO \|checks\|exit\|rror" $O/selftest_new.log | head; grep -c "bitwise.*yes\|bitwise.*| 0" $O/selftest_new.log; grep "warp-specialised = unsplit" $O/selftest_new.log | head -3; ts selftest
R=4x4096x16x128x128,8x2048x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x16x64x64,4x4096x8x128x128
for r in 1 2; do
  for b in main new; do
    GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 100 target/device/gdn-$b bench kernels --shapes $R --out /tmp/b_$b$r > /tmp/b_$b$r.log 2>&1; echo "$b run $r exit $?"
    grep "^| [0-9]" /tmp/b_$b$r.log | head -6 | cut -d'|' -f2-8; cat /tmp/b_$b$r.log >> $O/bench_ab.log
  done
done
ts breakdown
for b in main new; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 100 target/device/gdn-$b bench kernels --shapes 4x4096x16x128x128,2x8192x16x128x128,4x4096x16x64x64 --breakdown > $O/breakdown_$b.log 2>&1; echo "$b breakdown exit $?"
  grep -i "fwd:" $O/breakdown_$b.log | head -12
done
ts end
