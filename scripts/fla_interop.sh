#!/usr/bin/env bash
# Checkpoints both ways between gdn and FLA (GPU machine; FLA wheels in .whl/). Prints JSON lines.
set -u
B=${GDN_BIN:-./target/release/gdn}
W=/tmp/gdn-interop
rm -rf "$W" && mkdir -p "$W"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site
cat src/*.rs src/*/*.rs > "$W/corpus.txt"
# A sequence longer than one chunk (64) and not a multiple of it.
TOK=$(python3 -c "print(','.join(str((i * 37 + 11) % 256) for i in range(150)))")
# gdn → FLA: a byte-level model trained briefly by gdn.
timeout 300 $B train --data "$W/corpus.txt" --preset small --steps 20 --out "$W/run" --quiet \
  && timeout 60 $B logits --checkpoint "$W/run/checkpoint" --tokens "$TOK" --out "$W/gdn_logits.safetensors" \
  && timeout 300 python3 scripts/fla_interop.py gdn2fla "$W/run/checkpoint" "$W/gdn_logits.safetensors"
# FLA → gdn: random FLA models saved by save_pretrained (β = sigmoid(b); 2·sigmoid(b) under
# allow_neg_eigval; GVA with 4 value heads on 2 q/k heads).
for opt in "" neg gva; do
  D="$W/fla$opt"
  timeout 300 python3 scripts/fla_interop.py make_fla "$D" "$TOK" $opt \
    && timeout 60 $B logits --checkpoint "$D" --tokens "$TOK" --out "$D/gdn_on_fla.safetensors" \
    && timeout 120 python3 scripts/fla_interop.py compare "$D/fla_logits.safetensors" "$D/gdn_on_fla.safetensors"
done
