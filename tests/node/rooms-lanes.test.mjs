// Per-socket flood control (docs/ROOMS.md, "Rooms and lanes"): every client
// push except heartbeats and leaves takes a token from a bucket of
// `limits.client_burst` refilled at `limits.client_messages_per_second`;
// without one the push is refused with `rate_limited` and reaches nobody.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { makeClient, RawClient } from './lib/clients.mjs';
import { closeAll, metric, startNode, uid, waitFor } from './lib/node.mjs';

const PER_SECOND = 5;
const BURST = 10;
const REASON = `rate_limited: at most ${PER_SECOND} messages per second per socket (limits.client_messages_per_second)`;

let node;
before(async () => {
  node = await startNode({
    CHORUS_LIMITS_CLIENT_MESSAGES_PER_SECOND: String(PER_SECOND),
    CHORUS_LIMITS_CLIENT_BURST: String(BURST),
  });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

test('realtime-js: a flooding socket gets error replies, the others keep receiving, and it recovers after the refill', async () => {
  const topic = uid('room');
  const flooder = makeClient(node, 'realtime@2.0.0');
  const listener = makeClient(node, 'realtime@1.0.0');
  const other = makeClient(node, 'realtime@2.0.0');
  await flooder.join(topic, { broadcast: { ack: true, self: false } });
  await listener.join(topic, { broadcast: { self: false } });
  await other.join(topic, { broadcast: { ack: true, self: false } });
  const limitedBefore = await metric(node, 'chorus_rate_limited_total');

  // Far more than the burst at once: the bucket empties and the rest is
  // refused, while another socket in the same channel is not affected.
  const flood = Array.from({ length: 4 * BURST }, (_, i) => flooder.send('flood', { i }));
  const others = Array.from({ length: 3 }, (_, i) => other.send('other', { i }));
  const results = await Promise.all(flood);
  assert.deepEqual(await Promise.all(others), ['ok', 'ok', 'ok']);

  const accepted = results.flatMap((r, i) => (r === 'ok' ? [i] : []));
  const refused = results.filter((r) => r === 'error').length;
  assert.equal(accepted.length + refused, results.length, `only ok/error: ${results}`);
  assert.ok(accepted.length >= 1 && accepted.length <= BURST + 2, `accepted ${accepted.length}`);
  assert.ok(refused >= results.length - BURST - 2, `refused ${refused}`);
  assert.equal((await metric(node, 'chorus_rate_limited_total')) - limitedBefore, refused);

  // The listener gets exactly the accepted messages, in order, and the
  // other socket's messages.
  const flooded = () => listener.got.filter((m) => m.event === 'flood').map((m) => m.payload.i);
  await waitFor(() => flooded().length === accepted.length, 5000, 'the accepted messages');
  await waitFor(() => listener.got.filter((m) => m.event === 'other').length === 3, 5000, 'the other messages');
  assert.deepEqual(flooded(), accepted);

  // Once the bucket refills, the flooder's messages go through again.
  let status;
  await waitFor(async () => (status = await flooder.send('later', { n: 1 })) === 'ok', 5000, 'a send after the refill');
  assert.equal(status, 'ok');
  await waitFor(() => listener.got.some((m) => m.event === 'later'), 5000, 'the later message');
});

for (const vsn of ['1.0.0', '2.0.0']) {
  test(`raw ${vsn}: refused pushes name the limit, heartbeats and leaves stay exempt, nothing reaches the channel`, async () => {
    const topic = `realtime:${uid('room')}`;
    const flooder = await RawClient.open(node, vsn);
    const listener = await RawClient.open(node, vsn);
    assert.equal((await flooder.join(topic)).status, 'ok');
    assert.equal((await listener.join(topic)).status, 'ok');

    const refs = Array.from({ length: 3 * BURST }, (_, i) =>
      flooder.push(topic, 'broadcast', { type: 'broadcast', event: 'flood', payload: { i } }, { join_ref: flooder.joinRefs[topic] }),
    );
    // Plain broadcasts get no reply when accepted; the refused ones get an
    // error reply each. The heartbeat after the flood is answered ok.
    const hb = flooder.push('phoenix', 'heartbeat', {});
    assert.deepEqual(await flooder.reply(hb), { status: 'ok', response: {} });
    const replies = refs.map((ref) => flooder.messages.find((m) => m.event === 'phx_reply' && m.ref === ref));
    const refused = replies.filter(Boolean);
    assert.ok(refused.length >= 3 * BURST - BURST - 2, `refused ${refused.length}`);
    for (const r of refused) {
      assert.deepEqual(r.payload, { status: 'error', response: { reason: REASON } });
    }
    const accepted = replies.flatMap((r, i) => (r ? [] : [i]));
    await waitFor(() => listener.broadcasts(topic, 'flood').length === accepted.length, 5000, 'the accepted broadcasts');
    assert.deepEqual(
      listener.broadcasts(topic, 'flood').map((m) => m.payload.payload.i),
      accepted,
    );

    // A leave is exempt even with an empty bucket.
    const leave = flooder.push(topic, 'phx_leave', {}, { join_ref: flooder.joinRefs[topic] });
    assert.deepEqual(await flooder.reply(leave), { status: 'ok', response: {} });
  });
}
