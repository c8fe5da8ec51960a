#!/usr/bin/env bash
# Session 33, call 3: why the led recompute is slower. gdn-exp = call 2's binary plus
# GDN_EXP_CARVEOUT=1, which gives the unled split passes the whole shared-memory carveout too (L1
# down to 28 KB), to separate the carveout's cost from wu's interference. Breakdowns (each stage
# alone: no lead under the probe) of main, exp and exp with the carveout; then fwd+bwd graph of
# main, exp led, exp unled with the carveout.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in main exp; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1 &
done
wait; ts compiled
S=4x4096x16x128x128
run() { GDN_CACHE_DIR=/tmp/gdn_cache_$1 timeout 60 env $3 target/device/gdn-$1 bench kernels --shapes $S $4 > /tmp/x.log 2>&1; echo "$2: $(grep '^| 4 | 4096' /tmp/x.log | head -1 | cut -d'|' -f7-8) $(grep 'state_fwd (recompute)\|wu (saved' /tmp/x.log | tr '\n' ' ')"; cat /tmp/x.log >> $O/call3_$2.log; }
for r in 1 2; do
  run main main_bd X=1 --breakdown
  run exp exp_bd X=1 --breakdown
  run exp exp_carve_bd GDN_EXP_CARVEOUT=1 --breakdown
done
for r in 1 2; do
  run main main X=1 ""
  run exp exp_led X=1 ""
  run exp exp_unled_carve "GDN_EXP_CARVEOUT=1 GDN_DR_LEAD=0" ""
done
ts end
