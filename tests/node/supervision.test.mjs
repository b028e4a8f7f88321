// Supervision correctness (issue 11, item 4): after a channel crashes and
// its supervisor restarts it, the directory knows the restarted channel, so
// the next join finds it instead of starting a second channel for the same
// topic (an orphan that never stopped). Channels are crashed through the
// test-only fault switch (CHORUS_NODE_FAULT_INJECTION).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { closeAll, realtime, startNode, subscribe, uid, waitFor } from './lib/node.mjs';

let node;
before(async () => {
  node = await startNode({ CHORUS_NODE_FAULT_INJECTION: 'true' });
});
after(async () => {
  await closeAll();
  await node?.stop();
});

async function metric(name) {
  const res = await fetch(`${node.http}/metrics`, { signal: AbortSignal.timeout(5000) });
  const line = (await res.text()).split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? null : Number(line.split(' ')[1]);
}

test('a crashed channel is restarted and found again: one channel per topic, no orphan', async () => {
  const topic = uid('orphan');
  const a = realtime(node, '2.0.0');
  const chA = a.channel(topic);
  await subscribe(chA);
  await waitFor(async () => (await metric('chorus_channels')) === 1, 5000, 'one channel');
  const restarts = await metric('chorus_restarts_total');
  chA.channelAdapter.push('chorus_crash_channel', {});
  await waitFor(async () => (await metric('chorus_restarts_total')) > restarts, 5000, 'the channel restarted');

  // A new client joins and talks on the same topic.
  const b = realtime(node, '2.0.0');
  const chB = b.channel(topic, { config: { broadcast: { ack: true, self: true } } });
  const got = [];
  chB.on('broadcast', { event: '*' }, (m) => got.push(m.payload));
  await subscribe(chB);
  assert.equal(await chB.send({ type: 'broadcast', event: 'm', payload: { n: 1 } }), 'ok');
  await waitFor(() => got.length === 1, 5000, 'own broadcast');
  // Still one channel process for the topic: the restarted one.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await metric('chorus_channels'), 1);
});
