#!/usr/bin/env bash
# Session 20, call 7: Nsight Compute (full set, per-SASS stall samples, lineinfo) on the final
# binary: the warp-specialised forward (its output warps now read P) and the warp-specialised
# reverse pass, both at B4·T4096·H16·K128 — what bounds them now.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache GDN_NVRTC_LINEINFO=1
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final2
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu | head -1)
timeout 120 $N bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1
run() {  # name kernel-regex shape
  timeout 200 "$NCU" --clock-control none --set full --import-source no --kernel-name regex:"$2" \
    --launch-skip 0 --launch-count 1 -o /tmp/$1 $N bench kernels --shapes $3 --reps 1 > $O/$1_ncu.log 2>&1
  echo "$1 ncu exit $?"
  timeout 60 "$NCU" -i /tmp/$1.ncu-rep --page details --csv > $O/$1_details.csv 2>&1
  timeout 100 "$NCU" -i /tmp/$1.ncu-rep --page source --csv --print-source sass > $O/$1_sass.csv 2>&1
}
run ws_fwd '^dr_state_ws' 4x4096x16x128x128
run ws_bwd '^dr_state_bwd_ws' 4x4096x16x128x128
gzip $O/*.csv; ls -la $O
