import subprocess, time, sys, collections, os
# every 0.5 s: bytes queued in loader receive queues vs server send queues, and CPU of processes
out = open(sys.argv[1], 'w')
t0 = time.time()
def cpu_of(name):
    tot = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try:
            comm = open(f'/proc/{pid}/comm').read().strip()
            if comm not in ('chorus', 'chorus-bench', 'nats-server', 'centrifugo'): continue
            f = open(f'/proc/{pid}/stat').read().rsplit(')',1)[1].split()
            tot[comm] = tot.get(comm, 0) + (int(f[11]) + int(f[12]))
        except Exception: pass
    return tot
while time.time() - t0 < float(sys.argv[2]):
    r = subprocess.run(['ss', '-tnH', 'state', 'established'], capture_output=True, text=True).stdout.splitlines()
    ports = collections.Counter()
    rows = []
    for line in r:
        p = line.split()
        if len(p) < 4: continue
        rq, sq, loc, peer = int(p[0]), int(p[1]), p[2], p[3]
        lp = int(loc.rsplit(':',1)[1]); pp = int(peer.rsplit(':',1)[1])
        rows.append((rq, sq, lp, pp)); ports[lp] += 1
    if not rows:
        time.sleep(0.5); continue
    sport = ports.most_common(1)[0][0]
    srv_send = sum(sq for rq, sq, lp, pp in rows if lp == sport)
    srv_recv = sum(rq for rq, sq, lp, pp in rows if lp == sport)
    cli_recv = sum(rq for rq, sq, lp, pp in rows if pp == sport)
    cli_send = sum(sq for rq, sq, lp, pp in rows if pp == sport)
    nonzero = sum(1 for rq, sq, lp, pp in rows if pp == sport and rq > 0)
    print(f"{time.time()-t0:6.1f} port {sport} conns {ports[sport]} srv_sendq {srv_send} srv_recvq {srv_recv} cli_recvq {cli_recv} ({nonzero} nonzero) cli_sendq {cli_send} cpu {cpu_of(None)}", file=out, flush=True)
    time.sleep(0.2)
