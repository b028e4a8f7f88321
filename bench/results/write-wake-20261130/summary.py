import json, glob, os, statistics as st, sys
D = sys.argv[1]
def load(n):
    # sat pairs 7-9 are the perf-stat runs (sys-*.json)
    kind, who, r = n.split('-')
    if kind == 'sat' and int(r) > 6:
        n = f'sys-{who}-{int(r) - 6}'
    p = os.path.join(D, n + '.json')
    return json.load(open(p)) if os.path.exists(p) else None
def p99(d): return d['latency'].get('p99_ms')
for kind in ['sat', 'fan', 'unsat']:
    print(f'## {kind}')
    print('| pair | new deliveries/s | base deliveries/s | ratio | new CPU µs/delivery | base | ratio | new p99 ms | base p99 ms | new delivered % | base % |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    rs, cs, ps = [], [], []
    for r in range(1, 10):
        n, b = load(f'{kind}-new-{r}'), load(f'{kind}-base-{r}')
        if not n or not b: continue
        rr = n['deliveries_per_s'] / b['deliveries_per_s']; rs.append(rr)
        cr = n['cpu_us_per_delivery'] / b['cpu_us_per_delivery']; cs.append(cr)
        pr = p99(n) / p99(b); ps.append(pr)
        print(f"| {r} | {n['deliveries_per_s']:,.0f} | {b['deliveries_per_s']:,.0f} | {rr:.2f} | {n['cpu_us_per_delivery']:.2f} | {b['cpu_us_per_delivery']:.2f} | {cr:.2f} | {p99(n):,.0f} | {p99(b):,.0f} | {n['delivered_pct']:.1f} | {b['delivered_pct']:.1f} |")
    if rs:
        print(f"\nmean ratio new/base: deliveries/s {st.mean(rs):.2f}, CPU per delivery {st.mean(cs):.2f}, p99 {st.mean(ps):.2f}; "
              f"geomean deliveries {st.geometric_mean(rs):.2f}, CPU {st.geometric_mean(cs):.2f}, p99 {st.geometric_mean(ps):.2f}\n")
