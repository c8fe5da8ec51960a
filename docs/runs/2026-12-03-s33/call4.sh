#!/usr/bin/env bash
# Session 33, call 4: call 3 showed the recompute 27 % slower with L1 cut to 28 KB (whole
# shared-memory carveout): its tile loads go through L1 (cp.async.ca, STATE_VIA_L1). The
# warp-specialised passes share those loads but fill most of the SM's shared memory (≈191 KB
# forward), so their L1 is small anyway. gdn-exp takes NVRTC defines from GDN_EXP_DEFINE (an
# experiment switch): DR_WS_VIA_L1=0 turns the warp-specialised forward's state-warp tile loads to
# cp.async.cg (L2 only), DR_BWS_VIA_L1=0 the warp-specialised reverse pass's. Breakdowns (each
# stage alone) and graph times, two rounds.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
V=("" "DR_WS_VIA_L1=0" "DR_BWS_VIA_L1=0" "DR_WS_VIA_L1=0 DR_BWS_VIA_L1=0")
N=(base ws0 bws0 both0)
for i in 0 1 2 3; do
  GDN_EXP_DEFINE="${V[$i]}" GDN_CACHE_DIR=/tmp/gc_${N[$i]} timeout 250 target/device/gdn-exp bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1 &
done
wait; ts compiled
S=4x4096x16x128x128,8x2048x16x128x128
for r in 1 2; do
  for i in 0 1 2 3; do
    GDN_EXP_DEFINE="${V[$i]}" GDN_CACHE_DIR=/tmp/gc_${N[$i]} timeout 60 target/device/gdn-exp bench kernels --shapes $S --breakdown > /tmp/x.log 2>&1
    echo "${N[$i]} r$r: $(grep '^| [48] | ' /tmp/x.log | head -2 | cut -d'|' -f7-8 | tr '\n' ' ') $(grep 'state_ws\|state_bwd_ws' /tmp/x.log | cut -d'|' -f2-3 | tr '\n' ' ')"
    cat /tmp/x.log >> $O/call4_${N[$i]}.log
  done
done
ts end
