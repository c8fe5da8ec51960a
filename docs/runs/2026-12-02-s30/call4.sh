#!/usr/bin/env bash
# Session 30, call 4: more producers write their products' FP8 codes (gdn-b): the short conv's
# backward (q‖k‖v's gradient, then a codes transpose), the residual RMSNorm's backward (o_proj's
# and down's gradients), the residual RMSNorm's forward (h1, h2 beside their bf16). The
# selftest groups that run them, gdn-b's and gdn-a's (0284e2a, call 2) FP8 1.3B step, FLA's
# step (Triton cache from call 3 carried), gdn-b again, the model selftest, gdn-b by op group.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; A=target/device/gdn-a; B=target/device/gdn-b
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for g in fp8 rmsnorm conv; do
  timeout 90 $B selftest --device cuda --filter $g > /tmp/selftest_$g.log 2>&1; echo "exit $?" >> /tmp/selftest_$g.log
  cat /tmp/selftest_$g.log >> $O/selftest.log
  grep -i "codes\|transpose\|NO \|checks\|exit\|rror" /tmp/selftest_$g.log | head -40
  ts selftest $g
done
gdn() { # binary, tag
  timeout 110 $1 bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 5 --save auto --memory-limit 68.9 --fp8 --out /tmp/gdn_$2 > /tmp/gdn_$2.log 2>&1
  echo "gdn $2: exit $?"; grep "tokens/s\|rror" /tmp/gdn_$2.log | tail -2
}
{ ts "gdn-b"; gdn $B b1; ts "gdn-a"; gdn $A a1; ts FLA; } >> $O/bench.log 2>&1
TIMEOUT=250 bash scripts/device_fla_train.sh 1.3B > /tmp/fla.log 2>&1
grep -v "fla_triton_cache\|total" /tmp/fla.log >> $O/bench.log; cp $OUT/fla_train.log $O/ 2>/dev/null; rm -f $OUT/fla_triton_cache.tgz.part-*
{ ts "gdn-b again"; gdn $B b2; ts "gdn-a again"; gdn $A a2; ts end; } >> $O/bench.log 2>&1
cat $O/bench.log
timeout 60 $B selftest --device cuda --filter model > $O/selftest_model.log 2>&1; echo "exit $?" >> $O/selftest_model.log
grep "FP8\|checks\|exit\|NO " $O/selftest_model.log | head -12
ts selftest model
timeout 70 $B bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 3 --save auto --memory-limit 68.9 --fp8 --breakdown --out $O > /tmp/breakdown.log 2>&1; echo "breakdown exit $?"
ts breakdown
