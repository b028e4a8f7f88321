#!/usr/bin/env python3
"""Sizes of a wasm module's sections and data segments (no dependencies)."""
import sys

def leb(b, i):
    r = s = 0
    while True:
        x = b[i]; i += 1
        r |= (x & 0x7f) << s; s += 7
        if x < 0x80:
            return r, i

def main(path):
    b = open(path, 'rb').read()
    assert b[:4] == b'\0asm'
    i = 8
    names = {0:'custom',1:'type',2:'import',3:'function',4:'table',5:'memory',6:'global',7:'export',8:'start',9:'element',10:'code',11:'data',12:'datacount'}
    total = 0
    for_dump = None
    while i < len(b):
        sid = b[i]; i += 1
        size, i = leb(b, i)
        body = b[i:i+size]
        label = names.get(sid, str(sid))
        if sid == 0:
            nl, j = leb(body, 0)
            label += ':' + body[j:j+nl].decode(errors='replace')
        print(f'{label:30} {size:10}')
        if sid == 11:
            n, j = leb(body, 0)
            for k in range(n):
                flag, j = leb(body, j)
                off = None
                if flag in (0, 2):
                    if flag == 2:
                        _, j = leb(body, j)
                    op = body[j]; j += 1
                    off, j = leb(body, j)  # i32.const (signed, fine for small)
                    j += 1  # end
                ln, j = leb(body, j)
                print(f'  data segment {k}: offset {off}, {ln} bytes')
                total += ln
                if for_dump is None:
                    for_dump = body[j:j+ln]
                j += ln
        i += size
    print(f'data bytes total {total}')
    if len(sys.argv) > 2 and for_dump:
        open(sys.argv[2], 'wb').write(for_dump)

main(sys.argv[1])
