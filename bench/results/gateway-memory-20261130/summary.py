"""Tables of README.md from the run files pairs.sh wrote: python3 summary.py DIR..."""
import json,sys,glob,os,statistics as st
def load(d,kind,label,i):
    p=f'{d}/{kind}-{label}-{i}.json'
    j=json.load(open(p)); u=open(f'{d}/{kind}-{label}-{i}.uptime').read().split('\n')[0]
    la=u.split('load average:')[1].split(',')[0].strip()
    return j,la
for d in sys.argv[1:]:
    for kind in ('storm','idle'):
        n=len(glob.glob(f'{d}/{kind}-new-*.json'))
        if not n: continue
        print(f'\n{d} {kind}')
        print('| pair | new sessions/s | base sessions/s | new ÷ base | new RSS / PSS per session (KiB) | base RSS / PSS per session (KiB) | load (new, base) |')
        print('|---|---:|---:|---:|---|---|---|')
        rs=[]
        for i in range(1,n+1):
            a,la=load(d,kind,'new',i); b,lb=load(d,kind,'base',i)
            r=a['sessions_per_s']/b['sessions_per_s']; rs.append(r)
            print(f"| {i} | {a['sessions_per_s']:.0f} | {b['sessions_per_s']:.0f} | {r:.2f} | {a['rss_per_session_kib']:.1f} / {a['pss_per_session_kib']:.1f} | {b['rss_per_session_kib']:.1f} / {b['pss_per_session_kib']:.1f} | {la}, {lb} |")
        print(f'mean {st.mean(rs):.3f} median {st.median(rs):.3f} geomean {st.geometric_mean(rs):.3f}')
