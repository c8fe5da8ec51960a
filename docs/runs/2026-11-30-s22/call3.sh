#!/usr/bin/env bash
# Session 22, call 3: the reverse pass sequence-parallel too (gdn-seg3) against 2710dcf
# (gdn-main): full selftest of seg3, then B1·T16384 (K128, K64 V64, K64 V128, K256 V512 H6) and B4·T4096
# alternating, with the per-stage breakdown; seg3 with GDN_DR_SEG_BWD=0 (reverse pass unsegmented).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-main; A=target/device/gdn-seg3
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $A selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep -c "sequence-parallel" $O/selftest.log; grep "FAIL" $O/selftest.log | head -20
ts selftest
S=1x16384x16x128x128,1x16384x16x64x64,1x16384x16x64x128,1x16384x6x256x512,4x4096x16x128x128
{
for r in 1 2; do
  ts "main run $r"; timeout 100 $BASE bench kernels --shapes $S --breakdown 2>&1
  ts "seg2 run $r"; timeout 100 $A bench kernels --shapes $S --breakdown 2>&1
done
ts done
} > $O/ab.log 2>&1
grep "===\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]\|^breakdown\|segment\|state_\|prep\|wu\|dqk\|fwd_o\|dvloc" $O/ab.log | grep -v "^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* | [0-9]" | head -150
ts end
