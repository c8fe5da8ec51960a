#!/usr/bin/env bash
# Hardware counters of the chunked delta-rule kernels at B8·T2048·H16·K128·V128 (the `quick`
# bench shape): per kernel time, throughput, occupancy, registers, shared memory and warp stall
# reasons, as CSV in $OUT/ncu_chunk.csv. Usage: GDN_BIN=path/to/gdn OUT=folder bash scripts/device_ncu_bwd.sh
set -u
. "$(dirname "$0")/device_env.sh"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
timeout 120 "$B" bench kernels --shapes quick --reps 5 > /dev/null 2>&1  # warm the NVRTC cache
timeout 240 "$NCU" --clock-control none --kernel-name regex:'^dr_(prep|wy|dqk|dvloc|state)' \
  --launch-skip 20 --launch-count 14 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --csv --page details \
  "$B" bench kernels --shapes quick --reps 5 > "$OUT/ncu_chunk.csv" 2> "$OUT/ncu.err"
echo "ncu: exit $?, $(wc -l < "$OUT/ncu_chunk.csv") lines"
