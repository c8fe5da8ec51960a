#!/usr/bin/env python3
"""Extracts named top-level items (with a leading `template <...>` line) from a .cu file, by
brace matching, so that the CPU emulator compiles the kernel's own text. Usage:
extract.py FILE NAME... > out.h, where NAME is a line prefix such as 'struct DqkSm'."""
import sys

src = open(sys.argv[1]).read().split('\n')


def item(prefix):
    for n, line in enumerate(src):
        if line.startswith(prefix) or (line.startswith('__device__') and prefix in line):
            b = n - 1 if n > 0 and src[n - 1].startswith('template') else n
            depth, seen = 0, False
            for m in range(n, len(src)):
                depth += src[m].count('{') - src[m].count('}')
                seen = seen or '{' in src[m]
                if seen and depth == 0:
                    return '\n'.join(src[b:m + 1])
    sys.exit(f'extract.py: {prefix!r} not found')


for name in sys.argv[2:]:
    print(item(name))
    print()
