#!/usr/bin/env bash
# Session 17, call 5: dqk's E from the f32 pb values (no second e^) — selftest and breakdowns
# alternating old (71c083f), mid (b6c929a) and new; then Nsight Compute with per-SASS stall samples
# (lineinfo build) on wu, the recompute (state_split) and prep at B4·T4096·H16.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; OLD=target/device/gdn-old; MID=target/device/gdn-mid
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $OLD $MID $N; do
timeout 120 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
GDN_NVRTC_LINEINFO=1 timeout 120 $N bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1 &
wait
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64
for r in 1 2; do
 for b in $OLD $MID $N; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|bwd: dqk"
 done
done
ts done
} > $O/bench.log 2>&1
tail -2 $O/selftest.log; cat $O/bench.log
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu | head -1)
s=4x4096x16x128x128
GDN_NVRTC_LINEINFO=1 timeout 200 "$NCU" --clock-control none --set full --import-source no --kernel-name regex:'^dr_(wu|state_split|prep)' \
  --launch-skip 3 --launch-count 3 -o /tmp/r $N bench kernels --shapes $s --reps 2 > $O/ncu.log 2>&1
echo "ncu exit $?"
timeout 60 "$NCU" -i /tmp/r.ncu-rep --page details --csv > $O/details.csv 2>&1
timeout 60 "$NCU" -i /tmp/r.ncu-rep --page raw --csv > $O/raw.csv 2>&1
timeout 100 "$NCU" -i /tmp/r.ncu-rep --page source --csv --print-source sass > $O/sass.csv 2>&1
gzip $O/*.csv; ls -la $O
