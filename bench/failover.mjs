// Failover of a topic's home node, measured (issue 14 item 6): the time from
// kill -9 of the node that runs a topic's channel until every client of the
// topic receives again. See tests/node/lib/failover.mjs for one run: a
// control server, three nodes on the CQL store, HAProxy in front (the
// haproxy.cfg of docs/OPERATIONS.md, plus a rule placing each client on a
// known node), realtime-js clients with realtime-js' OWN reconnect and
// rejoin timings (1 s, 2 s, 5 s, 10 s), `--per-node` of them on each node.
// After each run the killed node starts again (same name and port) and the
// next run uses a new topic.
//
// With `--drain` the home node is drained (SIGTERM) instead of killed (issue
// 14 item 7): the time from the drain until every client receives again,
// how many clients saw an error (a channel error or a closed socket), when
// the other nodes' membership dropped the node, and its exit status.
//
//   scripts/cassandra.sh start
//   CHORUS_SCYLLA_NODES=127.0.0.1:9042 node bench/failover.mjs [--runs 5] [--per-node 3]
//                       [--node-timeout-ms 3000] [--drain]
//                       [--out bench/results/failover-<date> | cluster-drain-<date> with --drain]
//
// Needs the built node (build_all), haproxy (apt-get install haproxy) and
// tests/node's npm packages. Writes <out>/failover-<time>.json (every run's
// figures, p50/max over runs) and prints the summary; exits 1 if a run lost
// an acked message or did not rebuild presence.

import { execSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startCluster, startHaproxy } from '../tests/node/lib/cluster.mjs';
import { failoverOnce } from '../tests/node/lib/failover.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const runs = Number(opt('runs', 5));
const perNode = Number(opt('per-node', 3));
const nodeTimeoutMs = Number(opt('node-timeout-ms', 3000));
const drain = args.includes('--drain');
const name = drain ? 'cluster-drain' : 'failover';
const here = path.dirname(fileURLToPath(import.meta.url));
const started = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
const out = opt('out', path.join(here, 'results', `${name}-${started.slice(0, 8)}`));

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
};

let commit = null;
try {
  commit = execSync('git rev-parse --short HEAD', { cwd: here, encoding: 'utf8' }).trim();
} catch {}
const record = {
  started,
  commit,
  machine: { cpus: os.cpus().length, loadavg_at_start: os.loadavg().map((x) => x.toFixed(2)).join(' ') },
  options: {
    runs,
    per_node: perNode,
    node_timeout_ms: nodeTimeoutMs,
    nodes: 3,
    reconnect: 'realtime-js defaults',
    mode: drain ? 'drain (SIGTERM)' : 'kill -9',
  },
  runs: [],
};

const cluster = await startCluster({ prefix: 'bench-fo', nodeTimeoutMs, keyspace: 'chorus_failover_bench' });
const lb = await startHaproxy(cluster.nodes);
let failed = false;
try {
  for (let run = 0; run < runs; run++) {
    const r = await failoverOnce(cluster, lb, { perNode, drain, log: (m) => console.log(`run ${run + 1}: ${m}`) });
    const lost = r.missing.reduce((a, m) => a + m.length, 0);
    record.runs.push({
      home: r.home + 1,
      clients: r.clients,
      acked: r.acked,
      acked_missing: lost,
      presence_rebuilt: r.presenceOk,
      receive_again_ms: r.receiveAgainMs,
      survivor_clients_ms: r.survivorMs,
      dead_node_clients_ms: r.victimMs,
      p50_ms: r.p50Ms,
      max_ms: r.maxMs,
      clients_with_error: r.clientsWithError,
      members_dropped_ms: r.membersDroppedMs,
      exit: r.victimExit,
      load: os.loadavg()[0].toFixed(2),
    });
    if (lost > 0 || !r.presenceOk) failed = true;
    if (drain && r.victimExit?.code !== 0) failed = true;
    await cluster.restart(r.home);
  }
} finally {
  await lb.stop();
  await cluster.stop();
}
const maxes = record.runs.map((r) => r.max_ms);
const all = record.runs.flatMap((r) => r.receive_again_ms);
record.summary = {
  runs: record.runs.length,
  every_client_again_ms: { p50: quantile(maxes, 0.5), max: Math.max(...maxes) },
  per_client_ms: { p50: quantile(all, 0.5), p99: quantile(all, 0.99), max: Math.max(...all) },
  acked_missing: record.runs.reduce((a, r) => a + r.acked_missing, 0),
  presence_rebuilt: record.runs.every((r) => r.presence_rebuilt),
  clients_with_error: record.runs.map((r) => r.clients_with_error),
  members_dropped_ms: record.runs.map((r) => r.members_dropped_ms),
};
mkdirSync(out, { recursive: true });
const file = path.join(out, `${name}-${started}.json`);
writeFileSync(file, `${JSON.stringify(record, null, 2)}\n`);
console.log(JSON.stringify(record.summary));
console.log(`wrote ${file}`);
process.exit(failed ? 1 : 0);
