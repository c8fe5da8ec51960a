#!/usr/bin/env bash
# Session 22, call 4: B4·T4096·H16·K128 (no segments) alternating gdn-main (2710dcf), gdn-seg2
# (f60bc19) and gdn-seg3 (the reverse pass sequence-parallel too) three times; K = 256
# at B1·T16384·H6 with segments forced (GDN_DR_SEG=64, 32); the README bench of seg3.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; M=target/device/gdn-main; S2=target/device/gdn-seg2; S3=target/device/gdn-seg3
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $M $S2 $S3; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
{
for r in 1 2 3; do
  for b in $M $S2 $S3; do
    ts "$b run $r"; timeout 100 $b bench kernels --shapes 4x4096x16x128x128,8x2048x16x128x128 2>&1 | grep "^| [48] | [24]0[49][68] | 16 |"
  done
done
for L in 0 64 32; do
  ts "seg3 K256 B1 GDN_DR_SEG=$L"; GDN_DR_SEG=$L timeout 100 $S3 bench kernels --shapes 1x16384x6x256x512 --breakdown 2>&1 | grep "^| 1 | 16384\|^breakdown\|^| [fb]wd"
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts "README bench"; timeout 200 $S3 bench kernels > $O/bench.log 2>&1; echo "bench exit $?" >> $O/bench.log
grep "^| [0-9]\|exit\|TB/s" $O/bench.log | head -40; ts end
