#!/usr/bin/env python3
"""Nsight Compute's per-instruction stall samples of one delta_rule kernel, summed per source line
of src/cuda/kernels/delta_rule.cu (no GPU needed here).

On the GPU machine: run gdn with GDN_NVRTC_LINEINFO=1 under `ncu --set full --import-source no -o r`,
then `ncu -i r.ncu-rep --page source --csv --print-source sass > sass.csv` (docs/runs/2026-11-30-s17,
call 7). Here: this script compiles the same source for sm_90a with -lineinfo through NVRTC, reads
the inlining chains from nvdisasm -gi and charges each SASS address's samples to the innermost
line of the chain that lies between FIRST and LAST (the function bodies of interest; helpers
inlined into them count at their call site), else to the innermost line.

Usage: scripts/ncu_lines.py K KERNEL SASS_CSV FIRST LAST [TOP] [--inst]
  e.g. scripts/ncu_lines.py 128 dr_dqkwy_k128 call7_sass.csv.gz 2340 3200 40
--inst ranks the lines by executed warp instructions (an issue-bound kernel's budget) and names
their most executed opcodes, instead of by stall samples.
SASS_CSV may hold several kernels (one "Kernel Name" block each) and may be gzipped. The SASS must
be the one the GPU ran: the same delta_rule.cu and NVRTC 13.0 (the script checks every opcode).
Needs LD_LIBRARY_PATH with libnvrtc, CUDA_HOME for the headers, and nvdisasm (NVDISASM or PATH).
"""
import collections
import csv
import ctypes
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile

CUDA_HOME = os.environ.get("CUDA_HOME", "/opt/nvcu/nvidia/cu13")
HERE = os.path.dirname(os.path.abspath(__file__))
CU = os.path.join(HERE, "../src/cuda/kernels/delta_rule.cu")


def cubin(k):
    """delta_rule.cu for DR_ONLY_K = k, compiled with -lineinfo (line 1 is the #define)."""
    nv = ctypes.CDLL("libnvrtc.so.13")
    src = f"#define DR_ONLY_K {k}\n" + open(CU).read()
    prog = ctypes.c_void_p()
    assert nv.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"delta_rule.cu", 0, None, None) == 0
    opts = [b"--std=c++17", b"-default-device", b"-arch=sm_90a", b"-lineinfo",
            f"-I{CUDA_HOME}/include".encode()]
    if nv.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts)) != 0:
        sys.exit("ncu_lines: NVRTC failed")
    size = ctypes.c_size_t()
    nv.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetCUBIN(prog, buf)
    return buf.raw


def lines_of(kernel, k, first, last):
    """{SASS offset: (opcode text, source line)} of `kernel`'s section."""
    tool = os.environ.get("NVDISASM") or shutil.which("nvdisasm")
    if not tool:
        sys.exit("ncu_lines: needs nvdisasm (NVDISASM or PATH)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin(k))
        f.flush()
        text = subprocess.run([tool, "-gi", "-c", f.name], check=True, capture_output=True,
                              text=True).stdout
    out, chain, fresh, inside = {}, [], True, False
    for line in text.splitlines():
        if line.startswith(".text."):
            inside = line == f".text.{kernel}:"
            continue
        if not inside:
            continue
        m = re.search(r'//## File "[^"]+", line (\d+)', line)
        if m:
            if fresh:
                chain, fresh = [], False
            chain.append(int(m.group(1)) - 1)  # the program's line 1 is the #define
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            fresh = True
            body = [x for x in chain if first <= x <= last]
            out[int(m.group(1), 16)] = (m.group(2).strip(), body[0] if body else
                                        (chain[0] if chain else -1))
    if not out:
        sys.exit(f"ncu_lines: no section .text.{kernel} in the CUBIN")
    return out


def blocks(path):
    """The CSV's kernel blocks: (kernel name, header, rows)."""
    opener = gzip.open if path.endswith(".gz") else open
    rows = list(csv.reader(opener(path, "rt")))
    i, res = 0, []
    while i < len(rows):
        if rows[i][:1] == ["Kernel Name"]:
            j = i + 2
            while j < len(rows) and rows[j][:1] != ["Kernel Name"]:
                j += 1
            res.append((rows[i][1], rows[i + 1], rows[i + 2:j]))
            i = j
        else:
            i += 1
    return res


def main():
    by_inst = "--inst" in sys.argv
    argv = [a for a in sys.argv if a != "--inst"]
    if len(argv) < 6:
        sys.exit(__doc__)
    k, kernel, path, first, last = argv[1], argv[2], argv[3], int(argv[4]), int(argv[5])
    top = int(argv[6]) if len(argv) > 6 else 40
    found = [b for b in blocks(path) if b[0] == kernel]
    if not found:
        sys.exit(f"ncu_lines: no block for {kernel} in {path}")
    hdr, data = found[0][1], found[0][2]
    loc = lines_of(kernel, k, first, last)
    ia, isrc = hdr.index("Address"), hdr.index("Source")
    iall = hdr.index("Warp Stall Sampling (All Samples)")
    iexe = hdr.index("Instructions Executed")
    stalls = [i for i, h in enumerate(hdr) if h.startswith("stall_") and "Not Issued" not in h]
    base = int(data[0][ia], 16)
    per = collections.defaultdict(collections.Counter)
    for r in data:
        off = int(r[ia], 16) - base
        words = r[isrc].split()
        op = words[1] if words[0].startswith("@") else words[0]
        if off not in loc or op.split(".")[0] not in loc[off][0]:
            sys.exit(f"ncu_lines: SASS differs at +{off:#x} ({op}): not the binary's source")
        line = loc[off][1]
        if by_inst:
            n = int(r[iexe] or 0)
            per[line]["ALL"] += n
            per[line][op.split(".")[0]] += n
            continue
        per[line]["ALL"] += int(r[iall] or 0)
        for i in stalls:
            per[line][hdr[i][6:]] += int(r[i] or 0)
    src = open(CU).read().splitlines()
    total = sum(c["ALL"] for c in per.values())
    unit = "executed warp instructions" if by_inst else "samples"
    print(f"{kernel}: {len(data)} SASS instructions, {total} {unit}")
    for line, c in sorted(per.items(), key=lambda x: -x[1]["ALL"])[:top]:
        why = ", ".join(f"{n} {v}" for n, v in c.most_common(5) if n != "ALL" and v)
        text = src[line - 1].strip()[:64] if line > 0 else "?"
        print(f"{line:5d} {c['ALL']:6d} {100 * c['ALL'] / total:5.1f}%  {text:64s} | {why}")


if __name__ == "__main__":
    main()
