# Sourced by the scripts/device_*.sh: the binary ($B, from GDN_BIN), the output folder ($OUT,
# created) and the CUDA toolkit on the GPU machine (NVRTC needs its headers and libraries).
B=$(realpath "${GDN_BIN:-./target/release/gdn}")
OUT=${OUT:-/tmp/gdn-out}
mkdir -p "$OUT"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export LD_LIBRARY_PATH=$CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}
