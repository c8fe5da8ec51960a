#!/usr/bin/env bash
# Hardware-counter profile of the delta-rule kernels on the GPU machine (Firecracker machines
# only: see the device library's KINDS.md), and a memory check of the delta-rule selftest.
# Writes $OUT/ncu_delta_rule.csv (per kernel: time, SM and memory throughput, occupancy, registers,
# shared memory, warp stall reasons) and $OUT/memcheck.log.
# Usage: GDN_BIN=path/to/gdn OUT=folder bash scripts/device_ncu.sh
set -u
. "$(dirname "$0")/device_env.sh"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
# Warm the NVRTC cache outside the profiler.
timeout 120 "$B" bench kernels --shapes quick --reps 5 > /dev/null 2>&1
# One forward+backward of the first bench shape: every delta-rule kernel launched a few times.
timeout 300 "$NCU" --clock-control none --kernel-name regex:'^dr_' --launch-count 40 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --csv --page details \
  "$B" bench kernels --shapes quick --reps 5 > "$OUT/ncu_delta_rule.csv" 2> "$OUT/ncu.err"
echo "ncu: exit $?, $(wc -l < "$OUT/ncu_delta_rule.csv") lines"
timeout 240 compute-sanitizer --tool memcheck "$B" selftest --device cuda --filter delta \
  > "$OUT/memcheck.log" 2>&1
echo "memcheck: exit $?; $(grep -c 'Invalid' "$OUT/memcheck.log") invalid accesses"
tail -3 "$OUT/memcheck.log"
