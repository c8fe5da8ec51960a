#!/bin/sh
# CPU emulation checks (no GPU): extract a kernel's own text from src/cuda/kernels/delta_rule.cu,
# compile it against emu.h and compare with a reference. dqk: kernel 6; wy: kernel 7; state:
# kernel 2 (all modes and K splits; `run.sh` adds K = 256 when given k256).
set -e
here=$(cd "$(dirname "$0")" && pwd)
cu=${DR_CU:-$here/../../src/cuda/kernels/delta_rule.cu}
out=${TMPDIR:-/tmp}/gdn_cuda_emu
mkdir -p "$out" "$out/state"
python3 "$here/extract.py" "$cu" 'struct Carve' ' b2f(' \
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
{
  grep '^constexpr int MODE_FUSED' "$cu"
  python3 "$here/extract.py" "$cu" 'struct Carve' ' load_bf16_async(' ' warp_sum(' \
    ' pack_bf2(float' ' bf_lo(' ' bf_hi(' ' store_tile_t(' 'struct StateFwdSm' ' dh_off(' \
    ' p_rows(' 'void state_fwd_impl'
} | sed 's/extern __shared__ __align__(128) char smem\[\];/char* smem = g_smem;/' \
  >"$out/state/extracted.h"
g++ -std=c++20 -O2 -g -fno-strict-aliasing -pthread -I"$out/state" -I"$here" \
  "$here/state_emu.cpp" -o "$out/state_emu"
"$out/state_emu" "$@"
