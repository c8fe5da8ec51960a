#!/usr/bin/env bash
# Session 26, call 2: allow_neg_eigval (β = 2·sigmoid(b)). The full selftest (new rows: gates and
# decode under allow_neg_eigval), the model and GPU-decode selftests (a third configuration under
# allow_neg_eigval), and beside them FLA interop and gradient parity (new FLA models under
# allow_neg_eigval) with the FLA 0.6.0 wheels.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-neg
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 200 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
(
  export GDN_BIN=$N GDN_CACHE_DIR=/tmp/gdn_cache_py
  timeout 280 bash scripts/fla_interop.sh > $O/interop.log 2>&1; echo "interop exit $?" >> $O/interop.log
  timeout 400 bash scripts/grad_parity.sh > $O/grad_parity.log 2>&1; echo "grad parity exit $?" >> $O/grad_parity.log
) &
timeout 300 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO \|neg_eigval" $O/selftest.log | head -20
ts selftest
timeout 200 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "model selftest exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log; grep "FAIL\| NO " $O/model_selftest.log | head; grep -c "neg_eigval" $O/model_selftest.log
ts "model selftest"
wait
grep "^{" $O/interop.log; tail -1 $O/interop.log
grep "^{\|exit" $O/grad_parity.log | tail -12
ts end
