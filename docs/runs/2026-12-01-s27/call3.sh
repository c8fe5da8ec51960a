#!/usr/bin/env bash
# Session 27, call 3: the final binary. Model + GPU-decode selftests (one configuration GVA); a
# small GVA model trained and decoded on the GPU; training steps of a 1.3B-class GVA model (16 q/k
# heads, 32 value heads, K = V = 128; `bench train --config`) beside the same with 32 plain heads,
# and FLA's 1.3B preset (no GVA: must not move); then PyTorch's bf16 and FP8 matmul rates on the
# 1.3B step's GEMM shapes (what FP8 matmuls could give the step).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final; D=docs/runs/2026-12-01-s27
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 240 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "model selftest exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log; grep "FAIL\| NO " $O/model_selftest.log | head; grep -c "GVA" $O/model_selftest.log
ts "model selftest"
cat src/*.rs src/*/*.rs > /tmp/corpus.txt
timeout 150 $N train --data /tmp/corpus.txt --config $D/gva_small.json --steps 200 --device cuda --out /tmp/r-gva > $O/train_gva_small.log 2>&1; echo "exit $?" >> $O/train_gva_small.log
tail -3 $O/train_gva_small.log
timeout 60 $N generate --checkpoint /tmp/r-gva/checkpoint --prompt "fn main" --max-tokens 60 --device cuda > $O/generate_gva.log 2>&1; echo "exit $?" >> $O/generate_gva.log
tail -3 $O/generate_gva.log
ts "small GVA"
for c in gva_1b plain32_1b; do
  timeout 200 $N bench train --config $D/$c.json --save auto --memory-limit 68.9 --out $O/train_$c > $O/train_$c.log 2>&1; echo "exit $?" >> $O/train_$c.log
  grep -v "^\s*$" $O/train_$c.log | tail -2
  ts "$c step"
done
timeout 200 $N bench train --save auto --memory-limit 68.9 --out $O/train_fla13 > $O/train_fla13.log 2>&1
grep -v "^\s*$" $O/train_fla13.log | tail -2
ts "1.3B step"
OUT=$O timeout 200 python3 scripts/torch_gemm_rates.py --fp8 > $O/gemm_rates.log 2>&1; echo "exit $?" >> $O/gemm_rates.log
cat $O/gemm_rates.log | tail -22
ts end
