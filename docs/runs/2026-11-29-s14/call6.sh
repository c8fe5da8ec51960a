#!/usr/bin/env bash
# Session 14, call 6: Nsight Compute on the reverse state pass (the largest gap to FLA's
# counterpart at B4·T4096·H16: 0.275 against 0.230 ms) — details and per-line counters.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache GDN_NVRTC_LINEINFO=1
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
S=4x4096x16x128x128
timeout 120 $N bench kernels --shapes $S --reps 3 > /dev/null 2>&1
mkdir -p $O/n
timeout 150 "$NCU" --clock-control none --kernel-name regex:'^dr_state_bwd_k128' --launch-skip 3 --launch-count 1 \
  --set full --section SourceCounters -o $O/n/sbwd $N bench kernels --shapes $S --reps 3 > $O/n/sbwd_run.log 2>&1
echo "ncu exit $?"
timeout 60 "$NCU" --import $O/n/sbwd.ncu-rep --page details --csv > $O/n/sbwd_details.csv 2>&1
timeout 60 "$NCU" --import $O/n/sbwd.ncu-rep --page source --csv --print-source cuda,sass > $O/n/sbwd_source.csv 2>&1
rm -f $O/n/sbwd.ncu-rep
tar czf $O/ncu.tgz -C $O n && rm -rf $O/n
ls -la $O
