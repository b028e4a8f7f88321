import sys
for f in sys.argv[1:]:
    rows=[tuple(map(int,l.split())) for l in open(f)]
    t0=min(r[1] for r in rows)
    m={}
    for now,sent,us,id in rows: m.setdefault(sent,[]).append(us/1000)
    print("==",f)
    line=[]
    for s in sorted(m):
        v=sorted(m[s]); line.append(f"{(s-t0)/1e9:5.2f}:{v[0]:4.0f}/{v[len(v)//2]:4.0f}/{v[-1]:4.0f}")
    for i in range(0,min(len(line),200),8): print("  ".join(line[i:i+8]))
