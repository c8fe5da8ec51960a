#!/usr/bin/env bash
# Session 17, call 2: dqk + wy at B4·T4096·H16·K128, Nsight Compute full set with per-SASS
# stall samples (lineinfo build), exported as CSV (details, raw, source) for offline reading.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache GDN_NVRTC_LINEINFO=1
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
timeout 150 $N bench kernels --shapes 4x4096x16x128x128 --reps 3 > $O/warm.log 2>&1
for s in 4x4096x16x128x128 4x4096x6x256x512; do
timeout 200 "$NCU" --clock-control none --set full --import-source no --kernel-name regex:'^dr_dqkwy' \
  --launch-skip 2 --launch-count 1 -o /tmp/r_$s $N bench kernels --shapes $s --reps 3 > $O/ncu_$s.log 2>&1
echo "ncu $s: exit $?"
timeout 60 "$NCU" -i /tmp/r_$s.ncu-rep --page details --csv > $O/details_$s.csv 2>&1
timeout 60 "$NCU" -i /tmp/r_$s.ncu-rep --page raw --csv > $O/raw_$s.csv 2>&1
timeout 100 "$NCU" -i /tmp/r_$s.ncu-rep --page source --csv --print-source sass > $O/sass_$s.csv 2>&1
echo "exports: $(wc -c $O/*_$s.csv | tail -1)"
done
gzip $O/*.csv
ls -la $O
