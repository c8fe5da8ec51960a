#!/usr/bin/env bash
# Builds and runs scripts/cp_async_probe.cu on the GPU machine: each way of loading a chunk tile
# timed alone, then Nsight Compute's L2 and DRAM counters for each (what it reads against the
# 67 MB x 2 it needs). Results under $OUT/cp_probe.
set -u
O=${OUT:-/tmp}/cp_probe; mkdir -p $O
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
timeout 120 $NVCC -O3 -std=c++17 -arch=sm_90a -o /tmp/cp_probe scripts/cp_async_probe.cu > $O/build.log 2>&1 || { cat $O/build.log; exit 1; }
timeout 60 /tmp/cp_probe | tee $O/times.txt
M=dram__bytes_read.sum,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_requests_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum,l1tex__m_xbar2l1tex_read_sectors.sum,gpu__time_duration.sum
for m in 0 1 2 3 4 5 6; do
  echo "== mode $m" >> $O/ncu.txt
  timeout 60 "$NCU" --clock-control none --launch-skip 3 --launch-count 1 --metrics $M /tmp/cp_probe $m 2>&1 | grep -E "probe|dram__|lts__|l1tex__|gpu__" >> $O/ncu.txt
done
cat $O/ncu.txt
