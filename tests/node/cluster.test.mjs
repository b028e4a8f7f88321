// One room across a cluster: a `chorus control` process and three `chorus
// run` nodes on loopback (CQL store), real realtime-js clients connected to
// DIFFERENT nodes joining one chat-lane topic. The topic's channel runs on
// its home node only (core::placement over the cluster's nodes); the other
// nodes' sessions reach it through that node's door and get its frames
// through their node's relay. Checks: a broadcast from any node reaches the
// clients of the others, channel presence lists every client, the stored
// history (REST, from every node) and a replay on join agree, and when a
// node that is not the topic's home is killed (SIGKILL) the survivors'
// clients keep receiving and its client leaves presence. The green dot
// (`/realtime/v1/api/presence/online`) answers the same on every node.
//
// Needs CHORUS_SCYLLA_NODES (scripts/test.sh starts Apache Cassandra and
// sets it): a cluster refuses SQLite.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  CHORUS_BIN,
  allHistory,
  closeAll,
  freePort,
  metric,
  phoenix,
  phoenixJoin,
  realtime,
  startNode,
  subscribe,
  uid,
  waitFor,
} from './lib/node.mjs';

const CQL = process.env.CHORUS_SCYLLA_NODES;

let control;
let controlLog = '';
const nodes = [];
/** The node the first test kills. */
let killed = -1;

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
      // The smallest allowed: a killed node leaves the membership soon.
      CHORUS_CLUSTER_NODE_TIMEOUT_MS: '5000',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  control.stdout.on('data', (d) => (controlLog += d));
  control.stderr.on('data', (d) => (controlLog += d));
  for (let i = 1; i <= 3; i++) {
    nodes.push(
      await startNode({
        CHORUS_NODE_NAME: `join-${i}`,
        CHORUS_CONTROL: addr,
        CHORUS_CLUSTER_INSECURE_LOCAL: '1',
        CHORUS_CLUSTER_NODE_TIMEOUT_MS: '5000',
        CHORUS_STORE: 'scylla',
        CHORUS_SCYLLA_NODES: CQL,
        CHORUS_STORE_KEYSPACE: 'chorus_cluster_join_test',
        // The presence shard crash below (chorus_crash_presence).
        CHORUS_NODE_FAULT_INJECTION: 'true',
      }),
    );
  }
  // Every node lists the three members (the control server's view)...
  await waitFor(
    async () => {
      for (const n of nodes) {
        const { body } = await n.healthz();
        if (body.cluster?.nodes?.length !== 3) return false;
      }
      return true;
    },
    30000,
    'three members on every node',
  );
  // ...and lunatic's own node list, refreshed every 5 s, has caught up (the
  // placement ring uses the members both know).
  await new Promise((r) => setTimeout(r, 6000));
});

after(async () => {
  await closeAll();
  for (const n of nodes) await n.kill();
  control?.kill('SIGKILL');
});

/** A realtime-js client on `node`, joined to `topic` with presence key `key`. */
async function member(node, vsn, topic, key) {
  const client = realtime(node, vsn, { heartbeatIntervalMs: 2000 });
  const ch = client.channel(topic, { config: { broadcast: { self: false, ack: true }, presence: { key } } });
  ch.got = [];
  ch.on('broadcast', { event: '*' }, (m) => ch.got.push(m.payload));
  // realtime-js asks for presence only when something listens to it.
  ch.on('presence', { event: 'sync' }, () => {});
  await subscribe(ch, 10000);
  return ch;
}

const keys = (ch) => Object.keys(ch.presenceState()).sort();

/** Which of `ks` node `n` says are online anywhere (the admin API). */
async function online(n, ks) {
  const res = await fetch(`${n.http}/realtime/v1/api/presence/online?keys=${ks.join(',')}`);
  assert.equal(res.status, 200);
  return (await res.json()).online.sort();
}

test('clients on three nodes share one room: broadcast, presence, history and replay agree; a killed node', async () => {
  const room = `room:${uid('c')}:chat`;
  const t0 = Date.now();
  const before = await Promise.all(nodes.map((n) => metric(n, 'chorus_remote_locates_total')));
  const a = await member(nodes[0], '2.0.0', room, 'ana');
  const b = await member(nodes[1], '1.0.0', room, 'ben');
  const c = await member(nodes[2], '2.0.0', room, 'cy');

  // One channel process in the whole cluster, on the topic's home node; the
  // two other nodes' joins were located across nodes.
  const channels = await Promise.all(nodes.map((n) => metric(n, 'chorus_channels')));
  assert.deepEqual([...channels].sort(), [0, 0, 1], `channels per node: ${channels}`);
  const home = channels.indexOf(1);
  const after = await Promise.all(nodes.map((n) => metric(n, 'chorus_remote_locates_total')));
  const remote = after.reduce((s, v, i) => s + v - before[i], 0);
  assert.equal(remote, 2, `remote locates: ${before} -> ${after}`);

  // Presence: every client sees the three keys, wherever it is connected.
  for (const [ch, meta] of [[a, { n: 'a' }], [b, { n: 'b' }], [c, { n: 'c' }]]) {
    assert.equal(await ch.track(meta), 'ok');
  }
  for (const ch of [a, b, c]) {
    await waitFor(() => keys(ch).join() === 'ana,ben,cy', 10000, `presence on ${ch.topic}: ${keys(ch)}`);
  }
  // The green dot: every node answers for the whole cluster (the channel
  // reporting these presences runs on one node only).
  for (const n of nodes) {
    await waitFor(
      async () => (await online(n, ['ana', 'ben', 'cy', 'nobody'])).join() === 'ana,ben,cy',
      5000,
      `node ${n.port} sees ana, ben and cy online`,
    );
  }

  // Broadcasts from each node reach the clients of the two others, in order.
  const sent = [];
  for (const [i, ch] of [a, b, c].entries()) {
    for (let k = 0; k < 3; k++) {
      const payload = { from: i, k };
      assert.equal(await ch.send({ type: 'broadcast', event: 'chat', payload }), 'ok');
      sent.push(payload);
    }
  }
  for (const [i, ch] of [a, b, c].entries()) {
    const expected = sent.filter((p) => p.from !== i);
    await waitFor(() => ch.got.length >= expected.length, 10000, `client ${i} got ${JSON.stringify(ch.got)}`);
    assert.deepEqual(ch.got, expected, `client ${i}`);
  }
  // The home node's outboxes carried those frames: each broadcast has a
  // recipient on another node, so at least nine relay messages, in batches,
  // none dropped.
  const outbox = {};
  for (const m of ['messages_total', 'batches_total', 'dropped_total', 'queued_messages']) {
    outbox[m] = await metric(nodes[home], `chorus_cluster_outbox_${m}`);
  }
  assert.ok(outbox.messages_total >= 9, `outbox of the home node: ${JSON.stringify(outbox)}`);
  assert.ok(outbox.batches_total >= 1 && outbox.batches_total <= outbox.messages_total, JSON.stringify(outbox));
  assert.equal(outbox.dropped_total, 0);
  assert.equal(typeof outbox.queued_messages, 'number');

  // History: the same nine stored messages from every node's REST API.
  const histories = await Promise.all(nodes.map((n) => allHistory(n, `realtime:${room}`)));
  for (const h of histories) {
    assert.deepEqual(
      h.map((m) => m.payload).reverse(),
      sent,
      'every node lists the stored messages in send order',
    );
  }
  assert.deepEqual(histories[1].map((m) => m.id), histories[0].map((m) => m.id));
  assert.deepEqual(histories[2].map((m) => m.id), histories[0].map((m) => m.id));

  // Replay on join (phoenix.js, which passes broadcast.replay as given) on a
  // node that is not the home: the same messages, marked replayed.
  const other = (home + 1) % 3;
  const socket = phoenix(nodes[other], '2.0.0');
  const replayCh = socket.channel(`realtime:${room}`, {
    config: { broadcast: { replay: { since: t0 - 1000, limit: 25 } }, presence: { key: 'replayer' } },
  });
  const replayed = [];
  replayCh.on('broadcast', (m) => replayed.push(m));
  await phoenixJoin(replayCh, 10000);
  await waitFor(() => replayed.length >= sent.length, 10000, `replayed ${replayed.length}`);
  assert.deepEqual(replayed.map((m) => m.payload), sent);
  assert.ok(replayed.every((m) => m.meta?.replayed === true));
  assert.deepEqual(replayed.map((m) => m.meta.id), histories[0].map((m) => m.id).reverse());
  replayCh.leave();

  // Kill -9 a node that is not the home (it has a client, c or b): the
  // channel keeps serving the survivors, and the dead node's client leaves
  // presence once the node leaves the cluster.
  const victim = home === 2 ? 1 : 2;
  const alive = victim === 2 ? [a, b] : [a, c];
  const deadKey = victim === 2 ? 'cy' : 'ben';
  const aliveIdx = [0, 1, 2].filter((i) => i !== victim);
  await nodes[victim].kill();
  killed = victim;
  for (const ch of alive) ch.got.length = 0;
  const survivors = alive.map((ch, j) => ({ ch, i: aliveIdx[j] }));
  for (const { ch, i } of survivors) {
    assert.equal(await ch.send({ type: 'broadcast', event: 'chat', payload: { after: i } }), 'ok');
  }
  for (const { ch, i } of survivors) {
    const expected = survivors.filter((s) => s.i !== i).map((s) => ({ after: s.i }));
    await waitFor(() => ch.got.length >= expected.length, 5000, `survivor ${i} got ${JSON.stringify(ch.got)}`);
    assert.deepEqual(ch.got, expected);
  }
  for (const { ch } of survivors) {
    await waitFor(() => !keys(ch).includes(deadKey), 30000, `${deadKey} leaves presence (${keys(ch)})`);
  }
  // ...and the green dot, on both survivors.
  const stay = ['ana', 'ben', 'cy'].filter((k) => k !== deadKey).join();
  for (const i of aliveIdx) {
    await waitFor(
      async () => (await online(nodes[i], ['ana', 'ben', 'cy'])).join() === stay,
      5000,
      `node ${i + 1} sees ${stay} online`,
    );
  }
  // And the survivors still exchange after the membership changed.
  for (const { ch } of survivors) ch.got.length = 0;
  assert.equal(await survivors[0].ch.send({ type: 'broadcast', event: 'chat', payload: { last: true } }), 'ok');
  await waitFor(() => survivors[1].ch.got.length === 1, 5000, 'a broadcast after the node left');
  assert.deepEqual(survivors[1].ch.got, [{ last: true }]);
});

test('a presence shard restarted on the channel\'s node gets its users back, on every node', async () => {
  // The nodes the test above left running.
  const live = nodes.filter((_, i) => i !== killed);
  const topic = uid('pshard');
  const [k1, k2] = [uid('p-ana'), uid('p-ben')];
  const before = await Promise.all(live.map((n) => metric(n, 'chorus_channels')));
  const m1 = await member(live[0], '2.0.0', topic, k1);
  const m2 = await member(live[1], '2.0.0', topic, k2);
  assert.equal(await m1.track({ n: 1 }), 'ok');
  assert.equal(await m2.track({ n: 2 }), 'ok');
  const both = [k1, k2].sort().join();
  for (const n of live) {
    await waitFor(async () => (await online(n, [k1, k2])).join() === both, 5000, `node ${n.port} sees both online`);
  }
  // The topic's channel runs on one node, whose shards hold these
  // presences as its own; crash both keys' shards there (through a client
  // connected to that node).
  const channels = await Promise.all(live.map((n) => metric(n, 'chorus_channels')));
  const home = live[channels.findIndex((c, i) => c > before[i])];
  const probe = await member(home, '2.0.0', uid('probe'), uid('probe'));
  const restarts = await metric(home, 'chorus_restarts_total');
  probe.channelAdapter.push('chorus_crash_presence', { key: k1 });
  await waitFor(async () => (await metric(home, 'chorus_restarts_total')) > restarts, 5000, 'the shard restarted');
  const now = await metric(home, 'chorus_restarts_total');
  probe.channelAdapter.push('chorus_crash_presence', { key: k2 });
  await waitFor(async () => (await metric(home, 'chorus_restarts_total')) > now, 5000, 'the shard restarted');
  // Every node shows them online again (the restarted shards rebuild from
  // their node's channels and send the other nodes a copy again).
  for (const n of live) {
    await waitFor(async () => (await online(n, [k1, k2])).join() === both, 5000, `node ${n.port} sees both online again`);
  }
  // A leave after the rebuild is seen everywhere: nothing counted twice.
  await m1.untrack();
  for (const n of live) {
    await waitFor(async () => (await online(n, [k1, k2])).join() === k2, 5000, `node ${n.port} sees ${k1} offline`);
  }
  await m2.untrack();
  for (const n of live) {
    await waitFor(async () => (await online(n, [k1, k2])).length === 0, 5000, `node ${n.port} sees both offline`);
  }
});
