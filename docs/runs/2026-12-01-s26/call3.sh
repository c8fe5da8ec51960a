#!/usr/bin/env bash
# Session 26, call 3: GVA (num_v_heads). The full selftest (new rows: repeat_heads /
# sum_head_groups, GVA decode), the model and GPU-decode selftests (a fourth configuration, GVA),
# FLA interop (a GVA FLA checkpoint loaded by gdn) and gradient parity of a GVA FLA model (CPU
# and CUDA against PyTorch autograd), all beside each other.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-gva
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
timeout 200 $N bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
( GDN_BIN=$N GDN_CACHE_DIR=/tmp/gdn_cache_i timeout 300 bash scripts/fla_interop.sh > $O/interop.log 2>&1; echo "interop exit $?" >> $O/interop.log ) &
(
  export PYTHONPATH=/tmp/site GDN_CACHE_DIR=/tmp/gdn_cache_g
  W=/tmp/gdn-gva-parity; rm -rf $W; mkdir -p $W
  cat src/*.rs src/*/*.rs > $W/corpus.txt
  TOK=$(python3 -c "
b = open('$W/corpus.txt', 'rb').read()
print(';'.join(','.join(map(str, s)) for s in (b[1000:1150], b[5000:5077])))")
  timeout 200 python3 scripts/grad_parity.py make_fla $W/fla-gva --gva
  timeout 120 $N logits --checkpoint $W/fla-gva --tokens "$TOK" --grads --device cpu --out $W/cpu.safetensors
  timeout 120 $N logits --checkpoint $W/fla-gva --tokens "$TOK" --grads --device cuda --out $W/cuda.safetensors
  for plain in "" --plain; do
    timeout 300 python3 scripts/grad_parity.py compare $W/fla-gva $W/cpu.safetensors --cuda $W/cuda.safetensors --device cuda --name fla-random-gva $plain
  done
  echo "gva parity done"
) > $O/grad_parity_gva.log 2>&1 &
timeout 300 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head -20; grep "GVA\|head_groups" $O/selftest.log | head -12
ts selftest
timeout 240 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "model selftest exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log; grep "FAIL\| NO " $O/model_selftest.log | head; grep -c "GVA" $O/model_selftest.log
ts "model selftest"
wait
grep "^{\|exit" $O/interop.log
grep "^{\|done\|Error\|error" $O/grad_parity_gva.log | cut -c1-600
ts end
