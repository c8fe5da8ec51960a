#!/usr/bin/env bash
# Session 17, call 10 (inline command; nothing under $OUT, output copied from the reply into
# call10_output.log): the final binary's model selftest and the breakdown at the three targets.
export GDN_CACHE_DIR=/tmp/gdn_cache; . scripts/device_env.sh; N=target/device/gdn-base
timeout 90 $N selftest --device cuda --filter model 2>&1 | tail -2
timeout 60 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
