// REST posts to a room's chat lane are stored before their 202, whether or
// not a channel runs for the room (issue 11, item 6): a web app posting
// while nobody is subscribed loses nothing; a later joiner replays it.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { closeAll, realtime, restBroadcast, startNode, subscribe, uid, waitFor } from './lib/node.mjs';

let node;
before(async () => {
  node = await startNode();
});
after(async () => {
  await closeAll();
  await node?.stop();
});

async function history(topic) {
  const res = await fetch(`${node.http}/realtime/v1/api/channels/${encodeURIComponent(topic)}/messages`, {
    headers: { apikey: 'anon' },
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(res.status, 200);
  return (await res.json()).messages;
}

test('a REST batch to a chat lane nobody listens to is stored before the 202', async () => {
  const topic = `room:${uid('r')}:chat`;
  const r = await restBroadcast(node, [
    { topic, event: 'message', payload: { text: 'first' } },
    { topic, event: 'message', payload: { text: 'second' } },
  ]);
  assert.equal(r.status, 202, r.text);
  // Read right after the 202: already there, newest first.
  const stored = await history(topic);
  assert.deepEqual(stored.map((m) => m.payload.text), ['second', 'first']);
});

test('realtime-js httpSend to an idle chat lane is stored, and a later joiner replays it', async () => {
  const room = uid('r');
  const topic = `room:${room}:chat`;
  const sender = realtime(node, '2.0.0');
  assert.deepEqual(await sender.channel(topic).httpSend('message', { text: 'while nobody listens' }), { success: true });
  assert.deepEqual((await history(topic)).map((m) => m.payload.text), ['while nobody listens']);
  const reader = realtime(node, '2.0.0');
  // realtime-js only replays on a private channel (an open node lets it join).
  const ch = reader.channel(topic, { config: { private: true, broadcast: { replay: { since: Date.now() - 60_000, limit: 10 } } } });
  const got = [];
  ch.on('broadcast', { event: 'message' }, (m) => got.push(m));
  await subscribe(ch);
  await waitFor(() => got.length === 1, 5000, 'the replayed message');
  assert.equal(got[0].payload.text, 'while nobody listens');
  assert.equal(got[0].meta?.replayed, true);
});
