#!/usr/bin/env bash
# Session 12, call 3: Nsight Compute on the forward's kernels at B4·T4096·H16·K128 (prep, wu, the
# split state pass, fwd_o) and prep / wu at the 1.3B training shape: what bounds each.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
S=4x4096x16x128x128
timeout 120 $N bench kernels --shapes $S,8x4096x6x256x512 --reps 3 > /dev/null 2>&1
prof() {  # name shape kernel-regex
  timeout 100 "$NCU" --clock-control none --kernel-name regex:"$3" --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section SchedulerStats \
    --section InstructionStats --csv --page details \
    $N bench kernels --shapes $2 --reps 3 > $O/ncu_$1.csv 2> $O/ncu_$1.err
  echo "$1: exit $? $(wc -l < $O/ncu_$1.csv) lines"
}
prof prep_b4 $S '^dr_prep_k128'
prof wu_b4 $S '^dr_wu_k128'
prof split_b4 $S '^dr_state_split'
prof fwdo_b4 $S '^dr_fwd_o_k128'
prof prep_k256 8x4096x6x256x512 '^dr_prep_k256'
prof wu_k256 8x4096x6x256x512 '^dr_wu_k256'
