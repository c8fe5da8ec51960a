#!/usr/bin/env bash
# Hardware counters of the forward-type state passes at B8·T2048·H16·K128·V128 (`--shapes
# quick`, the split forward forced, 4 column groups), one launch of each kernel named by $KERNELS
# (a regex; default: the split pass): time, throughput, stall reasons, shared-memory and
# tensor-pipe use, as CSV in $OUT/ncu_state.csv. Extra variables (e.g. GDN_DR_KS=2) pass through.
# Usage: GDN_BIN=path/to/gdn OUT=folder bash scripts/device_ncu_state.sh
set -u
. "$(dirname "$0")/device_env.sh"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
KERNELS=${KERNELS:-'^dr_state_split_k128_nw4'}
export GDN_DR_FWD=split GDN_DR_SF_NW=${GDN_DR_SF_NW:-4}
timeout 120 "$B" bench kernels --shapes quick --reps 3 > /dev/null 2>&1  # warm the NVRTC cache
timeout 200 "$NCU" --clock-control none --kernel-name regex:"$KERNELS" --launch-skip 3 \
  --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section InstructionStats \
  --csv --page details "$B" bench kernels --shapes quick --reps 3 > "$OUT/ncu_state.csv" 2> "$OUT/ncu.err"
echo "ncu: exit $?, $(wc -l < "$OUT/ncu_state.csv") lines"
