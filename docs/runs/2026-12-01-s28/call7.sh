#!/usr/bin/env bash
# Session 28, call 7: the final binary after stage_tiles_t became one helper (padded rows and
# core matrices). Delta-rule selftest (the bitwise warp-specialised row included) and the five
# README chunk shapes.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final2
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 250 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 250 $N selftest --device cuda --filter delta_rule > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO \|rror" $O/selftest.log | head -10
ts selftest
timeout 150 $N bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512 2>&1 | grep "^| [0-9]" | head -5
ts end
