// Presence with the real clients, every serializer: state on join, diffs
// for track / update / untrack, and a member that vanishes without a close
// frame leaving everyone's state within the heartbeat timeout. Raw clients
// cover a silent socket (no FIN, no heartbeats) and a crashed session.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { KINDS, makeClient } from './lib/clients.mjs';
import { RawClient, assertHealthy, closeAll, startNode, uid, waitFor } from './lib/node.mjs';

const HEARTBEAT_TIMEOUT_MS = 2000;
// The server drops a dead member within the heartbeat timeout; allow
// scheduling slack on a loaded machine on top of it.
const LEAVE_BOUND_MS = HEARTBEAT_TIMEOUT_MS + 1500;
const CLIENT_OPTS = { heartbeatIntervalMs: 400 };

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

const sameState = (state, expected) => {
  try {
    assert.deepEqual(state, expected);
    return true;
  } catch {
    return false;
  }
};

async function expectState(clients, expected, ms = 5000, what = 'presence state') {
  for (const c of clients) {
    await waitFor(() => sameState(c.presenceState(), expected), ms, `${c.kind} ${what}: ${JSON.stringify(expected)}`).catch((e) => {
      throw new Error(`${e.message}; has ${JSON.stringify(c.presenceState())}`);
    });
  }
}

for (const kind of KINDS) {
  describe(kind, () => {
    test('presence syncs across three clients; an abrupt disconnect leaves within the heartbeat timeout', async () => {
      const topic = uid('presence');
      const alice = makeClient(node, kind, CLIENT_OPTS);
      const bob = makeClient(node, kind, CLIENT_OPTS);
      // carol will vanish: she must not reconnect during the test.
      const carol = makeClient(node, kind, { ...CLIENT_OPTS, reconnectAfterMs: () => 60000 });

      await alice.join(topic, { presence: { key: 'alice' } });
      await bob.join(topic, { presence: { key: 'bob' } });
      assert.equal(await alice.track({ name: 'Alice', status: 'online' }), 'ok');
      assert.equal(await bob.track({ name: 'Bob', status: 'online' }), 'ok');
      await expectState([alice, bob], {
        alice: [{ name: 'Alice', status: 'online' }],
        bob: [{ name: 'Bob', status: 'online' }],
      });

      // A late joiner gets the current state with its join (presence_state).
      await carol.join(topic, { presence: { key: 'carol' } });
      await expectState([carol], {
        alice: [{ name: 'Alice', status: 'online' }],
        bob: [{ name: 'Bob', status: 'online' }],
      }, 5000, 'state on join');
      assert.equal(await carol.track({ name: 'Carol', status: 'online' }), 'ok');
      const three = {
        alice: [{ name: 'Alice', status: 'online' }],
        bob: [{ name: 'Bob', status: 'online' }],
        carol: [{ name: 'Carol', status: 'online' }],
      };
      await expectState([alice, bob, carol], three);

      // Update of a meta: still one meta under the key, with the new value.
      assert.equal(await alice.track({ name: 'Alice', status: 'away' }), 'ok');
      const updated = { ...three, alice: [{ name: 'Alice', status: 'away' }] };
      await expectState([alice, bob, carol], updated, 5000, 'after update');

      // carol's TCP connection dies without a close frame.
      const ws = carol.transport();
      assert.ok(ws && ws._socket, 'carol has a live socket');
      const t0 = Date.now();
      ws._socket.destroy();
      const { carol: _gone, ...rest } = updated;
      await expectState([alice, bob], rest, LEAVE_BOUND_MS, 'after carol vanished');
      const took = Date.now() - t0;
      assert.ok(took <= LEAVE_BOUND_MS, `carol left after ${took} ms`);

      // Untrack: bob leaves the state, stays subscribed.
      assert.equal(await bob.untrack(), 'ok');
      await expectState([alice, bob], { alice: [{ name: 'Alice', status: 'away' }] }, 5000, 'after untrack');

      // Leaving the channel takes alice's presence with it.
      assert.equal(await alice.leave(), 'ok');
      await expectState([bob], {}, 5000, 'after alice left');
    });
  });
}

test('a silent socket (no close, no FIN, no heartbeats) is dropped and its presence leaves', async () => {
  const topic = uid('silent');
  const watcher = makeClient(node, 'realtime@2.0.0', CLIENT_OPTS);
  await watcher.join(topic, { presence: { key: 'watcher' } });

  const ghost = await RawClient.open(node, '1.0.0');
  const reply = await ghost.join(`realtime:${topic}`, { presence: { key: 'ghost', enabled: true } });
  assert.equal(reply.status, 'ok');
  const ref = ghost.push(`realtime:${topic}`, 'presence', { type: 'presence', event: 'track', payload: { g: 1 } }, { join_ref: ghost.joinRefs[`realtime:${topic}`] });
  assert.equal((await ghost.reply(ref)).status, 'ok');
  await expectState([watcher], { ghost: [{ g: 1 }] });

  // From now on the ghost sends nothing; its TCP connection stays open.
  const t0 = Date.now();
  await expectState([watcher], {}, LEAVE_BOUND_MS, 'ghost gone');
  const took = Date.now() - t0;
  assert.ok(took >= HEARTBEAT_TIMEOUT_MS - 700, `the ghost was dropped after ${took} ms, before its heartbeat timeout`);
  const closed = await ghost.closedWithin(2000);
  assert.equal(closed.code, 1000);
  assert.match(closed.reason, /heartbeat/);
});

test('a crashed session (fault injection) closes its socket and its presence leaves', async () => {
  const topic = uid('crash');
  const watcher = makeClient(node, 'realtime@1.0.0', CLIENT_OPTS);
  await watcher.join(topic, { presence: { key: 'watcher' } });

  const victim = await RawClient.open(node, '2.0.0');
  const t = `realtime:${topic}`;
  assert.equal((await victim.join(t, { presence: { key: 'victim', enabled: true } })).status, 'ok');
  const ref = victim.push(t, 'presence', { type: 'presence', event: 'track', payload: { v: 1 } }, { join_ref: victim.joinRefs[t] });
  assert.equal((await victim.reply(ref)).status, 'ok');
  await expectState([watcher], { victim: [{ v: 1 }] });

  victim.push('phoenix', 'chorus_crash', {});
  await victim.closedWithin(5000);
  await expectState([watcher], {}, LEAVE_BOUND_MS, 'victim gone after its crash');
  await assertHealthy(node);
});

test('a crashed session leaves presence within the heartbeat timeout even while the channel is busy', async () => {
  const topic = uid('busy');
  const watcher = makeClient(node, 'realtime@2.0.0', CLIENT_OPTS);
  await watcher.join(topic, { presence: { key: 'watcher' } });
  const pub = makeClient(node, 'realtime@1.0.0', CLIENT_OPTS);
  await pub.join(topic);

  const victim = await RawClient.open(node, '1.0.0');
  const t = `realtime:${topic}`;
  assert.equal((await victim.join(t, { presence: { key: 'victim', enabled: true } })).status, 'ok');
  const ref = victim.push(t, 'presence', { type: 'presence', event: 'track', payload: { v: 2 } }, { join_ref: victim.joinRefs[t] });
  assert.equal((await victim.reply(ref)).status, 'ok');
  await expectState([watcher], { victim: [{ v: 2 }] });

  // Keep the channel busy: a broadcast every 50 ms.
  let n = 0;
  const timer = setInterval(() => pub.send('tick', { n: n++ }), 50);
  try {
    victim.push('phoenix', 'chorus_crash', {});
    await victim.closedWithin(5000);
    const t0 = Date.now();
    await expectState([watcher], {}, LEAVE_BOUND_MS, 'crashed victim gone from a busy channel');
    assert.ok(Date.now() - t0 <= LEAVE_BOUND_MS);
  } finally {
    clearInterval(timer);
  }
  await waitFor(() => watcher.got.length >= n - 1, 5000, 'watcher got the ticks');
});
