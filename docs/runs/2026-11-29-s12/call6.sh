#!/usr/bin/env bash
# Session 12, call 6: Nsight Compute's per-instruction counters of prep (kernel 1) at B4·T4096·H16
# (NVRTC with -lineinfo): which instructions make its shared-memory wavefronts and bank conflicts.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache GDN_NVRTC_LINEINFO=1
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
S=4x4096x16x128x128
timeout 100 $N bench kernels --shapes $S --reps 3 > /dev/null 2>&1
timeout 100 "$NCU" --clock-control none --kernel-name regex:'^dr_prep_k128' --launch-skip 3 --launch-count 1 \
  --section SourceCounters --section MemoryWorkloadAnalysis_Tables -o $O/prep \
  $N bench kernels --shapes $S --reps 3 > $O/ncu_run.log 2>&1
echo "ncu exit $?"
for p in sass cuda,sass; do
  timeout 60 "$NCU" --import $O/prep.ncu-rep --page source --csv --print-source $p > $O/prep_source_${p%%,*}.csv 2> $O/prep_source_${p%%,*}.err
  echo "source $p: exit $? $(wc -l < $O/prep_source_${p%%,*}.csv) lines"
done
timeout 60 "$NCU" --import $O/prep.ncu-rep --page details --csv > $O/prep_details.csv 2>&1
gzip -9 $O/*.csv
