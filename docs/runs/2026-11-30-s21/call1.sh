#!/usr/bin/env bash
# Session 21, call 1: the warp-specialised forward with setmaxnreg (output warpgroups 136 / state
# 232 registers: gdn-r232; 144 / 216: gdn-r216) against main (gdn-main): selftest of r232,
# breakdowns alternating; then Nsight Compute (lineinfo) on main's dr_dqkwy_k128 at B4.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-main; A=target/device/gdn-r232; B=target/device/gdn-r216
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A $B; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $A selftest --device cuda --filter delta_rule > $O/selftest_r232.log 2>&1; echo "selftest exit $?" >> $O/selftest_r232.log
tail -2 $O/selftest_r232.log
ts selftest
{
S=4x4096x16x128x128,8x2048x16x128x128,4x4096x16x64x64
for r in 1 2; do
 for b in $BASE $A $B; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
ts done
} > $O/bench.log 2>&1
grep "===\|fwd: state\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
export GDN_NVRTC_LINEINFO=1
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu | head -1)
timeout 120 $BASE bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1
ts "lineinfo compiled"
timeout 200 "$NCU" --clock-control none --set full --import-source no --kernel-name regex:'^dr_dqkwy' \
  --launch-skip 0 --launch-count 1 -o /tmp/dqkwy $BASE bench kernels --shapes 4x4096x16x128x128 --reps 1 > $O/dqkwy_ncu.log 2>&1
echo "ncu exit $?"
timeout 60 "$NCU" -i /tmp/dqkwy.ncu-rep --page details --csv > $O/dqkwy_details.csv 2>&1
timeout 100 "$NCU" -i /tmp/dqkwy.ncu-rep --page source --csv --print-source sass > $O/dqkwy_sass.csv 2>&1
gzip $O/*.csv; ts end
