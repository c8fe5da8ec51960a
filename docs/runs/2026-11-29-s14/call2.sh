#!/usr/bin/env bash
# Session 14, call 2: cp16 as cp.async.ca (+ L2::128B, and without the hint) against HEAD's
# cp.async.cg.L2::128B: kernels alternating, the breakdown, and ncu's L2 read sectors of the
# split pass and wu (call 1's probe: .cg reads 1.5x the sectors it needs, .ca exactly them).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; B=target/device/gdn-base; A=target/device/gdn-ca128; C=target/device/gdn-ca
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512
{
( $B bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1 ) &
( $A bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1 ) &
$C bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1
wait
for r in base1:$B ca128_1:$A ca_1:$C base2:$B ca128_2:$A ca_2:$C; do
  name=${r%%:*}; bin=${r#*:}
  ts "bench $name"; timeout 100 $bin bench kernels --shapes $SH 2>&1 | grep "^| [0-9]"
done
for r in base:$B ca128:$A ca:$C; do
  name=${r%%:*}; bin=${r#*:}
  ts "breakdown $name"
  timeout 90 $bin bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: \|bwd: "
done
for r in base:$B ca128:$A; do
  for kn in dr_state_split_k128 dr_wu_k128; do
  name=${r%%:*}; bin=${r#*:}
  ts "ncu $kn $name"
  timeout 100 "$NCU" --clock-control none --kernel-name regex:"^$kn" --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --metrics lts__t_sectors_srcunit_tex_op_read.sum,lts__t_requests_srcunit_tex_op_read.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    $bin bench kernels --shapes 4x4096x16x128x128 --reps 3 2>&1 | grep -E "Duration|Throughput|lts__|dram__"
  done
done
ts "selftest ca128 (delta rule)"
timeout 200 $A selftest --device cuda 2>&1 | tail -4
ts done
} > $O/bench.log 2>&1
cat $O/bench.log | tail -80
