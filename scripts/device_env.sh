# Sourced by the scripts/device_*.sh: the binary ($B, from GDN_BIN), the output folder ($OUT,
# created) and the CUDA toolkit on the GPU machine (NVRTC needs its headers and libraries).
B=$(realpath -m "${GDN_BIN:-./target/release/gdn}")
OUT=${OUT:-/tmp/gdn-out}
mkdir -p "$OUT"
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-13 "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")")"; do
    if [ -f "$c/include/cuda_bf16.h" ]; then export CUDA_HOME=$c; break; fi
  done
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
for l in "$CUDA_HOME/lib64" "$CUDA_HOME/targets/x86_64-linux/lib" /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [ -d "$l" ] && export LD_LIBRARY_PATH="$l${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
