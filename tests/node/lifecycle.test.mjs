// Channel and socket life cycle with the real clients: leave (phx_close,
// nothing after), REST broadcasts (batch endpoint and realtime-js httpSend)
// reaching sockets, and clients reconnecting after the server dropped them
// (crashed session, heartbeat timeout) and receiving broadcasts again.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { KINDS, REALTIME_KINDS, makeClient } from './lib/clients.mjs';
import { RawClient, VSNS, assertHealthy, closeAll, realtime, restBroadcast, startNode, subscribe, uid, waitFor } from './lib/node.mjs';

const HEARTBEAT_TIMEOUT_MS = 2000;
const FAST = { heartbeatIntervalMs: 400 };

let node;
before(async () => {
  node = await startNode({
    CHORUS_LIMITS_HEARTBEAT_TIMEOUT_MS: String(HEARTBEAT_TIMEOUT_MS),
    CHORUS_NODE_FAULT_INJECTION: 'true',
  });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

describe('leave', () => {
  for (const vsn of VSNS) {
    test(`raw ${vsn}: phx_leave is answered ok, then phx_close with ref = join_ref; no broadcast afterwards`, async () => {
      const topic = `realtime:${uid('leave')}`;
      const raw = await RawClient.open(node, vsn);
      assert.equal((await raw.join(topic)).status, 'ok');
      const joinRef = raw.joinRefs[topic];

      const pub = makeClient(node, 'realtime@2.0.0');
      await pub.join(topic.slice('realtime:'.length), { broadcast: { self: true } });
      await pub.send('before', { n: 1 });
      await raw.waitMessage((m) => m.event === 'broadcast' && m.payload.event === 'before', 5000, 'broadcast before leave');

      const ref = raw.push(topic, 'phx_leave', {}, { join_ref: joinRef });
      const reply = await raw.waitMessage((m) => m.event === 'phx_reply' && m.ref === ref);
      assert.equal(reply.topic, topic);
      assert.equal(reply.payload.status, 'ok');
      const close = await raw.waitMessage((m) => m.event === 'phx_close' && m.topic === topic, 5000, 'phx_close');
      assert.equal(close.ref, joinRef);
      assert.equal(close.join_ref, joinRef);

      // Two more broadcasts; the publisher's own copy of the second one is
      // the barrier: the channel has fanned both out by then.
      await pub.send('after', { n: 2 });
      await pub.send('after', { n: 3 });
      await waitFor(() => pub.got.some((m) => m.payload.n === 3), 5000, 'publisher sees its own last message');
      assert.deepEqual(raw.broadcasts(topic).map((m) => m.payload.event), ['before']);

      // The topic is no longer joined on this socket.
      const pushRef = raw.push(topic, 'presence', { type: 'presence', event: 'track', payload: {} }, { join_ref: joinRef });
      const unmatched = await raw.reply(pushRef);
      assert.deepEqual(unmatched, { status: 'error', response: { reason: 'unmatched topic' } });
    });
  }

  for (const kind of KINDS) {
    test(`${kind}: after leaving, the client receives nothing more from the room`, async () => {
      const topic = uid('leave');
      const leaver = makeClient(node, kind);
      const stayer = makeClient(node, kind);
      const pub = makeClient(node, kind);
      await leaver.join(topic);
      await stayer.join(topic);
      await pub.join(topic, { broadcast: { ack: true } });

      assert.equal(await pub.send('m', { n: 1 }), 'ok');
      await waitFor(() => leaver.got.length === 1 && stayer.got.length === 1, 5000, 'first message');
      assert.equal(await leaver.leave(), 'ok');

      assert.equal(await pub.send('m', { n: 2 }), 'ok');
      assert.equal(await pub.send('m', { n: 3 }), 'ok');
      await waitFor(() => stayer.got.length === 3, 5000, 'stayer gets all three');
      assert.deepEqual(stayer.got.map((m) => m.payload.n), [1, 2, 3]);
      assert.deepEqual(leaver.got.map((m) => m.payload.n), [1]);
    });
  }
});

describe('a second join of the same topic replaces the first', () => {
  for (const vsn of VSNS) {
    test(`raw ${vsn}: old join closed (phx_close with its join_ref), new join ok, broadcasts arrive once`, async () => {
      const name = uid('rejoin');
      const topic = `realtime:${name}`;
      const raw = await RawClient.open(node, vsn);
      const watcher = makeClient(node, 'realtime@2.0.0');
      await watcher.join(name, { presence: { key: 'watcher' } });
      assert.equal((await raw.join(topic, { presence: { key: 'dup', enabled: true } })).status, 'ok');
      const first = raw.joinRefs[topic];
      const tref = raw.push(topic, 'presence', { type: 'presence', event: 'track', payload: { v: 1 } }, { join_ref: first });
      assert.equal((await raw.reply(tref)).status, 'ok');
      await waitFor(() => JSON.stringify(watcher.presenceState()) === JSON.stringify({ dup: [{ v: 1 }] }), 5000, 'dup tracked');

      assert.equal((await raw.join(topic, { presence: { key: 'dup', enabled: true } })).status, 'ok');
      const second = raw.joinRefs[topic];
      assert.notEqual(first, second);
      const close = await raw.waitMessage((m) => m.event === 'phx_close' && m.topic === topic, 5000, 'phx_close of the first join');
      assert.equal(close.ref, first);
      // The replaced join's presence left.
      await waitFor(() => JSON.stringify(watcher.presenceState()) === '{}', 5000, 'old presence gone');

      const pub = makeClient(node, 'realtime@1.0.0');
      await pub.join(name, { broadcast: { self: true, ack: true } });
      assert.equal(await pub.send('once', { n: 1 }), 'ok');
      assert.equal(await pub.send('once', { n: 2 }), 'ok');
      await waitFor(() => pub.got.length === 2, 5000, 'publisher barrier');
      await waitFor(() => raw.broadcasts(topic, 'once').length >= 2, 5000, 'raw receives');
      assert.deepEqual(raw.broadcasts(topic, 'once').map((m) => m.payload.payload.n), [1, 2]);
    });
  }
});

describe('REST broadcast', () => {
  test('POST /realtime/v1/api/broadcast reaches socket clients of every kind (202)', async () => {
    const name = uid('rest');
    const clients = KINDS.map((k) => makeClient(node, k));
    for (const c of clients) await c.join(name);

    const res = await restBroadcast(node, [
      { topic: name, event: 'from-rest', payload: { n: 1, text: 'ünïcode' } },
      { topic: `realtime:${name}`, event: 'from-rest', payload: { n: 2 } },
      { topic: uid('nobody-listens'), event: 'x', payload: {} },
    ]);
    assert.equal(res.status, 202, res.text);
    for (const c of clients) {
      await waitFor(() => c.got.length === 2, 5000, `${c.kind} receives the REST messages`);
      assert.deepEqual(c.got, [
        { event: 'from-rest', payload: { n: 1, text: 'ünïcode' } },
        { event: 'from-rest', payload: { n: 2 } },
      ]);
    }
  });

  test('a malformed REST broadcast is refused with 400 and delivers nothing', async () => {
    const name = uid('rest-bad');
    const c = makeClient(node, 'realtime@2.0.0');
    await c.join(name);
    const bad = await fetch(`${node.http}/realtime/v1/api/broadcast`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"messages": [{"topic": "',
    });
    assert.equal(bad.status, 400);
    const noTopic = await restBroadcast(node, [{ event: 'e', payload: {} }]);
    assert.equal(noTopic.status, 400);
    // Then a good one: the only thing the client ever receives.
    assert.equal((await restBroadcast(node, [{ topic: name, event: 'good', payload: { ok: 1 } }])).status, 202);
    await waitFor(() => c.got.length === 1, 5000, 'the good message');
    assert.deepEqual(c.got, [{ event: 'good', payload: { ok: 1 } }]);
  });

  for (const vsn of VSNS) {
    test(`realtime-js ${vsn} httpSend (202) and send() without a socket (REST fallback) reach subscribers`, async () => {
      const name = uid('httpsend');
      const listeners = KINDS.map((k) => makeClient(node, k));
      for (const l of listeners) await l.join(name);

      const sender = realtime(node, vsn);
      const ch = sender.channel(name);
      assert.equal(typeof ch.httpSend, 'function', 'realtime-js 2.119.1 has httpSend');
      assert.deepEqual(await ch.httpSend('via-http', { n: 1 }), { success: true });

      // Not subscribed: send() falls back to the batch REST endpoint.
      const warnings = [];
      const fallback = realtime(node, vsn, { logger: (kind, msg) => warnings.push(`${kind}: ${msg}`) });
      const fch = fallback.channel(name);
      assert.equal(await fch.send({ type: 'broadcast', event: 'via-fallback', payload: { n: 2 } }), 'ok');

      for (const l of listeners) {
        await waitFor(() => l.got.length === 2, 5000, `${l.kind} receives both REST messages`);
        assert.deepEqual(l.got, [
          { event: 'via-http', payload: { n: 1 } },
          { event: 'via-fallback', payload: { n: 2 } },
        ]);
      }
    });
  }
});

describe('reconnect after the server drops the client', () => {
  for (const kind of KINDS) {
    test(`${kind}: session crash (fault injection) → reconnect, rejoin, broadcasts arrive again`, async () => {
      const topic = uid('crash');
      const victim = makeClient(node, kind, FAST);
      const pub = makeClient(node, 'realtime@2.0.0', FAST);
      await victim.join(topic);
      await pub.join(topic, { broadcast: { ack: true } });
      assert.equal(await pub.send('m', { n: 1 }), 'ok');
      await waitFor(() => victim.got.length === 1, 5000, 'first message');
      assert.equal(victim.opens, 1);

      victim.crash();
      await waitFor(() => victim.closes.length >= 1, 5000, 'the server closes the crashed session\'s socket');
      await waitFor(() => victim.opens >= 2 && victim.joined(), 10000, 'reconnected and rejoined');

      assert.equal(await pub.send('m', { n: 2 }), 'ok');
      await waitFor(() => victim.got.length === 2, 5000, 'message after reconnect');
      assert.deepEqual(victim.got.map((m) => m.payload.n), [1, 2]);
      await assertHealthy(node);
    });
  }

  for (const kind of REALTIME_KINDS) {
    test(`${kind}: heartbeat timeout → the server closes, the client reconnects and receives again`, async () => {
      const topic = uid('hb');
      // Heartbeats every 25 s (realtime-js' default) against a 2 s timeout.
      const sleepy = makeClient(node, kind, { heartbeatIntervalMs: 25000 });
      const pub = makeClient(node, 'realtime@1.0.0', FAST);
      await sleepy.join(topic);
      await pub.join(topic, { broadcast: { ack: true } });
      const t0 = Date.now();
      await waitFor(() => sleepy.closes.length >= 1, HEARTBEAT_TIMEOUT_MS + 3000, 'the server drops the silent socket');
      const took = Date.now() - t0;
      assert.ok(took >= HEARTBEAT_TIMEOUT_MS - 700, `dropped after ${took} ms`);
      assert.equal(sleepy.closes[0].code, 1000);
      assert.match(sleepy.closes[0].reason, /heartbeat timeout/);

      await waitFor(() => sleepy.opens >= 2 && sleepy.joined(), 10000, 'reconnected and rejoined');
      assert.equal(await pub.send('m', { n: 1 }), 'ok');
      await waitFor(() => sleepy.got.length >= 1, 3000, 'message after reconnect');
      assert.deepEqual(sleepy.got[0], { event: 'm', payload: { n: 1 } });
    });
  }

  test('two clients of different serializers crash together; both rejoin and exchange broadcasts', async () => {
    const topic = uid('double');
    const a = makeClient(node, 'realtime@1.0.0', FAST);
    const b = makeClient(node, 'phoenix@2.0.0', FAST);
    await a.join(topic, { broadcast: { self: true, ack: true } });
    await b.join(topic, { broadcast: { self: true, ack: true } });
    a.crash();
    b.crash();
    await waitFor(() => a.opens >= 2 && b.opens >= 2 && a.joined() && b.joined(), 10000, 'both back');
    assert.equal(await a.send('x', { from: 'a' }), 'ok');
    assert.equal(await b.send('x', { from: 'b' }), 'ok');
    for (const c of [a, b]) {
      await waitFor(() => c.got.length === 2, 5000, `${c.kind} gets both`);
      assert.deepEqual(c.got.map((m) => m.payload.from), ['a', 'b']);
    }
  });
});

test('the node is still healthy', async () => {
  await assertHealthy(node);
  const res = await fetch(`${node.http}/metrics`);
  assert.equal(res.status, 200);
  const text = await res.text();
  assert.match(text, /chorus_restarts_total \d+/);
});
