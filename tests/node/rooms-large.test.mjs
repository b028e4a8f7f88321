// WhatsSound rooms, a large room at the node's default presence settings
// (docs/ROOMS.md, "Large rooms"): a few hundred members who track presence
// join one chat lane at once; crossing `presence.large_room_threshold` (200)
// switches every viewer to its relevant set (`presence.relevant_set_size`,
// 50) and `presence_count`. The channel builds one `presence_state` per
// viewer at that moment; built all at once they outgrew the channel's
// process memory and the channel crash-looped, leaving every later join
// unanswered. Here every join and track is answered, a late joiner gets its
// set and the count, chat still flows, and no process was restarted.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { RawClient, assertHealthy, closeAll, metric, startNode, uid, waitFor } from './lib/node.mjs';

const MEMBERS = 320;
const THRESHOLD = 200; // presence.large_room_threshold, default
const SET_SIZE = 50; // presence.relevant_set_size, default

let node;
before(async () => {
  node = await startNode();
});
after(async () => {
  await closeAll();
  await node?.stop();
});

/** A raw 2.0.0 client joined to `topic` with presence key `member-<i>`. */
async function joined(topic, i) {
  const c = await RawClient.open(node, '2.0.0');
  const r = await c.join(topic, { presence: { key: `member-${i}`, enabled: true } });
  assert.equal(r.status, 'ok', `join of member-${i}: ${JSON.stringify(r)}`);
  return c;
}

/** Tracks a meta like the app's for member `i`. */
async function track(c, topic, i) {
  const meta = { name: `member-${i}`, avatar: `https://cdn.example/a/${i}.png`, t: Date.now() * 1000 + i };
  const ref = c.push(topic, 'presence', { type: 'presence', event: 'track', payload: meta }, { join_ref: c.joinRefs[topic] });
  const r = await c.reply(ref, 10000);
  assert.equal(r.status, 'ok', `track of member-${i}: ${JSON.stringify(r)}`);
}

describe('a large room at the default threshold', () => {
  test(`${MEMBERS} members crossing the threshold together: every join answered, relevant sets, count, chat`, async () => {
    const restartsBefore = await metric(node, 'chorus_restarts_total');
    const topic = `realtime:room:${uid('big')}:chat`;
    // Everyone joins first (as an app's room fills), then everyone tracks:
    // at the crossing every member is a viewer.
    const members = await Promise.all(Array.from({ length: MEMBERS }, (_, i) => joined(topic, i)));
    await Promise.all(members.map((c, i) => track(c, topic, i)));
    assert.equal(members.length, MEMBERS);
    assert.ok(MEMBERS > THRESHOLD);

    // A late joiner gets its relevant set (at most SET_SIZE keys) and the count.
    const late = await RawClient.open(node, '2.0.0');
    const r = await late.join(topic, { presence: { key: 'late', enabled: true } });
    assert.equal(r.status, 'ok', JSON.stringify(r));
    const state = await late.waitMessage((m) => m.topic === topic && m.event === 'presence_state', 5000, 'presence_state');
    const keys = Object.keys(state.payload);
    assert.ok(keys.length > 0 && keys.length <= SET_SIZE, `relevant set of ${keys.length} keys`);
    await late.waitMessage((m) => m.topic === topic && m.event === 'presence_count' && m.payload.count === MEMBERS, 5000, `presence_count ${MEMBERS}`);

    // Chat on the lane still reaches everyone.
    const text = uid('hello');
    members[0].ws.send(
      JSON.stringify([members[0].joinRefs[topic], '99', topic, 'broadcast', { type: 'broadcast', event: 'msg', payload: { text } }]),
    );
    await waitFor(() => late.broadcasts(topic, 'msg').some((m) => m.payload.payload.text === text), 5000, 'chat at the late joiner');
    await waitFor(
      () => members.slice(1).every((c) => c.broadcasts(topic, 'msg').some((m) => m.payload.payload.text === text)),
      10000,
      'chat at every member',
    );

    // Nothing crashed on the way.
    assert.equal(await metric(node, 'chorus_restarts_total'), restartsBefore, 'no supervised process was restarted');
    for (const c of members) assert.equal(c.closed, null);
    await assertHealthy(node);
  });
});
