#!/usr/bin/env bash
# Session 13, call 4: Nsight Compute on the kernels furthest behind FLA's counterparts at
# B4·T4096·H16·K128 (wu, dvloc, fwd_o; the split state pass), details and per-line counters
# (NVRTC -lineinfo): what bounds each.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache GDN_NVRTC_LINEINFO=1
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
S=4x4096x16x128x128
timeout 120 $N bench kernels --shapes $S --reps 3 > /dev/null 2>&1
mkdir -p $O/n
prof() {  # name kernel-regex
  timeout 100 "$NCU" --clock-control none --kernel-name regex:"$2" --launch-skip 3 --launch-count 1 \
    --set full --section SourceCounters -o $O/n/$1 \
    $N bench kernels --shapes $S --reps 3 > $O/n/$1_run.log 2>&1
  echo "$1: exit $?"
  timeout 60 "$NCU" --import $O/n/$1.ncu-rep --page details --csv > $O/n/$1_details.csv 2>&1
  timeout 60 "$NCU" --import $O/n/$1.ncu-rep --page source --csv --print-source cuda,sass > $O/n/$1_source.csv 2>&1
  rm -f $O/n/$1.ncu-rep
}
prof wu '^dr_wu_k128'
prof dvloc '^dr_dvloc_k128'
prof fwdo '^dr_fwd_o_k128'
prof split '^dr_state_split_k128'
prof prep '^dr_prep_k128'
tar czf $O/ncu.tgz -C $O n && rm -rf $O/n
ls -la $O
