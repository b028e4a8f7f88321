// A Chorus cluster on loopback for the failover test and bench: a `chorus
// control` process, N `chorus run` nodes on the CQL store, and HAProxy in
// front of the nodes as an operator deploys it (docs/OPERATIONS.md, "A load
// balancer in front"), health-checking /healthz.
//
// Needs CHORUS_SCYLLA_NODES (scripts/test.sh starts Apache Cassandra and
// sets it) and the `haproxy` binary (Debian package; scripts/test.sh
// installs it).

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { CHORUS_BIN, freePort, startNode, waitFor } from './node.mjs';

/**
 * Starts a control server and `count` nodes named `<prefix>-1..count`,
 * waits until every node lists them all and lunatic's own node list (5 s
 * refresh) has caught up. `nodeTimeoutMs`: cluster.node_timeout_ms.
 */
export async function startCluster({ count = 3, prefix = 'node', nodeTimeoutMs = 3000, keyspace, env = {} }) {
  const cql = process.env.CHORUS_SCYLLA_NODES;
  if (!cql) {
    throw new Error(
      'CHORUS_SCYLLA_NODES is not set: a cluster runs on the CQL store (scripts/cassandra.sh start, ' +
        'then CHORUS_SCYLLA_NODES=127.0.0.1:9042)',
    );
  }
  const addr = `127.0.0.1:${await freePort()}`;
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CHORUS_')));
  let controlLog = '';
  const control = spawn(CHORUS_BIN, ['control'], {
    env: {
      ...clean,
      NO_COLOR: '1',
      CHORUS_CLUSTER_INSECURE_LOCAL: '1',
      CHORUS_CLUSTER_CONTROL_BIND: addr,
      CHORUS_CLUSTER_NODE_TIMEOUT_MS: String(nodeTimeoutMs),
      // Its table of nodes (kept across its restarts) is this cluster's alone.
      CHORUS_DATA_DIR: mkdtempSync(path.join(os.tmpdir(), 'chorus-control-')),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  control.stdout.on('data', (d) => (controlLog += d));
  control.stderr.on('data', (d) => (controlLog += d));
  const nodes = [];
  const nodeEnv = (i) => ({
    CHORUS_NODE_NAME: `${prefix}-${i}`,
    CHORUS_CONTROL: addr,
    CHORUS_CLUSTER_INSECURE_LOCAL: '1',
    CHORUS_CLUSTER_NODE_TIMEOUT_MS: String(nodeTimeoutMs),
    CHORUS_STORE: 'scylla',
    CHORUS_SCYLLA_NODES: cql,
    CHORUS_STORE_KEYSPACE: keyspace,
    ...env,
  });
  const settle = async () => {
    await waitFor(
      async () => {
        for (const n of nodes) {
          const { body } = await n.healthz();
          if (body.cluster?.nodes?.length !== count) return false;
        }
        return true;
      },
      60000,
      `${count} members on every node`,
    );
    // lunatic's own node list is refreshed every 5 s; the placement ring
    // uses the members both know.
    await new Promise((r) => setTimeout(r, 6000));
  };
  const cluster = {
    addr,
    control,
    nodes,
    controlLog: () => controlLog,
    /** Starts node `i` (0-based) again on its port, once it has exited. */
    async restart(i) {
      const old = nodes[i];
      await old.kill();
      nodes[i] = await startNode(nodeEnv(i + 1), { port: old.port });
      await settle();
    },
    async stop() {
      for (const n of nodes) await n.kill();
      control.kill('SIGKILL');
    },
  };
  try {
    for (let i = 1; i <= count; i++) nodes.push(await startNode(nodeEnv(i)));
    await settle();
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}

/**
 * haproxy.cfg for `servers` ([{name, port}]) behind `127.0.0.1:frontPort`:
 * WebSockets through HTTP mode (tunnel timeout), /healthz checks every
 * 500 ms, a refused connection retried on another node. With `pin`, a
 * client's `node=<name>` query parameter picks its server while that server
 * is up (the tests place clients on known nodes; an operator leaves it out).
 */
export function haproxyConfig(frontPort, servers, { pin = false } = {}) {
  const lines = [
    'global',
    '  maxconn 4096',
    '',
    'defaults',
    '  mode http',
    '  timeout connect 2s',
    '  timeout client 60s',
    '  timeout server 60s',
    '  timeout tunnel 1h',
    '  retries 3',
    '  option redispatch 1',
    '',
    'frontend chorus',
    `  bind 127.0.0.1:${frontPort}`,
    '  default_backend chorus_nodes',
    '',
    'backend chorus_nodes',
    '  balance leastconn',
    '  option httpchk GET /healthz',
    '  http-check expect status 200',
    '  default-server check inter 500ms fall 2 rise 2',
    ...(pin ? servers.map((s) => `  use-server ${s.name} if { urlp(node) -m str ${s.name} }`) : []),
    ...servers.map((s) => `  server ${s.name} 127.0.0.1:${s.port}`),
    '',
  ];
  return lines.join('\n');
}

/** Checks that the `haproxy` binary runs (fails with the fix otherwise). */
export function haproxyVersion() {
  try {
    return execFileSync('haproxy', ['-v'], { encoding: 'utf8' }).split('\n')[0];
  } catch (e) {
    throw new Error(`haproxy is not installed (apt-get install haproxy; scripts/test.sh does): ${e.message}`);
  }
}

/**
 * Runs HAProxy in the foreground in front of `nodes` (named n1..nN), and
 * waits until a request through it reaches every node.
 */
export async function startHaproxy(nodes, { pin = true } = {}) {
  haproxyVersion();
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chorus-haproxy-'));
  const servers = nodes.map((n, i) => ({ name: `n${i + 1}`, port: n.port }));
  const cfg = haproxyConfig(port, servers, { pin });
  const file = path.join(dir, 'haproxy.cfg');
  writeFileSync(file, cfg);
  execFileSync('haproxy', ['-c', '-q', '-f', file]);
  let log = '';
  const child = spawn('haproxy', ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  const lb = {
    port,
    cfg,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/realtime/v1`,
    log: () => log,
    async stop() {
      if (!exited) {
        child.kill('SIGKILL');
        await new Promise((r) => (exited ? r() : child.once('exit', r)));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitFor(
      async () => {
        if (exited) throw new Error(`haproxy exited ${JSON.stringify(exited)}: ${log}`);
        for (const s of servers) {
          const res = await fetch(`${lb.http}/healthz?node=${s.name}`, { signal: AbortSignal.timeout(2000) });
          if (res.status !== 200) return false;
        }
        return true;
      },
      15000,
      'haproxy forwarding to every node',
    );
  } catch (e) {
    await lb.stop();
    throw e;
  }
  return lb;
}
