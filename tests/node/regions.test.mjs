// Two regions on loopback: a `chorus control` process and four `chorus run`
// nodes, two in region `a` and two in region `b` (CQL store). Each node's
// QUIC address for the other region is a small delaying UDP proxy run by
// this test (`cluster.advertise`), so traffic between regions takes 20 ms
// each way while traffic inside a region does not. Real realtime-js clients
// on all four nodes join one chat-lane topic; the channel's fan-out crosses
// to the other region once, to one node there whose relay forwards to the
// other (core::relay::regional). Checks: every node lists the other
// region's nodes at their proxy addresses and its own region's at their
// own; broadcasts from each node reach every other client, in order; the
// proxies carried traffic (the regions did talk through them).
//
// Needs CHORUS_SCYLLA_NODES (scripts/test.sh starts Apache Cassandra and
// sets it): a cluster refuses SQLite.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import dgram from 'node:dgram';

import { CHORUS_BIN, closeAll, freePort, metric, realtime, startNode, subscribe, uid, waitFor } from './lib/node.mjs';

const CQL = process.env.CHORUS_SCYLLA_NODES;
const DELAY_MS = 20;

let control;
let controlLog = '';
const nodes = [];
const proxies = [];

/** A free UDP port on loopback. */
async function freeUdpPort() {
  const s = dgram.createSocket('udp4');
  await new Promise((r) => s.bind(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * A UDP proxy on `listen` to `upstream` delaying each datagram `delay` ms
 * each way; one upstream socket per client address (QUIC sees one peer
 * per client).
 */
async function udpProxy(listen, upstream, delay) {
  const front = dgram.createSocket('udp4');
  const clients = new Map();
  const proxy = { datagrams: 0, close: () => {} };
  front.on('message', (msg, from) => {
    proxy.datagrams++;
    const key = `${from.address}:${from.port}`;
    let up = clients.get(key);
    if (!up) {
      up = dgram.createSocket('udp4');
      up.on('message', (back) => setTimeout(() => front.send(back, from.port, from.address), delay));
      up.on('error', () => {}); // an ICMP answer to a datagram sent before the node bound its port
      up.bind(0, '127.0.0.1');
      clients.set(key, up);
    }
    setTimeout(() => up.send(msg, upstream, '127.0.0.1'), delay);
  });
  await new Promise((r) => front.bind(listen, '127.0.0.1', r));
  proxy.close = () => {
    front.close();
    for (const up of clients.values()) up.close();
  };
  return proxy;
}

before(async () => {
  assert.ok(
    CQL,
    'CHORUS_SCYLLA_NODES is not set: a cluster runs on the CQL store (scripts/cassandra.sh start, ' +
      'then CHORUS_SCYLLA_NODES=127.0.0.1:9042)',
  );
  const addr = `127.0.0.1:${await freePort()}`;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CHORUS_')));
  control = spawn(CHORUS_BIN, ['control'], {
    env: {
      ...env,
      NO_COLOR: '1',
      CHORUS_CLUSTER_INSECURE_LOCAL: '1',
      CHORUS_CLUSTER_CONTROL_BIND: addr,
      // Its table of nodes (kept across its restarts) is this test's alone.
      CHORUS_DATA_DIR: mkdtempSync(path.join(os.tmpdir(), 'chorus-control-')),
      CHORUS_CLUSTER_NODE_TIMEOUT_MS: '5000',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  control.stdout.on('data', (d) => (controlLog += d));
  control.stderr.on('data', (d) => (controlLog += d));
  for (const [i, region] of ['a', 'a', 'b', 'b'].entries()) {
    const quic = await freeUdpPort();
    const advertised = await freeUdpPort();
    const proxy = await udpProxy(advertised, quic, DELAY_MS);
    proxies.push(proxy);
    const node = await startNode({
      CHORUS_NODE_NAME: `region-${region}-${i}`,
      CHORUS_REGION: region,
      CHORUS_CLUSTER_BIND: `127.0.0.1:${quic}`,
      CHORUS_CLUSTER_ADVERTISE: `127.0.0.1:${advertised}`,
      CHORUS_CONTROL: addr,
      CHORUS_CLUSTER_INSECURE_LOCAL: '1',
      CHORUS_CLUSTER_NODE_TIMEOUT_MS: '5000',
      CHORUS_STORE: 'scylla',
      CHORUS_SCYLLA_NODES: CQL,
      CHORUS_STORE_KEYSPACE: 'chorus_cluster_regions_test',
    });
    Object.assign(node, { region, quic: `127.0.0.1:${quic}`, advertised: `127.0.0.1:${advertised}` });
    nodes.push(node);
  }
  await waitFor(
    async () => {
      for (const n of nodes) {
        const { body } = await n.healthz();
        if (body.cluster?.nodes?.length !== 4) return false;
      }
      return true;
    },
    30000,
    'four members on every node',
  );
  // lunatic's own node list, refreshed every 5 s, catches up.
  await new Promise((r) => setTimeout(r, 6000));
});

after(async () => {
  await closeAll();
  for (const n of nodes) await n.kill();
  for (const p of proxies) p.close();
  control?.kill('SIGKILL');
});

test('every node dials its own region directly and the other region through its advertised address', async () => {
  for (const n of nodes) {
    const { body } = await n.healthz();
    assert.equal(body.cluster.region, n.region);
    for (const m of body.cluster.nodes) {
      const peer = nodes.find((p) => p.quic === m.address || p.advertised === m.address);
      assert.ok(peer, `${m.address} is one of the nodes (${controlLog.slice(-2000)})`);
      assert.equal(m.region, peer.region);
      const want = peer.region === n.region ? peer.quic : peer.advertised;
      assert.equal(m.address, want, `node ${n.region} lists ${m.name} (region ${m.region})`);
    }
  }
});

test('a room with clients in both regions: every broadcast reaches every other client, in order', async () => {
  const room = `room:${uid('r')}:chat`;
  const members = [];
  for (const [i, n] of nodes.entries()) {
    const client = realtime(n, '2.0.0', { heartbeatIntervalMs: 2000 });
    const ch = client.channel(room, { config: { broadcast: { self: false, ack: true } } });
    ch.got = [];
    ch.on('broadcast', { event: '*' }, (m) => ch.got.push(m.payload));
    await subscribe(ch, 15000);
    members.push({ ch, i });
  }
  const before = proxies.reduce((s, p) => s + p.datagrams, 0);
  const forwardsBefore = await Promise.all(nodes.map((n) => metric(n, 'chorus_region_forwards_total')));
  const sent = [];
  for (const { ch, i } of members) {
    for (let k = 0; k < 5; k++) {
      const payload = { from: i, k };
      assert.equal(await ch.send({ type: 'broadcast', event: 'chat', payload }), 'ok');
      sent.push(payload);
    }
  }
  for (const { ch, i } of members) {
    const expected = sent.filter((p) => p.from !== i);
    await waitFor(
      () => ch.got.length >= expected.length,
      10000,
      `client on node ${i} (${nodes[i].region}) got ${JSON.stringify(ch.got)}`,
    );
    assert.deepEqual(ch.got, expected, `client on node ${i}`);
  }
  assert.ok(proxies.reduce((s, p) => s + p.datagrams, 0) > before, 'the regions talked through the proxies');
  // The channel's home is in one region; in the other, a hub's relay
  // forwarded to its neighbour (a publish from the neighbour's own client
  // may leave the hub alone with subscribers there: direct, not counted).
  const forwardsAfter = await Promise.all(nodes.map((n) => metric(n, 'chorus_region_forwards_total')));
  const forwards = forwardsAfter.map((v, i) => v - forwardsBefore[i]);
  const total = forwards.reduce((s, v) => s + v, 0);
  assert.ok(total > 0 && total <= sent.length, `region forwards per node: ${forwards}`);
});
