#!/usr/bin/env bash
# Session 18, call 2: (1) the recompute state pass forced to other shapes (GDN_DR_KS,
# GDN_DR_SF_NW, GDN_DR_SPREAD) at B4·T4096·H16 and B8·T2048·H16, K128; (2) Nsight Compute (full
# set, per-SASS stall samples, lineinfo) on prep, wu and the recompute of the pair_store binary.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 120 $N bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1
{
S=4x4096x16x128x128,8x2048x16x128x128
for r in 1 2; do
 for cfg in "" "GDN_DR_KS=2" "GDN_DR_KS=2 GDN_DR_SF_NW=2" "GDN_DR_SF_NW=2" "GDN_DR_SF_NW=2 GDN_DR_SPREAD=0" "GDN_DR_SF_NW=8"; do
  ts "cfg [$cfg] run $r"; env $cfg timeout 100 $N bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|recompute\|forward split\|state_"
 done
done
} > $O/env.log 2>&1
ts env done
export GDN_NVRTC_LINEINFO=1
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu | head -1)
timeout 120 $N bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1
timeout 200 "$NCU" --clock-control none --set full --import-source no --kernel-name regex:'^dr_(wu|prep|state_split)' \
  --launch-skip 0 --launch-count 3 -o /tmp/r $N bench kernels --shapes 4x4096x16x128x128 --reps 1 > $O/ncu.log 2>&1
echo "ncu exit $?"
timeout 60 "$NCU" -i /tmp/r.ncu-rep --page details --csv > $O/details.csv 2>&1
timeout 100 "$NCU" -i /tmp/r.ncu-rep --page source --csv --print-source sass > $O/sass.csv 2>&1
grep '"Kernel Name"' $O/sass.csv | cut -c1-80
gzip $O/*.csv; ts done
grep "===\|^| 4 | 4096\|^| 8 | 2048\|recompute" $O/env.log | head -80
