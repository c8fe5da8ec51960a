#!/bin/sh
# CPU emulation checks of the dqk (6) and wy (7) kernels (no GPU): extracts the kernels' own text
# from src/cuda/kernels/delta_rule.cu, compiles it against emu.h and compares with references.
set -e
here=$(cd "$(dirname "$0")" && pwd)
out=${TMPDIR:-/tmp}/gdn_cuda_emu
mkdir -p "$out"
python3 "$here/extract.py" "${DR_CU:-$here/../../src/cuda/kernels/delta_rule.cu}" 'struct Carve' ' b2f(' \
  ' f2b(' ' load_bf16_async(' ' load_f32_async(' ' warp_sum(' ' pack_bf2(float' ' bf_lo(' \
  ' bf_hi(' ' tf32r(' 'struct DqkSm' 'void dqk_impl' 'struct WySm' 'void wy_impl' |
  sed 's/extern __shared__ __align__(128) char smem\[\];/char* smem = g_smem;/' >"$out/extracted.h"
for k in dqk wy; do
  g++ -std=c++20 -O2 -g -fno-strict-aliasing -pthread -I"$out" -I"$here" "$here/${k}_emu.cpp" \
    -o "$out/${k}_emu" &
done
wait
"$out/dqk_emu"
"$out/wy_emu"
