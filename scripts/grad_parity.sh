#!/usr/bin/env bash
# Logits and gradient parity of gdn (CPU f32 and CUDA) with PyTorch autograd through FLA's
# GatedDeltaNetForCausalLM (naive fp32 rule), on the GPU machine (FLA wheels in .whl/), from the same
# weights and batch: a gdn-trained checkpoint (untied) and random FLA ones (tied; untied with
# allow_neg_eigval; untied with GVA), two sequences of 150 and 77 tokens (varlen). The reference is
# computed twice: with FLA's own Triton fp32 norm / conv / SwiGLU kernels, and all in plain PyTorch
# (--plain). Prints a table per check and JSON lines; exits non-zero when an fp32 check fails or a
# step does not run (the CUDA rows are informative).
# Usage: GDN_BIN=path/to/gdn bash scripts/grad_parity.sh
set -u
B=${GDN_BIN:-./target/release/gdn}
W=/tmp/gdn-grad-parity
rm -rf "$W" && mkdir -p "$W"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}  # where PyTorch runs the reference (cpu: plain PyTorch only)
cat src/*.rs src/*/*.rs > "$W/corpus.txt"
# Two sequences of real bytes, neither a multiple of the chunk (64) long.
TOK=$(python3 -c "
b = open('$W/corpus.txt', 'rb').read()
print(';'.join(','.join(map(str, s)) for s in (b[1000:1150], b[5000:5077])))")
fail=0
step() { # NAME COMMAND...: runs it; a failure prints a JSON line and fails the script
  local name=$1
  shift
  "$@" || { echo "{\"check\": \"$name\", \"ok\": false}"; fail=1; return 1; }
}
check() { # NAME CHECKPOINT
  local name=$1 ckpt=$2 cuda=()
  step "$name: gdn logits --grads --device cpu" timeout 120 "$B" logits --checkpoint "$ckpt" \
    --tokens "$TOK" --grads --device cpu --out "$W/$name-cpu.safetensors" || return
  # The GPU model is informative here: a failure is reported, and the CUDA columns stay empty.
  if timeout 120 "$B" logits --checkpoint "$ckpt" --tokens "$TOK" --grads --device cuda \
    --out "$W/$name-cuda.safetensors"; then
    cuda=(--cuda "$W/$name-cuda.safetensors")
  else
    echo "{\"check\": \"$name: gdn logits --grads --device cuda\", \"ok\": false}"
  fi
  for plain in "" --plain; do
    step "$name: grad_parity.py compare $plain" timeout 600 python3 scripts/grad_parity.py compare \
      "$ckpt" "$W/$name-cpu.safetensors" ${cuda[@]+"${cuda[@]}"} --device "$TORCH_DEVICE" --name "$name" $plain
  done
}
# gdn → FLA: a byte-level model trained briefly by gdn (preset small: untied, 4 layers).
step "gdn train" timeout 300 "$B" train --data "$W/corpus.txt" --preset small --steps 20 \
  --out "$W/run" --quiet && check gdn-small "$W/run/checkpoint"
# FLA → gdn: a random FLA model with tied embeddings, saved by save_pretrained.
step "make_fla" timeout 300 python3 scripts/grad_parity.py make_fla "$W/fla" --tie \
  && check fla-random-tied "$W/fla"
# FLA → gdn under allow_neg_eigval (β = 2·sigmoid(b)).
step "make_fla --neg" timeout 300 python3 scripts/grad_parity.py make_fla "$W/fla-neg" --neg \
  && check fla-random-neg "$W/fla-neg"
# FLA → gdn with GVA (4 value heads on 2 q/k heads).
step "make_fla --gva" timeout 300 python3 scripts/grad_parity.py make_fla "$W/fla-gva" --gva \
  && check fla-random-gva "$W/fla-gva"
echo "{\"check\": \"grad parity (all)\", \"ok\": $([ $fail = 0 ] && echo true || echo false)}"
exit $fail
