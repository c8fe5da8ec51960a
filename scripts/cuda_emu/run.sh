#!/bin/sh
# CPU emulation checks of the dqk (6), wy (7) and reverse state pass (5) kernels (no GPU):
# extracts the kernels' own text from src/cuda/kernels/delta_rule.cu, compiles it against emu.h
# and compares with references.
set -e
here=$(cd "$(dirname "$0")" && pwd)
out=${TMPDIR:-/tmp}/gdn_cuda_emu
cu=${DR_CU:-$here/../../src/cuda/kernels/delta_rule.cu}
mkdir -p "$out/chunk" "$out/state_bwd"
common="'struct Carve' ' b2f(' ' f2b(' ' load_bf16_async(' ' load_f32_async(' ' pack_bf2(float' \
  ' bf_lo(' ' bf_hi('"
extract() {
  dir=$1
  shift
  eval python3 "$here/extract.py" "$cu" "$common" '"$@"' |
    sed 's/extern __shared__ __align__(128) char smem\[\];/char* smem = g_smem;/' >"$out/$dir/extracted.h"
}
extract chunk ' warp_sum(' ' tf32r(' 'struct DqkSm' 'void dqk_impl' 'struct WySm' 'void wy_impl'
extract state_bwd 'void for_own_pieces' 'void load_rows_async' 'void store_tile_t' \
  'void scale_own_rows' 'struct StateBwdSm' 'void state_bwd_impl'
build() {
  g++ -std=c++20 -O2 -g -fno-strict-aliasing -pthread -I"$out/$1" -I"$here" "$here/$2_emu.cpp" \
    -o "$out/$2_emu"
}
build chunk dqk &
build chunk wy &
build state_bwd state_bwd &
wait
"$out/dqk_emu"
"$out/wy_emu"
"$out/state_bwd_emu"
