#!/usr/bin/env python3
"""Per process slot: resident pages of the wasm stack (below the data image),
the image, and the heap above it, from /proc/<pid>/pagemap; plus the
anonymous VMAs grouped by size (fiber stacks, tables) and the rest."""
import sys, re, struct, collections
pid = sys.argv[1]
PAGE = 4096
vmas = []
cur = None
for line in open(sys.argv[2] if len(sys.argv) > 2 else f"/proc/{pid}/smaps"):
    if re.match(r'^[0-9a-f]+-[0-9a-f]+ ', line):
        parts = line.split(None, 5)
        a, b = (int(x, 16) for x in parts[0].split('-'))
        cur = {'a': a, 'b': b, 'perm': parts[1], 'off': int(parts[2], 16), 'name': parts[5].strip() if len(parts) > 5 else '', 'f': {}}
        vmas.append(cur)
    else:
        k, v = line.split(':', 1)
        v = v.strip().split()
        if v and v[0].isdigit():
            cur['f'][k] = int(v[0])
images = [v for v in vmas if 'cwasm' in v['name'] or 'memfd:wasm' in v['name']]
img_len = collections.Counter((v['b'] - v['a'], v['off']) for v in images)
print("image mappings (len, file offset) -> count:", img_len.most_common(5))
# the image of the guest is the most common length
(L, off), _ = img_len.most_common(1)[0]
slots = sorted(v['a'] for v in images if (v['b'] - v['a'], v['off']) == (L, off))
print("slot images:", len(slots), "image KiB:", L // 1024)
pm = open(f"/proc/{pid}/pagemap", 'rb')
def present(a, b):
    pm.seek(a // PAGE * 8)
    data = pm.read((b - a) // PAGE * 8)
    n = 0; anon_n = 0
    for (e,) in struct.iter_unpack('<Q', data):
        if e >> 63 & 1 or e >> 62 & 1:
            n += 1
            if not (e >> 61 & 1):  # bit 61: file-page / shared-anon
                anon_n += 1
    return n, anon_n
MIB = 1 << 20
tot = collections.Counter()
hist = collections.Counter()
for a in slots:
    s, _ = present(a - MIB, a)
    i, i_anon = present(a, a + L)
    h, _ = present(a + L, a + 15 * MIB)
    tot['stack'] += s; tot['image'] += i; tot['image_cow'] += i_anon; tot['heap'] += h
    hist[(s, i, h)] += 1
n = len(slots)
for k in ('stack', 'image', 'image_cow', 'heap'):
    print(f"{k:10} pages/slot {tot[k]/n:7.2f}  KiB/slot {tot[k]*4/n:7.1f}")
print("most common (stack, image, heap) pages:", hist.most_common(6))
# anonymous VMAs by size
groups = collections.defaultdict(collections.Counter)
for v in vmas:
    if 'cwasm' in v['name'] or 'memfd' in v['name']: continue
    size = (v['b'] - v['a']) // 1024
    key = v['name'] or (f"anon {size} KiB {v['perm']}" if size < 1024 * 1024 else f"anon >=1GiB {v['perm']}")
    if not v['name'] and 256 <= size < 1024*1024: key = f"anon 256KiB..1GiB {v['perm']}"
    g = groups[key]
    g['n'] += 1; g['rss'] += v['f'].get('Rss', 0); g['anon'] += v['f'].get('Anonymous', 0)
print(f"{'vma group':40} {'n':>7} {'Rss KiB':>10} {'Anon KiB':>10}")
for k, g in sorted(groups.items(), key=lambda kv: -kv[1]['rss'])[:15]:
    print(f"{k[:40]:40} {g['n']:>7} {g['rss']:>10} {g['anon']:>10}")
st = {l.split(':')[0]: l.split(':')[1].strip() for l in open(f"/proc/{pid}/status")}
print("VmRSS", st['VmRSS'], "RssAnon", st['RssAnon'], "RssFile", st['RssFile'])
