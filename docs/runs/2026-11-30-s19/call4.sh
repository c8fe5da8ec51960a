#!/usr/bin/env bash
# Session 19, call 4: Nsight Compute (full set, per-SASS stall samples, lineinfo build) on the
# final binary (main 7838723 code): dq/dk + WY at B4·T4096·H16·K128 (after the bf16 gradient
# stores), and the K = 256 split state pass at B4·T4096·H6·K256·V512 (11 % behind FLA's fwd_h).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache GDN_NVRTC_LINEINFO=1
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu | head -1)
timeout 120 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512 --reps 1 > /dev/null 2>&1
run() {  # name kernel-regex shape
  timeout 200 "$NCU" --clock-control none --set full --import-source no --kernel-name regex:"$2" \
    --launch-skip 0 --launch-count 1 -o /tmp/$1 $N bench kernels --shapes $3 --reps 1 > $O/$1_ncu.log 2>&1
  echo "$1 ncu exit $?"
  timeout 60 "$NCU" -i /tmp/$1.ncu-rep --page details --csv > $O/$1_details.csv 2>&1
  timeout 100 "$NCU" -i /tmp/$1.ncu-rep --page source --csv --print-source sass > $O/$1_sass.csv 2>&1
}
run dqkwy '^dr_dqkwy' 4x4096x16x128x128
run split256 '^dr_state_split' 4x4096x6x256x512
gzip $O/*.csv; ls -la $O
