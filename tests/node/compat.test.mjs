// What Chorus refuses compared with Supabase Realtime, seen through the real
// realtime-js client: a `postgres_changes` subscription is refused by name,
// and the socket goes on serving the client's other channels.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { closeAll, realtime, startNode, subscribe, uid, within } from './lib/node.mjs';

let node;
before(async () => {
  node = await startNode();
});
after(async () => {
  await closeAll();
  await node?.stop();
});

test('realtime-js: postgres_changes is refused with a reason naming it', async () => {
  const client = realtime(node, '2.0.0');
  const changes = client
    .channel(uid('db'))
    .on('postgres_changes', { event: '*', schema: 'public', table: 'messages' }, () => {});
  const [status, err] = await within(
    new Promise((resolve) => changes.subscribe((s, e) => s !== 'SUBSCRIBED' && resolve([s, e]))),
    5000,
    'the refusal',
  );
  assert.equal(status, 'CHANNEL_ERROR');
  assert.match(String(err?.message ?? err), /postgres_changes is not supported/);

  // The same socket still joins and uses broadcast channels.
  const chat = client.channel(uid('chat'), { config: { broadcast: { self: true, ack: true } } });
  const got = [];
  chat.on('broadcast', { event: 'm' }, ({ payload }) => got.push(payload));
  await subscribe(chat);
  assert.equal(await chat.send({ type: 'broadcast', event: 'm', payload: { ok: 1 } }), 'ok');
  await within((async () => { while (!got.length) await new Promise((r) => setTimeout(r, 10)); })(), 5000, 'echo');
  assert.deepEqual(got, [{ ok: 1 }]);
});
