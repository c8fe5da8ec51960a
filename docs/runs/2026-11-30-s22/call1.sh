#!/usr/bin/env bash
# Session 22, call 1: sequence-parallel state passes (gdn-seg, 38d993f) against 2710dcf
# (gdn-main): full selftest of seg, then the long-sequence shapes alternating, seg with its plan
# and with GDN_DR_SEG=0 (unsegmented, i.e. main's passes with the new kernel text), breakdowns.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-main; A=target/device/gdn-seg
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $A selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep -c "sequence-parallel" $O/selftest.log; grep "FAIL" $O/selftest.log | head -20
ts selftest
S=1x16384x16x128x128,2x8192x16x128x128,1x16384x16x64x64,4x4096x16x128x128
{
for r in 1 2; do
  ts "main run $r"; timeout 100 $BASE bench kernels --shapes $S --breakdown 2>&1
  ts "seg run $r"; timeout 100 $A bench kernels --shapes $S --breakdown 2>&1
  ts "seg GDN_DR_SEG=0 run $r"; GDN_DR_SEG=0 timeout 100 $A bench kernels --shapes $S 2>&1
done
ts "seg forced 64 chunks at B2"; GDN_DR_SEG=64 timeout 100 $A bench kernels --shapes 2x8192x16x128x128,1x16384x16x128x128 --breakdown 2>&1
ts "seg forced 32 chunks at B1"; GDN_DR_SEG=32 timeout 100 $A bench kernels --shapes 1x16384x16x128x128 --breakdown 2>&1
ts done
} > $O/ab.log 2>&1
grep "===\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]\|^breakdown\|segment\|state_\|prep\|wu\|dqk\|fwd_o\|dvloc" $O/ab.log | head -150
ts end
