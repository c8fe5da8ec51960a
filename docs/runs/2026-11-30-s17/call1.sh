#!/usr/bin/env bash
# Session 17, call 1: Nsight Compute on the backward's dqk + wy kernel (and wu, the recompute)
# at B4·T4096·H16·K128 and B4·T4096·H6·K256·V512: time, throughput, stall reasons.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
echo "ncu=$NCU"; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv
timeout 150 $N bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512 --breakdown --reps 5 > $O/warm.log 2>&1
for s in 4x4096x16x128x128 4x4096x6x256x512; do
timeout 200 "$NCU" --clock-control none --kernel-name regex:'^dr_(dqkwy|wu|state_split)' \
  --launch-skip 6 --launch-count 3 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SchedulerStats \
  --section InstructionStats --csv --page details \
  $N bench kernels --shapes $s --reps 3 > $O/ncu_$s.csv 2> $O/ncu_$s.err
echo "ncu $s: exit $?, $(wc -l < $O/ncu_$s.csv) lines"
done
grep "bwd: \|fwd: " $O/warm.log
