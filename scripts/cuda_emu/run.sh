#!/bin/sh
# CPU emulation checks (no GPU): extract a kernel's own text from src/cuda/kernels/delta_rule.cu,
# compile it against emu.h and compare with a reference. wu: kernel 1b against kernel 1 (bit for
# bit); fwd_o: kernel 3; dqk: kernel 6; wy: kernel 7; state: kernel 2 (all modes and K splits;
# `run.sh k256` adds K = 256); state_bwd: kernels 4 and 5 (K splits, warp-specialised).
set -e
here=$(cd "$(dirname "$0")" && pwd)
cu=${DR_CU:-$here/../../src/cuda/kernels/delta_rule.cu}
out=${TMPDIR:-/tmp}/gdn_cuda_emu
mkdir -p "$out/chunk" "$out/fwd_o" "$out/state" "$out/state_bwd" "$out/prep"
common="'void store_state' 'struct Carve' ' b2f(' ' f2b(' ' load_bf16_async(' 'struct Pieces' 'void for_own_pieces' 'void load_rows_async' ' pack_bf2(float' \
  ' bf_lo(' ' bf_hi(' ' warp_sum(' ' store_tile_t(' 'void stage_tiles_t(' 'void store_tiles_staged(' \
  ' load_tiles_t(' 'struct QkHead' ' qk_head(' ' wg_desc('"
# extract DIR NAME...: the common helpers and the named items into $out/DIR/extracted.h.
extract() {
  dir=$1
  shift
  {
    grep '^constexpr int MODE_FUSED\|^constexpr int TWLD\|^constexpr int ZLD\|^constexpr int REC_GL\|^constexpr unsigned NEG_BF2\|^template <int K> constexpr bool STATE_VIA_L1\|^constexpr int BAR_STATE\|^constexpr int LEAD_BATCH' "$cu"
    eval python3 "$here/extract.py" "$cu" "$common" '"$@"'
  } | sed 's/extern __shared__ __align__(128) char smem\[\];/char* smem = g_smem;/' \
    >"$out/$dir/extracted.h"
}
extract prep ' pack8(' ' rows_from(' ' p_frags(' ' m_elem(' ' kk_m_lower(' ' kk_m_p_rows(' ' tf32_split(' ' mma3_tf32(' ' store_acc_f32(' 'void chunk_gates' 'void write_rec' ' tb_piece(' ' tw_piece(' 'void ld8_swz' ' tw_at(' \
  'void pair_store' 'void wu_products' 'struct PrepSm' 'void prep_impl' 'struct WuSm' 'void wu_impl'
extract chunk ' tf32r(' 'void pair_store' ' store_grad_rows(' 'void scale_rows_dot' 'struct KTile' 'struct DqkSm' 'void dqk_impl' 'void tt_rows' 'struct WySm' 'void wy_impl'
extract fwd_o 'void quad_transpose' 'void store_rows16' ' rows_from(' ' frags_in(' ' row_frags(' ' p_frags(' ' frags_times(' ' p_times(' ' out_tiles(' \
  'struct FwdOSm' 'void fwd_o_impl'
extract state 'struct SeqChunks' 'struct IntC' 'struct StateFwdSm' 'void state_sync' \
  'void quad_transpose' 'void store_rows16' ' rows_from(' ' frags_in(' ' row_frags(' ' p_frags(' ' p_rows(' ' frags_times(' ' p_times(' ' out_tiles(' ' lead_wait(' 'void ws_output' 'void publish' 'void state_fwd_impl' \
  'struct SegCombineSm' 'void seg_combine_impl'
extract state_bwd 'struct SeqChunks' 'void scale_own_rows' \
  'void state_sync' 'void quad_transpose' 'void store_rows16' ' rows_from(' ' frags_in(' ' row_frags(' ' p_frags(' ' frags_times(' ' p_times(' 'struct DvlocSm' \
  'void dvloc_impl' 'struct StateBwdSm' 'void ws_dvloc' 'void publish' 'void state_bwd_impl' 'struct SegCombineSm' \
  'void seg_combine_impl'
# The builds run in parallel; an old binary is removed first and every build's status checked,
# so a failed build cannot leave a stale emulation to pass in its place.
build() {
  rm -f "$out/$2_emu"
  g++ -std=c++20 -O2 -g -fno-strict-aliasing -pthread -I"$out/$1" -I"$here" "$here/$2_emu.cpp" \
    -o "$out/$2_emu"
}
pids=""
for b in "prep wu" "fwd_o fwd_o" "chunk dqk" "chunk wy" "state state" "state_bwd state_bwd"; do
  # shellcheck disable=SC2086
  build $b &
  pids="$pids $!"
done
for p in $pids; do wait "$p" || { echo "cuda_emu: a build failed" >&2; exit 1; }; done
"$out/wu_emu"
"$out/fwd_o_emu"
"$out/dqk_emu"
"$out/wy_emu"
"$out/state_emu" "$@"
"$out/state_bwd_emu"
