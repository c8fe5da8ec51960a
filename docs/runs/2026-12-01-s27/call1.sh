#!/usr/bin/env bash
# Session 27, call 1: GVA read natively by the chunk kernels (q/k head h / group, no repeat). The
# full selftest (new delta-rule cases with group 2 and 3, at K = 64, 128, 256), the model and
# GPU-decode selftests (one configuration GVA), gradient parity of a GVA FLA model beside them;
# then base (main) against gva at the three target shapes (no GVA: must not move) and, for gva,
# GVA shapes beside the same shapes with every head its own q/k (HV heads).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-gva
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
W=1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64
GDN_CACHE_DIR=/tmp/gdn_cache_base timeout 250 target/device/gdn-base bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
timeout 250 $N bench kernels --shapes $W --reps 1 > /dev/null 2>&1
wait
ts compiled
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
  timeout 300 python3 scripts/grad_parity.py compare $W/fla-gva $W/cpu.safetensors --cuda $W/cuda.safetensors --device cuda --name fla-random-gva
  echo "gva parity done"
) > $O/grad_parity_gva.log 2>&1 &
timeout 300 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO \|ERROR" $O/selftest.log | head -20; grep -c "GVA" $O/selftest.log
ts selftest
timeout 240 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "model selftest exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log; grep "FAIL\| NO " $O/model_selftest.log | head; grep -c "GVA" $O/model_selftest.log
ts "model selftest"
wait
grep "^{\|done\|Error\|error" $O/grad_parity_gva.log | cut -c1-600
ts parity
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512
G=4x4096x16x128x128x32,4x4096x32x128x128,1x16384x16x128x128x32,1x16384x32x128x128,4x4096x2x256x512x6
{
for r in 1 2; do
  ts "base run $r"; GDN_CACHE_DIR=/tmp/gdn_cache_base timeout 120 target/device/gdn-base bench kernels --shapes $S 2>&1 | grep "^| [0-9]"
  ts "gva run $r"; timeout 120 $N bench kernels --shapes $S 2>&1 | grep "^| [0-9]"
done
ts "gva GVA shapes"; timeout 200 $N bench kernels --shapes $G --out $O/gva_bench 2>&1 | grep "^| [0-9]"
ts "gva GVA breakdown"; timeout 120 $N bench kernels --shapes 4x4096x16x128x128x32,4x4096x32x128x128 --breakdown 2>&1 | grep "^breakdown\|^| [a-z]"
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
