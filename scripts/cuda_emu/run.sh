#!/bin/sh
# CPU emulation check of the dqk kernel (no GPU): extracts the kernel's own text from
# src/cuda/kernels/delta_rule.cu, compiles it against emu.h and compares with a reference.
set -e
here=$(cd "$(dirname "$0")" && pwd)
out=${TMPDIR:-/tmp}/gdn_cuda_emu
mkdir -p "$out"
python3 "$here/extract.py" "${DR_CU:-$here/../../src/cuda/kernels/delta_rule.cu}" 'struct Carve' ' b2f(' \
  ' f2b(' ' load_bf16_async(' ' load_f32_async(' ' warp_sum(' ' pack_bf2(float' ' bf_lo(' \
  ' bf_hi(' 'struct DqkSm' 'void dqk_impl' |
  sed 's/extern __shared__ __align__(128) char smem\[\];/char* smem = g_smem;/' >"$out/extracted.h"
g++ -std=c++20 -O2 -g -fno-strict-aliasing -pthread -I"$out" -I"$here" "$here/dqk_emu.cpp" \
  -o "$out/dqk_emu"
"$out/dqk_emu"
