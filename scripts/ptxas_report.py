#!/usr/bin/env python3
"""Registers and spills of delta_rule.cu's kernels for sm_90a, from ptxas -v through NVRTC (no GPU
needed): the check that a kernel change still fits before it goes to the GPU machine.

Usage: scripts/ptxas_report.py K [NAME_FILTER] [--sass]   (K = 64, 128 or 256; e.g. `256 state_bwd`)
--sass also prints each matching kernel's SASS instruction mix (static counts by opcode, from the
CUBIN through nvdisasm: NVDISASM, else on PATH; `pip install nvidia-cuda-nvdisasm` has one).
Needs LD_LIBRARY_PATH to hold libnvrtc and its builtins (e.g. /opt/nvcu/nvidia/cu13/lib) and
CUDA_HOME for cuda_bf16.h.

scripts/ptxas_report.py --check FILE   (CI) compiles every K and fails if any kernel spills more
                                        bytes (stores or loads) than FILE records, or is not in it
scripts/ptxas_report.py --record FILE  writes every kernel's spills to FILE
A change that makes a kernel spill slows it even where the new code never runs (session 31: a
wait compiled into every state pass behind a run-time check made them 4-15 % slower), so the
spills are recorded, and a change that adds some must record them on purpose.
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


def compile_k(nv, k):
    """Compiles delta_rule.cu for K = k (sm_90a); returns the program and ptxas's log."""
    here = os.path.dirname(os.path.abspath(__file__))
    src = open(os.path.join(here, "../src/cuda/kernels/delta_rule.cu")).read()
    src = f"#define DR_ONLY_K {k}\n" + src
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
    return prog, text


def kernels(text):
    """(name, registers, spill store bytes, spill load bytes) per kernel of a ptxas log."""
    # ptxas prints, per function: "Compiling entry function 'X'", then "N bytes stack frame, A
    # bytes spill stores, B bytes spill loads", then "Used R registers, ...".
    out, name, spill = [], None, (0, 0)
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            spill = (int(m.group(1)), int(m.group(2)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            out.append((name, int(m.group(1)), *spill))
            name, spill = None, (0, 0)
    return out


def nvrtc_version(nv):
    major, minor = ctypes.c_int(), ctypes.c_int()
    nv.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"NVRTC {major.value}.{minor.value}"


def spills_of_all(nv):
    """Every kernel's (spill stores, spill loads) over the three modules."""
    table = {}
    for k in ("64", "128", "256"):
        for name, _, st, ld in kernels(compile_k(nv, k)[1]):
            table[name] = (st, ld)
    return table


def check(nv, path):
    recorded = {}
    for line in open(path):
        if line.strip() and not line.startswith("#"):
            name, st, ld = line.split()
            recorded[name] = (int(st), int(ld))
    now = spills_of_all(nv)
    bad = []
    for name, (st, ld) in sorted(now.items()):
        if name not in recorded:
            bad.append(f"{name}: not in {path} (spills st {st} ld {ld}); record it with --record")
        elif st > recorded[name][0] or ld > recorded[name][1]:
            r = recorded[name]
            bad.append(f"{name}: spills st {st} ld {ld}, recorded st {r[0]} ld {r[1]}")
    bad += [f"{n}: in {path} but no longer compiled; record again" for n in recorded if n not in now]
    if bad:
        sys.exit(f"ptxas_report ({nvrtc_version(nv)}): kernel spills changed:\n  "
                 + "\n  ".join(bad))
    print(f"ptxas_report: {len(now)} kernels, none spills more than {path} records")


def main():
    nv = load_nvrtc()
    for flag in ("--check", "--record"):
        if flag in sys.argv:
            i = sys.argv.index(flag)
            if i + 1 >= len(sys.argv):
                sys.exit(__doc__)
            path = sys.argv[i + 1]
            if flag == "--check":
                return check(nv, path)
            with open(path, "w") as f:
                f.write("# Spill bytes (stores, loads) of every delta_rule.cu kernel for sm_90a, "
                        f"{nvrtc_version(nv)}: scripts/ptxas_report.py --record\n")
                for name, (st, ld) in sorted(spills_of_all(nv).items()):
                    f.write(f"{name} {st} {ld}\n")
            return
    args = [a for a in sys.argv[1:] if a != "--sass"]
    if not args or args[0] not in ("64", "128", "256"):
        sys.exit(__doc__)
    k, filt = args[0], (args[1] if len(args) > 1 else "")
    prog, text = compile_k(nv, k)
    for name, regs, st, ld in kernels(text):
        if filt in name:
            print(f"{name:48s} {regs:>4d} regs  spill st {st} ld {ld}")
    if "--sass" in sys.argv:
        sass_mix(nv, prog, filt)


if __name__ == "__main__":
    main()
