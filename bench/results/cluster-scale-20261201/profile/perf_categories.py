import sys,re,collections
cats=[('quinn','quinn'),('rustls','rustls|ring::|aes|gcm|chacha'),('lunatic_distributed','lunatic_distributed'),('mailbag','cluster::Mailbag|nodelink'),('outbox','cluster::Links'),('wasm guest','wasm|wasmtime|cranelift|jit'),('session','chorus::session'),('socket write','socket::write_loop|outq'),('socket read','socket::read|inlet'),('hostapi','hostapi'),('serde','serde|bincode|rmp'),('tokio timer','time::'),('malloc','malloc|free|realloc'),('send/recv syscalls (TCP to clients, UDP)','udp|sendmsg|recvmsg'),('tcp','tcp_')]
samples=[];cur=[]
for line in open(sys.argv[1]):
    if not line.strip():
        if cur: samples.append(cur); cur=[]
        continue
    cur.append(line.strip())
if cur: samples.append(cur)
c=collections.Counter(); c2=collections.Counter(); comms=collections.Counter()
for s in samples:
    comms[s[0].split()[0]]+=1
    st=' '.join(s[1:])
    hit=None
    for name,pat in cats:
        if re.search(pat,st): hit=name;break
    c[hit or 'other']+=1
    for name,pat in cats:
        if re.search(pat,st): c2[name]+=1
n=len(samples)
print('samples',n)
print('first-match:'); [print(f'  {k:42s} {v/n*100:5.1f}%') for k,v in c.most_common()]
print('inclusive:'); [print(f'  {k:42s} {v/n*100:5.1f}%') for k,v in c2.most_common()]
print('threads:', comms.most_common(10))
