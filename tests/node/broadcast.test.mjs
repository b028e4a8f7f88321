// Rooms and broadcast with the real clients, every serializer: joins,
// `self` false/true, `ack`, mixed-client rooms, per-channel order.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { KINDS, makeClient } from './lib/clients.mjs';
import { assertHealthy, closeAll, startNode, uid, waitFor } from './lib/node.mjs';

let node;
before(async () => {
  // The order test publishes 200 messages at once from one socket: above the
  // default burst of the per-socket flood limit (limits.client_burst, tested
  // in rooms-lanes.test.mjs), which would refuse the last one.
  node = await startNode({ CHORUS_LIMITS_CLIENT_BURST: '1000' });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

const payloadOf = (n, from) => ({ n, from, text: 'héllo 🎵 ü', nested: { list: [1, 2, 3], ok: true, none: null } });

for (const kind of KINDS) {
  describe(kind, () => {
    test('two clients join a room; self false: the sender does not receive its own broadcast', async () => {
      const topic = uid('room');
      const a = makeClient(node, kind);
      const b = makeClient(node, kind);
      await a.join(topic, { broadcast: { self: false } });
      await b.join(topic, { broadcast: { self: false } });

      assert.equal(await a.send('chat', payloadOf(1, 'a')), 'ok');
      await waitFor(() => b.got.length === 1, 5000, 'b receives a\'s message');
      assert.deepEqual(b.got, [{ event: 'chat', payload: payloadOf(1, 'a') }]);

      // b's reply is ordered after a's message in the channel: once a has it,
      // a would already have had its own message if it were echoed.
      assert.equal(await b.send('chat', payloadOf(2, 'b')), 'ok');
      await waitFor(() => a.got.length >= 1, 5000, 'a receives b\'s message');
      assert.deepEqual(a.got, [{ event: 'chat', payload: payloadOf(2, 'b') }]);
      assert.deepEqual(b.got, [{ event: 'chat', payload: payloadOf(1, 'a') }], 'b did not get its own message');
    });

    test('self true: the sender receives its own broadcast, others too', async () => {
      const topic = uid('room');
      const a = makeClient(node, kind);
      const b = makeClient(node, kind);
      await a.join(topic, { broadcast: { self: true } });
      await b.join(topic, { broadcast: { self: false } });

      assert.equal(await a.send('echo', { n: 7 }), 'ok');
      await waitFor(() => a.got.length === 1 && b.got.length === 1, 5000, 'both receive');
      assert.deepEqual(a.got, [{ event: 'echo', payload: { n: 7 } }]);
      assert.deepEqual(b.got, [{ event: 'echo', payload: { n: 7 } }]);
    });

    test('ack: send resolves ok once the server has taken the message', async () => {
      const topic = uid('room');
      const a = makeClient(node, kind);
      const b = makeClient(node, kind);
      await a.join(topic, { broadcast: { ack: true, self: false } });
      await b.join(topic, { broadcast: { self: false } });

      for (let i = 0; i < 3; i++) {
        assert.equal(await a.send('acked', { i }), 'ok');
      }
      await waitFor(() => b.got.length === 3, 5000, 'b receives the acked messages');
      assert.deepEqual(b.got.map((m) => m.payload.i), [0, 1, 2]);
      assert.deepEqual(a.got, []);
    });
  });
}

test('a room mixing every client and serializer: each message reaches every other member exactly once', async () => {
  const topic = uid('mixed');
  const clients = KINDS.map((k) => makeClient(node, k));
  for (const c of clients) await c.join(topic, { broadcast: { ack: true, self: false } });
  for (const [i, c] of clients.entries()) {
    assert.equal(await c.send('hello', { from: c.kind, i }), 'ok', `${c.kind} ack`);
  }
  for (const c of clients) {
    await waitFor(() => c.got.length >= KINDS.length - 1, 5000, `${c.kind} receives the others`);
  }
  for (const [i, c] of clients.entries()) {
    const expected = clients
      .map((o, j) => ({ event: 'hello', payload: { from: o.kind, i: j } }))
      .filter((_, j) => j !== i);
    assert.deepEqual(c.got, expected, `${c.kind} got every other member's message, in send order`);
  }
});

for (const publisherKind of ['realtime@1.0.0', 'realtime@2.0.0', 'phoenix@1.0.0', 'phoenix@2.0.0']) {
  test(`per-channel order: ${publisherKind} publishes 200 numbered messages, every subscriber gets all in order`, async () => {
    const topic = uid('order');
    const subscribers = KINDS.map((k) => makeClient(node, k));
    for (const s of subscribers) await s.join(topic, { broadcast: { self: false } });
    const pub = makeClient(node, publisherKind);
    await pub.join(topic, { broadcast: { self: true } });

    const N = 200;
    for (let n = 0; n < N; n++) {
      pub.send('seq', { n, pad: 'x'.repeat(n % 17) });
    }
    const all = [...subscribers, pub];
    for (const s of all) {
      await waitFor(() => s.got.length >= N, 15000, `${s.kind} receives ${N} messages (has ${s.got.length})`);
    }
    const expected = Array.from({ length: N }, (_, n) => n);
    for (const s of all) {
      assert.deepEqual(s.got.map((m) => m.payload.n), expected, `${s.kind} order`);
      assert.ok(s.got.every((m) => m.event === 'seq' && m.payload.pad === 'x'.repeat(m.payload.n % 17)));
    }
    await assertHealthy(node);
  });
}

test('realtime@2.0.0 binary payload (kind 3 encoding 0) reaches another 2.0.0 client byte for byte', async () => {
  const topic = uid('binary');
  const a = makeClient(node, 'realtime@2.0.0');
  const b = makeClient(node, 'realtime@2.0.0');
  await a.join(topic, { broadcast: { ack: true } });
  await b.join(topic);
  const bytes = new Uint8Array([0, 1, 2, 250, 255, 128, 64]);
  assert.equal(await a.send('blob', bytes.buffer), 'ok');
  await waitFor(() => b.got.length === 1, 5000, 'b receives the binary broadcast');
  assert.equal(b.got[0].event, 'blob');
  assert.ok(b.got[0].payload instanceof ArrayBuffer, 'payload is an ArrayBuffer');
  assert.deepEqual([...new Uint8Array(b.got[0].payload)], [...bytes]);
});
