#!/usr/bin/env python3
"""Registers and spills of delta_rule.cu's kernels for sm_90a, from ptxas -v through NVRTC (no GPU
needed): the check that a kernel change still fits before it goes to the GPU machine.

Usage: scripts/ptxas_report.py K [NAME_FILTER] [--sass]   (K = 64, 128 or 256; e.g. `256 state_bwd`)
--sass also prints each matching kernel's SASS instruction mix (static counts by opcode, from the
CUBIN through nvdisasm: NVDISASM, else on PATH; `pip install nvidia-cuda-nvdisasm` has one).
Needs LD_LIBRARY_PATH to hold libnvrtc and its builtins (e.g. /opt/nvcu/nvidia/cu13/lib) and
CUDA_HOME for cuda_bf16.h.
"""
import collections
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile

# The CUDA toolkit (headers, libnvrtc): CUDA_HOME, else where this machine has it.
CUDA_HOME = os.environ.get("CUDA_HOME", "/opt/nvcu/nvidia/cu13")


def load_nvrtc():
    names = ["libnvrtc.so.13", "libnvrtc.so"]
    dirs = ["", os.path.join(CUDA_HOME, "lib")]
    for d in dirs:
        for n in names:
            try:
                return ctypes.CDLL(os.path.join(d, n) if d else n)
            except OSError:
                pass
    sys.exit("ptxas_report: libnvrtc not found (set LD_LIBRARY_PATH or CUDA_HOME)")


def sass_mix(nv, prog, filt):
    """Static SASS opcode counts of each kernel whose name contains filt, most frequent first."""
    tool = os.environ.get("NVDISASM") or shutil.which("nvdisasm")
    if not tool:
        sys.exit("ptxas_report: --sass needs nvdisasm (set NVDISASM or put it on PATH)")
    size = ctypes.c_size_t()
    nv.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetCUBIN(prog, cubin)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin.raw)
        f.flush()
        text = subprocess.run([tool, "-c", f.name], check=True, capture_output=True, text=True).stdout
    counts, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\.text\.(\w+):", line)
        if m:
            name = m.group(1) if filt in m.group(1) else None
            if name:
                counts[name] = collections.Counter()
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m and name:
            counts[name][m.group(1)] += 1
    for name, c in counts.items():
        mix = ", ".join(f"{op} {n}" for op, n in c.most_common(14))
        print(f"{name}: {sum(c.values())} instructions: {mix}")


def main():
    args = [a for a in sys.argv[1:] if a != "--sass"]
    if not args or args[0] not in ("64", "128", "256"):
        sys.exit(__doc__)
    k, filt = args[0], (args[1] if len(args) > 1 else "")
    here = os.path.dirname(os.path.abspath(__file__))
    src = open(os.path.join(here, "../src/cuda/kernels/delta_rule.cu")).read()
    src = f"#define DR_ONLY_K {k}\n" + src
    nv = load_nvrtc()
    prog = ctypes.c_void_p()
    rc = nv.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"delta_rule.cu", 0, None, None)
    assert rc == 0, rc
    opts = [b"--std=c++17", b"-default-device", b"-arch=sm_90a", b"--ptxas-options=-v",
            f"-I{CUDA_HOME}/include".encode()]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = nv.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetProgramLog(prog, log)
    text = log.value.decode(errors="replace")
    if rc != 0:
        sys.exit(text)
    # ptxas prints, per function: "Compiling entry function 'X'", then "N bytes stack frame, A
    # bytes spill stores, B bytes spill loads", then "Used R registers, ...".
    name, spill = None, ""
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            spill = f"spill st {m.group(1)} ld {m.group(2)}"
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and name and filt in name:
            print(f"{name:48s} {m.group(1):>4s} regs  {spill}")
            name, spill = None, ""
    if "--sass" in sys.argv:
        sass_mix(nv, prog, filt)


if __name__ == "__main__":
    main()
