// Graceful drain (issue 11, item 7). Real realtime-js clients in rooms send
// acked chat; the node gets SIGTERM: it closes its port at once (a second
// node binds the same port and data while the first still drains), answers
// /healthz and /readyz 503 `draining` on connections it had accepted,
// closes every client with 1001 in batches, and exits 0. The clients
// reconnect and rejoin by themselves (realtime-js), to the second node, and
// its history holds every message that was acked.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, test } from 'node:test';

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

import {
  CHORUS_BIN,
  allHistory,
  closeAll,
  realtime,
  realtimeTransport,
  signJwt,
  startNode,
  subscribe,
  uid,
  waitFor,
} from './lib/node.mjs';

const CLIENTS = 12;
const ROOMS = 3;
const nodes = [];

after(async () => {
  await closeAll();
  for (const n of nodes) await n.kill();
});

/** A TCP connection the node accepts now; `ask(path)` sends a GET on it later. */
async function acceptedConnection(port) {
  const sock = net.connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  let got = '';
  sock.on('data', (d) => {
    got += d.toString();
  });
  return {
    async ask(path) {
      sock.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
      await waitFor(() => got.includes('\r\n\r\n') && got.includes('}'), 5000, `answer to ${path}`);
      sock.destroy();
      const status = Number(got.split(' ')[1]);
      return { status, body: JSON.parse(got.slice(got.indexOf('\r\n\r\n') + 4)) };
    },
  };
}

test('SIGTERM drains: 1001 in batches, port handed over, every client rejoins the next node, nothing acked lost', async () => {
  const env = {
    CHORUS_NODE_DRAIN_BATCH_SIZE: '2',
    CHORUS_NODE_DRAIN_BATCH_INTERVAL_MS: '400',
    CHORUS_NODE_SHUTDOWN_TIMEOUT_MS: '10000',
  };
  const first = await startNode(env);
  nodes.push(first);
  const rooms = Array.from({ length: ROOMS }, () => `room:${uid('drain')}:chat`);
  const acked = new Map(rooms.map((r) => [r, new Set()]));
  const closes = [];
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    const client = realtime(first, i % 2 ? '1.0.0' : '2.0.0', { reconnectAfterMs: () => 100, logger: () => {} });
    const room = rooms[i % ROOMS];
    const ch = client.channel(room, { config: { broadcast: { ack: true } } });
    await subscribe(ch);
    realtimeTransport(client).on('close', (code) => closes.push({ i, code, at: Date.now() }));
    clients.push({ i, client, ch, room, sent: 0 });
  }

  // Every client sends acked chat until told to stop.
  let sending = true;
  const loops = clients.map(async (c) => {
    while (sending) {
      if (c.ch.state === 'joined' && c.client.isConnected()) {
        const n = c.sent++;
        const status = await c.ch.send({ type: 'broadcast', event: 'm', payload: { c: c.i, n } });
        if (status === 'ok') acked.get(c.room).add(`${c.i}:${n}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  });
  // A failed assertion must not leave the send loops (and the test run) going.
  try {
    await new Promise((r) => setTimeout(r, 600));
    const healthz = await acceptedConnection(first.port);
    const readyz = await acceptedConnection(first.port);
    const ackedBefore = [...acked.values()].reduce((a, s) => a + s.size, 0);
    assert.ok(ackedBefore > CLIENTS, `traffic before the drain (${ackedBefore} acked)`);

    const termAt = Date.now();
    first.child.kill('SIGTERM');
    await waitFor(() => closes.length > 0, 5000, 'the first 1001');
    // Connections accepted before the drain still get answers: 503 draining.
    const h = await healthz.ask('/healthz');
    assert.equal(h.status, 503);
    assert.equal(h.body.status, 'draining');
    const r = await readyz.ask('/readyz');
    assert.equal(r.status, 503);
    assert.equal(r.body.status, 'draining');

    // The port is free while the first node still drains: the next node takes
    // it over with the same data.
    assert.equal(first.exited(), null, 'the first node is still draining (6 batches 400 ms apart)');
    const second = await startNode({}, { port: first.port, dataDir: first.dataDir });
    nodes.push(second);
    const exit = await waitFor(() => first.exited(), 15000, 'the first node exits');
    assert.deepEqual(exit, { code: 0, signal: null }, first.logs().slice(-3000));
    assert.ok(Date.now() - termAt < 10000 + 2000, 'exit within node.shutdown_timeout_ms');
    assert.match(first.logs(), /every connection closed and its outlet written/);

    // Every client was closed with 1001, in 6 batches of 2 spaced 400 ms apart.
    assert.equal(closes.length, CLIENTS, JSON.stringify(closes));
    assert.ok(closes.every((c) => c.code === 1001), JSON.stringify(closes));
    const spread = Math.max(...closes.map((c) => c.at)) - Math.min(...closes.map((c) => c.at));
    assert.ok(spread >= 2 * 400, `closes spread over the batches (${spread} ms)`);

    // Every client reconnects and rejoins by itself, on the second node.
    await waitFor(() => clients.every((c) => c.client.isConnected() && c.ch.state === 'joined'), 20000, 'every client rejoined');
    const ackedAt = new Map(clients.map((c) => [c.i, c.sent]));
    await waitFor(() => clients.every((c) => c.sent > ackedAt.get(c.i) + 2), 10000, 'traffic after the rejoin');
    sending = false;
    await Promise.all(loops);

    for (const room of rooms) {
      const stored = new Set((await allHistory(second, room)).map((m) => `${m.payload.c}:${m.payload.n}`));
      const lost = [...acked.get(room)].filter((k) => !stored.has(k));
      assert.deepEqual(lost, [], `acked messages missing from ${room}'s history`);
    }
    // Messages acked by the second node, too.
    const ackedAfter = [...acked.values()].reduce((a, s) => a + s.size, 0);
    assert.ok(ackedAfter > ackedBefore + CLIENTS, `acked after the handover: ${ackedAfter} vs ${ackedBefore}`);
  } finally {
    sending = false;
  }
});

test('the drain route needs an operator when auth is on; `chorus drain` signs one and drains the node', async () => {
  const secret = 'drain-test-secret-0123456789abcdef';
  const node = await startNode({ CHORUS_JWT_SECRET: secret });
  nodes.push(node);
  const now = Math.floor(Date.now() / 1000);
  const user = signJwt({ sub: 'u1', role: 'authenticated', exp: now + 600 }, secret);
  const drain = (token) =>
    fetch(`${node.http}/realtime/v1/api/drain`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, apikey: token },
      signal: AbortSignal.timeout(5000),
    });
  const refused = await drain(user);
  assert.equal(refused.status, 403);
  assert.match((await refused.json()).error, /service_role/);
  assert.equal((await node.healthz()).status, 200);
  // The CLI signs a short-lived service_role token with the config's secret.
  const { stdout } = await promisify(execFile)(CHORUS_BIN, ['drain', '--addr', `127.0.0.1:${node.port}`], {
    env: { ...process.env, CHORUS_JWT_SECRET: secret },
    timeout: 15000,
  });
  const answer = JSON.parse(stdout);
  assert.equal(answer.status, 'draining');
  assert.equal(answer.shutdown_timeout_ms, 30000);
  const exit = await waitFor(() => node.exited(), 10000, 'the node exits after the drain call');
  assert.deepEqual(exit, { code: 0, signal: null });
});
