#!/usr/bin/env bash
# Session 11, call 7: ncu warp-state statistics of the reverse pass at B1·T16384 (K split 1×4),
# new against base, to see where the K splits' extra time goes.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; B=target/device/gdn-base
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
S=1x16384x16x128x128
( timeout 120 $B bench kernels --shapes $S --reps 3 > /dev/null 2>&1 ) &
timeout 120 $N bench kernels --shapes $S --reps 3 > /dev/null 2>&1
wait
for r in new:$N base:$B; do
  name=${r%%:*}; bin=${r#*:}
  timeout 100 "$NCU" --clock-control none --kernel-name regex:'^dr_state_bwd' --launch-skip 4 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section InstructionStats --csv --page details \
    $bin bench kernels --shapes $S --reps 3 > $O/ncu_$name.csv 2> $O/ncu_$name.err
  echo "$name: exit $? $(wc -l < $O/ncu_$name.csv) lines"
done
