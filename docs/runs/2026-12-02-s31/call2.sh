#!/usr/bin/env bash
# Session 31, call 2: call 1's lead gained 29 % at K = 64 but lost 3 % at B2·T8192·H16·K128,
# where the rest of prep likely took every SM before the pass's CTAs (one a whole SM) started.
# gdn-lead now holds the rest behind dr_lead_gate until the pass's CTAs have all started. The
# delta-rule selftest, then lead on (the plan's), off (GDN_DR_LEAD=0) and forced shares,
# alternating.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; L=target/device/gdn-lead
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 100 $L selftest --device cuda --filter delta_rule > $O/selftest_lead.log 2>&1; echo "exit $?" >> $O/selftest_lead.log
grep -i "NO \|checks\|exit\|rror" $O/selftest_lead.log | head -20; grep -c "led by prep" $O/selftest_lead.log; ts selftest lead
S=2x8192x16x128x128,4x4096x16x64x64,4x4096x8x128x128,2x4096x16x128x128
for r in 1 2; do
  for v in on off 0.3 0.6; do
    if [ $v = off ]; then export GDN_DR_LEAD=0; elif [ $v = on ]; then unset GDN_DR_LEAD; else export GDN_DR_LEAD=$v; fi
    timeout 100 $L bench kernels --shapes $S --out /tmp/bl_$v$r > /tmp/bl_$v$r.log 2>&1; echo "lead $v run $r exit $?"
    grep "^| [0-9]" /tmp/bl_$v$r.log | head -4 | cut -d'|' -f2-8; cat /tmp/bl_$v$r.log >> $O/bench_lead_ab.log
  done
done
unset GDN_DR_LEAD; ts lead ab
timeout 60 $L bench kernels --shapes 2x8192x16x128x128,4x4096x16x64x64 --breakdown --reps 20 --out /tmp/bb > $O/breakdown.log 2>&1
grep "breakdown B" $O/breakdown.log; ts breakdown
