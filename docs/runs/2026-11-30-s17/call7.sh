#!/usr/bin/env bash
# Session 17, call 7: Nsight Compute (full set, per-SASS stall samples, lineinfo build) on the
# backward's wu, recompute (state_split) and dqk + wy at B4·T4096·H16·K128 (c797af8).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache GDN_NVRTC_LINEINFO=1
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu | head -1)
timeout 120 $N bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1
timeout 240 "$NCU" --clock-control none --set full --import-source no --kernel-name regex:'^dr_(wu|state_split|dqkwy)' \
  --launch-skip 0 --launch-count 3 -o /tmp/r $N bench kernels --shapes 4x4096x16x128x128 --reps 1 > $O/ncu.log 2>&1
echo "ncu exit $?"
timeout 60 "$NCU" -i /tmp/r.ncu-rep --page details --csv > $O/details.csv 2>&1
timeout 60 "$NCU" -i /tmp/r.ncu-rep --page raw --csv > $O/raw.csv 2>&1
timeout 100 "$NCU" -i /tmp/r.ncu-rep --page source --csv --print-source sass > $O/sass.csv 2>&1
grep -c "Kernel Name" $O/sass.csv; grep '"Kernel Name"' $O/sass.csv
gzip $O/*.csv; ls -la $O
