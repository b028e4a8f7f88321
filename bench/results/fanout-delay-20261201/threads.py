import os, time, sys
out=open(sys.argv[1],'w'); dur=float(sys.argv[2]); t0=time.time()
prev={}
while time.time()-t0<dur:
    cur={}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try: comm=open(f'/proc/{pid}/comm').read().strip()
        except: continue
        if comm not in ('chorus','chorus-bench','nats-server'): continue
        try:
            for tid in os.listdir(f'/proc/{pid}/task'):
                s=open(f'/proc/{pid}/task/{tid}/stat').read().rsplit(')',1)[1].split()
                cur[(comm,pid,tid)]=int(s[11])+int(s[12])
        except: pass
    now=time.time()-t0
    agg={}
    for k,v in cur.items():
        d=v-prev.get(k,v)
        if d>0: agg[f"{k[0]}:{k[1]}:{k[2]}"]=d
    prev=cur
    print(f"{now:6.2f} "+" ".join(f"{k}={v}" for k,v in sorted(agg.items())), file=out, flush=True)
    time.sleep(0.1)
