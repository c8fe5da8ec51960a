#!/usr/bin/env bash
# Session 31, call 1: session 30's last three commits (main, cb3ab3f) had not run on the GPU: the
# full selftest, the model selftest, the FP8 1.3B step, the kernel bench. Then gdn-lead (prep
# leading the warp-specialised forward where its grid leaves SMs idle): the delta-rule selftest,
# and the bench with the lead on (the plan's) and off (GDN_DR_LEAD=0), alternating.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; M=target/device/gdn-main; L=target/device/gdn-lead
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
timeout 100 $L selftest --device cuda --filter delta_rule > $O/selftest_lead.log 2>&1; echo "exit $?" >> $O/selftest_lead.log
grep -i "led by\|NO \|checks\|exit\|rror" $O/selftest_lead.log | head -20; ts selftest lead
S=4x4096x16x128x128,2x8192x16x128x128,4x4096x16x64x64,2x8192x8x128x128,1x8192x16x128x128
for r in 1 2; do
  for v in on off; do
    if [ $v = off ]; then export GDN_DR_LEAD=0; else unset GDN_DR_LEAD; fi
    timeout 100 $L bench kernels --shapes $S --out /tmp/bl_$v$r > /tmp/bl_$v$r.log 2>&1; echo "lead $v run $r exit $?"
    grep -A8 "^| B" /tmp/bl_$v$r.log | head -9; cat /tmp/bl_$v$r.log >> $O/bench_lead_ab.log
  done
done
unset GDN_DR_LEAD; ts lead ab
timeout 300 $M selftest --device cuda > $O/selftest.log 2>&1; echo "exit $?" >> $O/selftest.log
grep -i "NO \|checks\|exit\|rror" $O/selftest.log | head -20; ts selftest main
timeout 90 $M bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 5 --save auto --memory-limit 68.9 --fp8 --out /tmp/tr > $O/bench_train_fp8.log 2>&1; echo "exit $?" >> $O/bench_train_fp8.log
grep "tokens/s\|rror\|exit" $O/bench_train_fp8.log | tail -3; ts train
timeout 90 $M selftest --device cuda --filter model > $O/selftest_model.log 2>&1; echo "exit $?" >> $O/selftest_model.log
grep "FP8\|checks\|exit\|NO " $O/selftest_model.log | head -12; ts selftest model
