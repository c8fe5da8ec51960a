#!/usr/bin/env bash
# Session 13, call 7: cp.async with the L2::128B prefetch hint (new; built with a define, since made
# the only form) against HEAD (s3): kernels
# alternating, the breakdown, and Nsight Compute's L2 sectors of the split pass.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; S=target/device/gdn-s3
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512
{
( $S bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1 ) &
$N bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1
wait
for r in new1:$N s3_1:$S new2:$N s3_2:$S; do
  name=${r%%:*}; bin=${r#*:}
  ts "bench $name"; timeout 100 $bin bench kernels --shapes $SH 2>&1 | grep "^| [0-9]"
done
for r in new:$N s3:$S; do
  name=${r%%:*}; bin=${r#*:}
  ts "breakdown $name"
  timeout 90 $bin bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: \|bwd: "
done
for r in new:$N s3:$S; do
  name=${r%%:*}; bin=${r#*:}
  ts "ncu split $name"
  timeout 100 "$NCU" --clock-control none --kernel-name regex:'^dr_state_split_k128' --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --metrics lts__t_sectors_srcunit_tex_op_read.sum,lts__t_requests_srcunit_tex_op_read.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    $bin bench kernels --shapes 4x4096x16x128x128 --reps 3 2>&1 | grep -E "Duration|Throughput|lts__|dram__|Hit Rate"
done
ts done
} > $O/bench.log 2>&1
