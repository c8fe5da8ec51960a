#!/usr/bin/env bash
# Session 21, call 2: with setmaxnreg (gdn-r232), the warp-specialised forward against the split
# pass where the cost model picks the split one today (forced by GDN_DR_FWD), and Nsight Compute
# (lineinfo) on the new warp-specialised forward at B4·T4096·H16·K128.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; A=target/device/gdn-r232
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $A bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64,1x1024x16x64x128 --reps 1 > /dev/null 2>&1
ts compiled
{
S=2x8192x16x128x128,1x16384x16x128x128,16x1024x16x128x128,32x512x16x128x128,2x8192x16x64x64,1x16384x16x64x128
for r in 1 2; do
 for f in split ws; do
  ts "GDN_DR_FWD=$f run $r"; GDN_DR_FWD=$f timeout 120 $A bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: "
 done
done
ts done
} > $O/bench.log 2>&1
grep "===\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
export GDN_NVRTC_LINEINFO=1
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu | head -1)
timeout 120 $A bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1
ts "lineinfo compiled"
timeout 200 "$NCU" --clock-control none --set full --import-source no --kernel-name regex:'^dr_state_ws' \
  --launch-skip 0 --launch-count 1 -o /tmp/wsf $A bench kernels --shapes 4x4096x16x128x128 --reps 1 > $O/ws_fwd_ncu.log 2>&1
echo "ncu exit $?"
timeout 60 "$NCU" -i /tmp/wsf.ncu-rep --page details --csv > $O/ws_fwd_details.csv 2>&1
timeout 100 "$NCU" -i /tmp/wsf.ncu-rep --page source --csv --print-source sass > $O/ws_fwd_sass.csv 2>&1
gzip $O/*.csv; ts end
